// DGD kernels (DESIGN §3.1, the phases of the CPU twin csrc/cpu/dgd.cpp), templated on the
// input dtype T only: head dims, flags (has_g / has_erase / read_before / initial state) are
// runtime values. Included by one .cu per dtype (dgd_bf16.cu, ...), which instantiates
// run_forward<T> / run_backward<T>.
//
// Notation per (chunk, value head hv), C = 64 tokens starting at token row row0, len valid:
//   Q, K: [C, Kd] (q/k head qh = hv / group), V, dO: [C, Vd]; workspace slots of chunk c.
// Every CTA is 128 threads; see device.cuh for the panel GEMM and its fragment layout.
#ifndef NLCORE_CUDA_DGD_KERNELS_CUH_
#define NLCORE_CUDA_DGD_KERNELS_CUH_

#include <cuda_runtime.h>
#include <stdint.h>

#include "dgd/device.cuh"
#include "dgd/launchers.h"
#include "dgd/tiling.h"

namespace nlcore::dgd {

// ---- views of one chunk ---------------------------------------------------------------------
template <class T> struct ChunkPtrs {
  const T* q;   // Q[t][kk] = q[t * qks + kk]
  const T* k;
  const T* v;   // V[t][vv] = v[t * vs + vv]
  int64_t qks, vs;
};
template <class T>
__device__ __forceinline__ ChunkPtrs<T> chunk_ptrs(const Params& p, const ChunkInfo& ci, int hv) {
  ChunkPtrs<T> c;
  const int qh = hv / p.group;
  c.qks = int64_t(p.H) * p.K;
  c.vs = int64_t(p.HV) * p.V;
  c.q = static_cast<const T*>(p.q) + (ci.row0 * p.H + qh) * p.K;
  c.k = static_cast<const T*>(p.k) + (ci.row0 * p.H + qh) * p.K;
  c.v = static_cast<const T*>(p.v) + (ci.row0 * p.HV + hv) * p.V;
  return c;
}
__device__ __forceinline__ int64_t slot(const Params& p, int64_t c, int hv) {
  return c * p.HV + hv;
}

// Column-wise triangular solves in fp32: thread `tid` owns column `tid` of the [C][kThreads]
// shared tile X (row stride kThreads: a warp's accesses hit 32 distinct banks; L reads are
// broadcasts). No barrier needed: each thread reads and writes only its own column.
// X := (I + L)⁻¹ X for a unit-lower-triangular I + L (Ls: L strictly lower, row-major, kLd).
__device__ __forceinline__ void forward_subst(float* X, const float* Ls) {
  const int c = threadIdx.x;
  for (int t = 1; t < kChunk; ++t) {
    float s = X[t * kThreads + c];
#pragma unroll 8
    for (int i = 0; i < t; ++i) s = fmaf(-Ls[t * kLd + i], X[i * kThreads + c], s);
    X[t * kThreads + c] = s;
  }
}
// X := (I + L)⁻ᵀ X, given LTs = Lᵀ (row-major, kLd): x_t −= Σ_{i>t} LTs[t][i] x_i, t descending.
__device__ __forceinline__ void backward_subst(float* X, const float* LTs) {
  const int c = threadIdx.x;
  for (int t = kChunk - 2; t >= 0; --t) {
    float s = X[t * kThreads + c];
#pragma unroll 8
    for (int i = t + 1; i < kChunk; ++i) s = fmaf(-LTs[t * kLd + i], X[i * kThreads + c], s);
    X[t * kThreads + c] = s;
  }
}

// KKᵀ of the chunk into the accumulators of panel (0, 0).
template <class T>
__device__ __forceinline__ void chunk_kkt(Acc& acc, const ChunkPtrs<T>& cp, const T* left,
                                          const Params& p, int len) {
  acc_zero(acc);
  panel_gemm<T>(acc, make_op(left, cp.qks, 1, len, p.K), make_op(cp.k, 1, cp.qks, p.K, len), 0,
                0, kChunk, p.K);
}

// Ps = M ⊙ Q Kᵀ (both the output and the bwd_pre kernels). Ends with a barrier.
template <class T>
__device__ __forceinline__ void build_P(float* Ps, const Gates& G, const ChunkPtrs<T>& cp,
                                        const Params& p, int len) {
  Acc acc;
  chunk_kkt<T>(acc, cp, cp.q, p, len);
  const int rb = p.read_before;
  acc_for_each(acc, 0, 0, kChunk,
               [&](int t, int i, float& x) { Ps[t * kLd + i] = mask_at(G, t, i, rb) * x; });
  __syncthreads();
}

// ============================================================================================
// prep: per (chunk, value head). L = diag(a)(Γ ⊙ K Kᵀ); Wv = (I+L)⁻¹ diag(β) V and
// Wk = (I+L)⁻¹ diag(c) K by column-wise forward substitution in fp32 (one column per thread).
template <class T>
__global__ void __launch_bounds__(kThreads, 1) prep_kernel(const Params p) {
  extern __shared__ float4 smem4[];
  float* gs = reinterpret_cast<float*>(smem4);
  float* Ls = gs + kGateFloats;            // [C][kLd]
  float* X = Ls + kChunk * kLd;            // [C][kThreads] solve tile
  const int64_t c = blockIdx.x;
  const int hv = blockIdx.y;
  const ChunkInfo ci = chunk_info(p.chunks, c);
  if (ci.seq < 0) return;
  const Gates G = gates_view(gs);
  load_gates(G, p, ci, hv);
  const ChunkPtrs<T> cp = chunk_ptrs<T>(p, ci, hv);

  Acc acc;
  chunk_kkt<T>(acc, cp, cp.k, p, ci.len);
  acc_for_each(acc, 0, 0, kChunk, [&](int t, int i, float& x) {
    Ls[t * kLd + i] = i < t ? G.a[t] * gamma_at(G, t, i) * x : 0.0f;
  });
  __syncthreads();

  float* wv = p.wv + slot(p, c, hv) * kChunk * p.V;
  float* wk = p.wk + slot(p, c, hv) * kChunk * p.K;
  const int tid = threadIdx.x;
  for (int col = tid; col < p.V + p.K; col += kThreads) {
    const bool isv = col < p.V;
    const int cc = isv ? col : col - p.V;
    for (int t = 0; t < kChunk; ++t) {
      float r = 0.0f;
      if (t < ci.len)
        r = isv ? G.beta[t] * to_f32(cp.v[t * cp.vs + cc]) : G.c[t] * to_f32(cp.k[t * cp.qks + cc]);
      X[t * kThreads + tid] = r;
    }
    forward_subst(X, Ls);
    float* out = isv ? wv + cc : wk + cc;
    const int ld = isv ? p.V : p.K;
    for (int t = 0; t < kChunk; ++t) out[int64_t(t) * ld] = X[t * kThreads + tid];
  }
}

// ============================================================================================
// state: per (sequence, value head, V-tile), chunks in order. W = Wv − Wk S0 (over Wv),
// S ← e_C S + Kᵀ diag(d) W. Chunk-start states to the workspace; the final state if asked.
template <class T>
__global__ void __launch_bounds__(kThreads, 1) state_kernel(const Params p, int write_final) {
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const int64_t n = blockIdx.x;
  const int hv = blockIdx.y;
  const int VT = p.vtile, vt0 = blockIdx.z * p.vtile;
  const int lds = VT + kStatePad;
  float* S = smem;                      // [K][lds]
  float* Ws = S + p.K * lds;            // [C][lds]
  float* gs = Ws + kChunk * lds;        // gates
  const Gates G = gates_view(gs);
  const int tid = threadIdx.x;

  const int64_t hbase = (n * p.HV + hv) * int64_t(p.K) * p.V + vt0;  // [K][V] tile origin
  for (int idx = tid; idx < p.K * VT; idx += kThreads) {
    const int kk = idx / VT, vv = idx % VT;
    S[kk * lds + vv] = p.has_init ? p.h0[hbase + int64_t(kk) * p.V + vv] : 0.0f;
  }
  __syncthreads();

  const int64_t first = p.seqs[n * kSeqEntry], count = p.seqs[n * kSeqEntry + 1];
  for (int64_t c = first; c < first + count; ++c) {
    const ChunkInfo ci = chunk_info(p.chunks, c);
    load_gates(G, p, ci, hv);  // barriers: also orders the previous chunk's S update
    const ChunkPtrs<T> cp = chunk_ptrs<T>(p, ci, hv);
    float* s0 = p.s0 + slot(p, c, hv) * p.K * p.V + vt0;
    for (int idx = tid; idx < p.K * VT; idx += kThreads) {
      const int kk = idx / VT, vv = idx % VT;
      s0[int64_t(kk) * p.V + vv] = S[kk * lds + vv];
    }
    // W = Wv − Wk S   [C x VT], reduction over K
    float* w = p.wv + slot(p, c, hv) * kChunk * p.V + vt0;
    const float* wk = p.wk + slot(p, c, hv) * kChunk * p.K;
    Acc acc;
    acc_zero(acc);
    panel_gemm<T>(acc, make_op(wk, p.K, 1, kChunk, p.K), make_op<float>(S, lds, 1, p.K, VT), 0, 0,
                  VT, p.K);
    acc_for_each(acc, 0, 0, VT, [&](int t, int vv, float& x) {
      const float wn = w[int64_t(t) * p.V + vv] - x;
      w[int64_t(t) * p.V + vv] = wn;
      Ws[t * lds + vv] = wn;
    });
    __syncthreads();
    // S ← e_C S + Kᵀ diag(d) W   [K x VT], reduction over the chunk
    const float eC = G.eC[0];
    for (int m0 = 0; m0 < p.K; m0 += kPanel) {
      acc_zero(acc);
      panel_gemm<T>(acc, make_op(cp.k, 1, cp.qks, p.K, ci.len),
                    make_op<float>(Ws, lds, 1, kChunk, VT, G.d), m0, 0, VT, kChunk);
      acc_for_each(acc, m0, 0, VT, [&](int kk, int vv, float& x) {
        if (kk < p.K) S[kk * lds + vv] = eC * S[kk * lds + vv] + x;
      });
    }
    __syncthreads();
  }
  if (write_final && p.hT != nullptr) {
    for (int idx = tid; idx < p.K * VT; idx += kThreads) {
      const int kk = idx / VT, vv = idx % VT;
      p.hT[hbase + int64_t(kk) * p.V + vv] = S[kk * lds + vv];
    }
  }
}

// ============================================================================================
// output: per (chunk, value head). O = scale (diag(Dq) Q S0 + (M ⊙ Q Kᵀ) W).
template <class T>
__global__ void __launch_bounds__(kThreads, 1) output_kernel(const Params p) {
  __shared__ float gs[kGateFloats];
  __shared__ float Ps[kChunk * kLd];
  const int64_t c = blockIdx.x;
  const int hv = blockIdx.y;
  const ChunkInfo ci = chunk_info(p.chunks, c);
  if (ci.seq < 0) return;
  const Gates G = gates_view(gs);
  load_gates(G, p, ci, hv);
  const ChunkPtrs<T> cp = chunk_ptrs<T>(p, ci, hv);
  build_P<T>(Ps, G, cp, p, ci.len);

  const float* s0 = p.s0 + slot(p, c, hv) * p.K * p.V;
  const float* w = p.wv + slot(p, c, hv) * kChunk * p.V;
  T* o = static_cast<T*>(p.o) + (ci.row0 * p.HV + hv) * p.V;
  for (int n0 = 0; n0 < p.V; n0 += kPanel) {
    const int nc = p.V - n0 < kPanel ? p.V - n0 : kPanel;
    Acc acc;
    acc_zero(acc);
    panel_gemm<T>(acc, make_op(cp.q, cp.qks, 1, ci.len, p.K), make_op(s0, p.V, 1, p.K, p.V), 0,
                  n0, nc, p.K);
    acc_scale_rows(acc, 0, G.Dq);
    panel_gemm<T>(acc, make_op<float>(Ps, kLd, 1, kChunk, kChunk),
                  make_op(w, p.V, 1, kChunk, p.V), 0, n0, nc, kChunk);
    acc_for_each(acc, 0, n0, nc, [&](int t, int vv, float& x) {
      if (t < ci.len) o[t * cp.vs + vv] = from_f32<T>(p.scale * x);
    });
  }
}

// ============================================================================================
// bwd_pre: per (chunk, value head). dW_o = scale Pᵀ dO -> dw; dS0_o = scale Qᵀ diag(Dq) dO -> ds.
template <class T>
__global__ void __launch_bounds__(kThreads, 1) bwd_pre_kernel(const Params p) {
  __shared__ float gs[kGateFloats];
  __shared__ float Ps[kChunk * kLd];
  const int64_t c = blockIdx.x;
  const int hv = blockIdx.y;
  const ChunkInfo ci = chunk_info(p.chunks, c);
  if (ci.seq < 0) return;
  const Gates G = gates_view(gs);
  load_gates(G, p, ci, hv);
  const ChunkPtrs<T> cp = chunk_ptrs<T>(p, ci, hv);
  build_P<T>(Ps, G, cp, p, ci.len);

  const T* dO = static_cast<const T*>(p.dO) + (ci.row0 * p.HV + hv) * p.V;
  float* dw = p.dw + slot(p, c, hv) * kChunk * p.V;
  float* ds = p.ds + slot(p, c, hv) * p.K * p.V;
  for (int n0 = 0; n0 < p.V; n0 += kPanel) {
    const int nc = p.V - n0 < kPanel ? p.V - n0 : kPanel;
    Acc acc;
    acc_zero(acc);
    panel_gemm<T>(acc, make_op<float>(Ps, 1, kLd, kChunk, kChunk),
                  make_op(dO, cp.vs, 1, ci.len, p.V), 0, n0, nc, kChunk);
    acc_for_each(acc, 0, n0, nc,
                 [&](int i, int vv, float& x) { dw[int64_t(i) * p.V + vv] = p.scale * x; });
    for (int m0 = 0; m0 < p.K; m0 += kPanel) {
      acc_zero(acc);
      panel_gemm<T>(acc, make_op(cp.q, 1, cp.qks, p.K, ci.len),
                    make_op(dO, cp.vs, 1, ci.len, p.V, G.Dq), m0, n0, nc, kChunk);
      acc_for_each(acc, m0, n0, nc, [&](int kk, int vv, float& x) {
        if (kk < p.K) ds[int64_t(kk) * p.V + vv] = p.scale * x;
      });
    }
  }
}

// Deterministic block sum (kThreads threads); every thread gets the total. scratch >= 4 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float t = 0.0f;
#pragma unroll
  for (int i = 0; i < kThreads / 32; ++i) t += scratch[i];
  __syncthreads();
  return t;
}

// ============================================================================================
// bwd_state: per (sequence, value head, V-tile), chunks in reverse.
//   dW = dW_o + diag(d) K dS (over dw; partial dd = d ⊙ rowsum(K dS ⊙ W) of the tile),
//   dS ← dS0_o + e_C dS − Wkᵀ dW, the incoming dS (dS at the chunk end) stored over dS0_o,
//   partial Σ S0 ⊙ dS_end of the tile. dinitial_state = dS at the sequence start.
template <class T>
__global__ void __launch_bounds__(kThreads, 1) bwd_state_kernel(const Params p) {
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const int64_t n = blockIdx.x;
  const int hv = blockIdx.y;
  const int tile = blockIdx.z;
  const int VT = p.vtile, vt0 = blockIdx.z * p.vtile;
  const int lds = VT + kStatePad;
  float* dS = smem;                     // [K][lds]
  float* DWs = dS + p.K * lds;          // [C][lds]
  float* gs = DWs + kChunk * lds;
  float* red = gs + kGateFloats;
  const Gates G = gates_view(gs);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  const int64_t hbase = (n * p.HV + hv) * int64_t(p.K) * p.V + vt0;
  for (int idx = tid; idx < p.K * VT; idx += kThreads) {
    const int kk = idx / VT, vv = idx % VT;
    dS[kk * lds + vv] = p.dhT != nullptr ? p.dhT[hbase + int64_t(kk) * p.V + vv] : 0.0f;
  }
  __syncthreads();

  const int64_t first = p.seqs[n * kSeqEntry], count = p.seqs[n * kSeqEntry + 1];
  for (int64_t c = first + count - 1; c >= first; --c) {
    const ChunkInfo ci = chunk_info(p.chunks, c);
    load_gates(G, p, ci, hv);
    const ChunkPtrs<T> cp = chunk_ptrs<T>(p, ci, hv);
    float* dw = p.dw + slot(p, c, hv) * kChunk * p.V + vt0;
    const float* w = p.wv + slot(p, c, hv) * kChunk * p.V + vt0;
    // K dS  [C x VT], reduction over K
    Acc acc;
    acc_zero(acc);
    panel_gemm<T>(acc, make_op(cp.k, cp.qks, 1, ci.len, p.K), make_op<float>(dS, lds, 1, p.K, VT),
                  0, 0, VT, p.K);
    {
      const int r0 = warp * 16 + (lane >> 2), c0 = 2 * (lane & 3);
      float rs0 = 0.0f, rs1 = 0.0f;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (j * 8 < VT) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int t = r0 + (e >> 1) * 8, vv = c0 + j * 8 + (e & 1);
            const int64_t at = int64_t(t) * p.V + vv;
            const float x = acc[j][e];
            const float dwn = dw[at] + G.d[t] * x;
            dw[at] = dwn;
            DWs[t * lds + vv] = dwn;
            (e < 2 ? rs0 : rs1) += x * w[at];
          }
        }
      }
      rs0 = quad_sum(rs0);
      rs1 = quad_sum(rs1);
      if ((lane & 3) == 0) {
        float* ddp = p.ddp + (slot(p, c, hv) * p.ntiles + tile) * kChunk;
        ddp[r0] = rs0 * G.d[r0];
        ddp[r0 + 8] = rs1 * G.d[r0 + 8];
      }
    }
    __syncthreads();
    // dS ← dS0_o + e_C dS − Wkᵀ dW   [K x VT], reduction over the chunk
    float* ds = p.ds + slot(p, c, hv) * p.K * p.V + vt0;
    const float* s0 = p.s0 + slot(p, c, hv) * p.K * p.V + vt0;
    const float* wk = p.wk + slot(p, c, hv) * kChunk * p.K;
    const float eC = G.eC[0];
    float part = 0.0f;
    for (int m0 = 0; m0 < p.K; m0 += kPanel) {
      acc_zero(acc);
      panel_gemm<T>(acc, make_op(wk, 1, p.K, p.K, kChunk),
                    make_op<float>(DWs, lds, 1, kChunk, VT), m0, 0, VT, kChunk);
      acc_for_each(acc, m0, 0, VT, [&](int kk, int vv, float& x) {
        if (kk < p.K) {
          const int64_t at = int64_t(kk) * p.V + vv;
          const float old = dS[kk * lds + vv];
          dS[kk * lds + vv] = ds[at] + eC * old - x;
          ds[at] = old;
          part += s0[at] * old;
        }
      });
    }
    part = block_sum(part, red);  // barriers: also orders the dS update before the next chunk
    if (tid == 0) p.decp[slot(p, c, hv) * p.ntiles + tile] = part;
  }
  __syncthreads();
  if (p.has_init && p.dh0 != nullptr) {
    for (int idx = tid; idx < p.K * VT; idx += kThreads) {
      const int kk = idx / VT, vv = idx % VT;
      p.dh0[hbase + int64_t(kk) * p.V + vv] = dS[kk * lds + vv];
    }
  }
}

// ============================================================================================
// bwd_chunk: per (chunk, value head), every gradient (the formulas above dgd_backward in
// csrc/cpu/dgd.cpp). Shared memory: gates, four 64 x 64 fp32 matrices, row vectors.
template <class T>
__global__ void __launch_bounds__(kThreads, 1) bwd_chunk_kernel(const Params p) {
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const int64_t c = blockIdx.x;
  const int hv = blockIdx.y;
  const ChunkInfo ci = chunk_info(p.chunks, c);
  if (ci.seq < 0) return;
  float* gs = smem;
  float* KKs = gs + kGateFloats;        // K Kᵀ, later S2 = dKK + dKKᵀ
  float* Ls = KKs + kChunk * kLd;       // Lᵀ, later dL
  float* QKs = Ls + kChunk * kLd;       // Q Kᵀ, later dQK = dP ⊙ M
  float* dPs = QKs + kChunk * kLd;      // dP = scale dO Wᵀ
  float* rv = dPs + kChunk * kLd;       // row vectors
  float* rowGG = rv + 0 * kChunk;
  float* colGG = rv + 1 * kChunk;
  float* rowMM = rv + 2 * kChunk;
  float* colMM = rv + 3 * kChunk;
  float* rowDL = rv + 4 * kChunk;       // rowsum(dL ⊙ Γ ⊙ KK), later da
  float* dcv = rv + 5 * kChunk;
  float* dDq = rv + 6 * kChunk;
  float* dbt = rv + 7 * kChunk;
  float* dGc = rv + 8 * kChunk;         // later dg
  float* dGp = rv + 9 * kChunk;
  const Gates G = gates_view(gs);
  load_gates(G, p, ci, hv);
  const ChunkPtrs<T> cp = chunk_ptrs<T>(p, ci, hv);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int rb = p.read_before;
  const int len = ci.len;

  const T* dO = static_cast<const T*>(p.dO) + (ci.row0 * p.HV + hv) * p.V;
  float* dw = p.dw + slot(p, c, hv) * kChunk * p.V;  // dW (full), becomes dU
  const float* w = p.wv + slot(p, c, hv) * kChunk * p.V;
  const float* s0 = p.s0 + slot(p, c, hv) * p.K * p.V;
  const float* dse = p.ds + slot(p, c, hv) * p.K * p.V;

  // 1. K Kᵀ, Lᵀ
  {
    Acc acc;
    chunk_kkt<T>(acc, cp, cp.k, p, len);
    acc_for_each(acc, 0, 0, kChunk, [&](int t, int i, float& x) {
      KKs[t * kLd + i] = x;
      Ls[i * kLd + t] = i < t ? G.a[t] * gamma_at(G, t, i) * x : 0.0f;  // Lᵀ for the solve
    });
  }
  __syncthreads();
  // 2. dU = (I + L)⁻ᵀ dW, column by column, in place (solve tile over QKs + dPs, still free)
  {
    float* X = QKs;
    for (int col = tid; col < p.V; col += kThreads) {
      for (int t = 0; t < kChunk; ++t) X[t * kThreads + tid] = dw[int64_t(t) * p.V + col];
      backward_subst(X, Ls);
      for (int t = 0; t < kChunk; ++t) dw[int64_t(t) * p.V + col] = X[t * kThreads + tid];
    }
  }
  __syncthreads();
  {
    Acc acc;
    chunk_kkt<T>(acc, cp, cp.q, p, len);
    acc_for_each(acc, 0, 0, kChunk, [&](int t, int i, float& x) { QKs[t * kLd + i] = x; });
  }
  // 3. dL = −strict_lower(dU Wᵀ), dP = scale dO Wᵀ
  {
    Acc acc;
    acc_zero(acc);
    panel_gemm<T>(acc, make_op<float>(dw, p.V, 1, kChunk, p.V), make_op(w, 1, p.V, p.V, kChunk),
                  0, 0, kChunk, p.V);
    acc_for_each(acc, 0, 0, kChunk,
                 [&](int t, int i, float& x) { Ls[t * kLd + i] = i < t ? -x : 0.0f; });
    acc_zero(acc);
    panel_gemm<T>(acc, make_op(dO, cp.vs, 1, len, p.V), make_op(w, 1, p.V, p.V, kChunk), 0, 0,
                  kChunk, p.V);
    acc_for_each(acc, 0, 0, kChunk,
                 [&](int t, int i, float& x) { dPs[t * kLd + i] = p.scale * x; });
  }
  __syncthreads();
  // 4. row sums (threads 0..63: row t) and column sums (threads 64..127: column i) of
  //    GG = (dL ⊙ diag(a) KK [+ dP ⊙ QK if read before]) ⊙ Γ and MM = dP ⊙ QK ⊙ M (read after);
  //    rowDL = rowsum(dL ⊙ Γ ⊙ KK).
  {
    const bool rows = tid < kChunk;
    const int fixed = rows ? tid : tid - kChunk;
    float sGG = 0.0f, sMM = 0.0f, sDL = 0.0f;
    for (int u = 0; u < kChunk; ++u) {
      const int t = rows ? fixed : u, i = rows ? u : fixed;
      const float gm = gamma_at(G, t, i);
      const float kk = KKs[t * kLd + i], dl = Ls[t * kLd + i];
      const float dp = dPs[t * kLd + i], qk = QKs[t * kLd + i];
      const float dgam = dl * G.a[t] * kk + (rb ? dp * qk : 0.0f);
      sGG += dgam * gm;
      sDL += dl * gm * kk;
      if (!rb) sMM += dp * qk * mask_at(G, t, i, 0);
    }
    if (rows) {
      rowGG[fixed] = sGG;
      rowMM[fixed] = sMM;
      rowDL[fixed] = sDL;
    } else {
      colGG[fixed] = sGG;
      colMM[fixed] = sMM;
    }
  }
  __syncthreads();
  // 5. operands: S2 = dKK + dKKᵀ (dKK = dL ⊙ diag(a) Γ) over KK; dQK = dP ⊙ M over QK
  for (int idx = tid; idx < kChunk * kChunk; idx += kThreads) {
    const int t = idx / kChunk, i = idx % kChunk;
    float s2 = 0.0f;
    if (t > i) s2 = Ls[t * kLd + i] * G.a[t] * gamma_at(G, t, i);
    if (t < i) s2 = Ls[i * kLd + t] * G.a[i] * gamma_at(G, i, t);
    KKs[t * kLd + i] = s2;
    QKs[t * kLd + i] = dPs[t * kLd + i] * mask_at(G, t, i, rb);
  }
  __syncthreads();
  // 6. over V panels: dc = −rowsum(K S0 ⊙ dU), dDq = rowsum(Q S0 ⊙ dO), dbeta = rowsum(V ⊙ dU),
  //    dV = diag(beta) dU
  {
    T* dv = static_cast<T*>(p.dv) + (ci.row0 * p.HV + hv) * p.V;
    const int r0 = warp * 16 + (lane >> 2), c0 = 2 * (lane & 3);
    // row sums for rows r0 (suffix 0) and r0 + 8 (suffix 1); scalars, not arrays
    float sc0 = 0.0f, sc1 = 0.0f, sq0 = 0.0f, sq1 = 0.0f, sb0 = 0.0f, sb1 = 0.0f;
    for (int n0 = 0; n0 < p.V; n0 += kPanel) {
      const int nc = p.V - n0 < kPanel ? p.V - n0 : kPanel;
      Acc acc;
      acc_zero(acc);
      panel_gemm<T>(acc, make_op(cp.k, cp.qks, 1, len, p.K), make_op(s0, p.V, 1, p.K, p.V), 0,
                    n0, nc, p.K);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (j * 8 < nc) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int t = r0 + (e >> 1) * 8, vv = n0 + c0 + j * 8 + (e & 1);
            const float du = dw[int64_t(t) * p.V + vv];
            (e < 2 ? sc0 : sc1) += acc[j][e] * du;
            if (t < len) {
              (e < 2 ? sb0 : sb1) += to_f32(cp.v[t * cp.vs + vv]) * du;
              dv[t * cp.vs + vv] = from_f32<T>(G.beta[t] * du);
            }
          }
        }
      }
      acc_zero(acc);
      panel_gemm<T>(acc, make_op(cp.q, cp.qks, 1, len, p.K), make_op(s0, p.V, 1, p.K, p.V), 0,
                    n0, nc, p.K);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (j * 8 < nc) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int t = r0 + (e >> 1) * 8, vv = n0 + c0 + j * 8 + (e & 1);
            if (t < len) (e < 2 ? sq0 : sq1) += acc[j][e] * to_f32(dO[t * cp.vs + vv]);
          }
        }
      }
    }
    sc0 = quad_sum(sc0);
    sc1 = quad_sum(sc1);
    sq0 = quad_sum(sq0);
    sq1 = quad_sum(sq1);
    sb0 = quad_sum(sb0);
    sb1 = quad_sum(sb1);
    if ((lane & 3) == 0) {
      dcv[r0] = -sc0;
      dcv[r0 + 8] = -sc1;
      dDq[r0] = sq0 * p.scale * G.Dq[r0];
      dDq[r0 + 8] = sq1 * p.scale * G.Dq[r0 + 8];
      dbt[r0] = sb0;
      dbt[r0 + 8] = sb1;
    }
  }
  __syncthreads();
  // 7. gate gradients: da, dGp, dGc, then the reverse cumsums into dg
  if (tid < kChunk) {
    const int t = tid;
    float dd = 0.0f;
    const float* ddp = p.ddp + slot(p, c, hv) * p.ntiles * kChunk;
    for (int tl = 0; tl < p.ntiles; ++tl) dd += ddp[tl * kChunk + t];
    const float dc = dcv[t];
    const float da = dc * expf(G.Gp[t]) + rowDL[t];
    float gp = rowGG[t] + dc * G.c[t];
    float gc = -colGG[t] - dd;
    if (rb) gp += dDq[t];
    else gc += rowMM[t] - colMM[t] + dDq[t];
    rowDL[t] = da;
    dGp[t] = gp;
    dGc[t] = gc;
    colMM[t] = dd;  // free now: dd for the end-of-chunk sum
  }
  __syncthreads();
  if (tid == 0) {
    float sdd = 0.0f;
    for (int t = 0; t < kChunk; ++t) sdd += colMM[t];
    float sdec = 0.0f;
    const float* decp = p.decp + slot(p, c, hv) * p.ntiles;
    for (int tl = 0; tl < p.ntiles; ++tl) sdec += decp[tl];
    dGc[kChunk - 1] += sdd + sdec * G.eC[0];
    float accC = 0.0f, accP = 0.0f;
    for (int t = kChunk - 1; t >= 0; --t) {
      accC += dGc[t];
      const float dg = accC + accP;
      accP += dGp[t];
      dGc[t] = dg;
    }
    // scale * Dq for the dQ rows (rowGG is free now)
    for (int t = 0; t < kChunk; ++t) rowGG[t] = p.scale * G.Dq[t];
  }
  __syncthreads();
  if (tid < len) {
    const int t = tid;
    const int64_t idx = (ci.row0 + t) * p.HV + hv;
    const float da = rowDL[t];
    p.dbeta[idx] = dbt[t] + (p.has_erase ? 0.0f : da);
    if (p.has_erase) p.derase[idx] = da;
    if (p.has_g) p.dg[idx] = dGc[t];
  }
  // 8. dQ = scale diag(Dq) dO S0ᵀ + dQK K;
  //    dK = diag(d) W dSᵀ + dQKᵀ Q + S2 K − diag(c) dU S0ᵀ   (per-value-head fp32 partials)
  float* dqp = p.dqp + (ci.row0 * p.HV + hv) * p.K;
  float* dkp = p.dkp + (ci.row0 * p.HV + hv) * p.K;
  const int64_t dks = int64_t(p.HV) * p.K;
  for (int n0 = 0; n0 < p.K; n0 += kPanel) {
    const int nc = p.K - n0 < kPanel ? p.K - n0 : kPanel;
    Acc acc;
    acc_zero(acc);
    panel_gemm<T>(acc, make_op(dO, cp.vs, 1, len, p.V), make_op(s0, 1, p.V, p.V, p.K), 0, n0, nc,
                  p.V);
    acc_scale_rows(acc, 0, rowGG);
    panel_gemm<T>(acc, make_op<float>(QKs, kLd, 1, kChunk, kChunk),
                  make_op(cp.k, cp.qks, 1, len, p.K), 0, n0, nc, kChunk);
    acc_for_each(acc, 0, n0, nc, [&](int t, int kk, float& x) {
      if (t < len) dqp[t * dks + kk] = x;
    });

    acc_zero(acc);
    panel_gemm<T>(acc, make_op(w, p.V, 1, kChunk, p.V), make_op(dse, 1, p.V, p.V, p.K), 0, n0, nc,
                  p.V);
    acc_scale_rows(acc, 0, G.d);
    panel_gemm<T>(acc, make_op<float>(QKs, 1, kLd, kChunk, kChunk),
                  make_op(cp.q, cp.qks, 1, len, p.K), 0, n0, nc, kChunk);
    panel_gemm<T>(acc, make_op<float>(KKs, kLd, 1, kChunk, kChunk),
                  make_op(cp.k, cp.qks, 1, len, p.K), 0, n0, nc, kChunk);
    panel_gemm<T>(acc, make_op<float>(dw, p.V, 1, kChunk, p.V, G.nc),
                  make_op(s0, 1, p.V, p.V, p.K), 0, n0, nc, p.V);
    acc_for_each(acc, 0, n0, nc, [&](int t, int kk, float& x) {
      if (t < len) dkp[t * dks + kk] = x;
    });
  }
}

// ============================================================================================
// fold: dq/dk[row][h][kk] = Σ_{j < group} partial[row][h * group + j][kk] (fixed order), cast to
// T; rows outside [meta[1], meta[2]) (varlen rows no sequence covers) are zero.
template <class T>
__global__ void fold_kernel(const Params p) {
  const int64_t rows = p.B * p.T;
  const int64_t per_row = int64_t(p.H) * p.K;
  const int64_t total = rows * per_row;
  const int64_t lo = p.meta[1], hi = p.meta[2];
  T* dq = static_cast<T*>(p.dq);
  T* dk = static_cast<T*>(p.dk);
  for (int64_t x = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; x < total;
       x += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = x / per_row;
    const int64_t rem = x % per_row;
    const int h = static_cast<int>(rem / p.K), kk = static_cast<int>(rem % p.K);
    float sq = 0.0f, sk = 0.0f;
    if (row >= lo && row < hi) {
      const int64_t base = (row * p.HV + int64_t(h) * p.group) * p.K + kk;
      for (int j = 0; j < p.group; ++j) {
        sq += p.dqp[base + int64_t(j) * p.K];
        sk += p.dkp[base + int64_t(j) * p.K];
      }
    }
    dq[x] = from_f32<T>(sq);
    dk[x] = from_f32<T>(sk);
  }
}

// ============================================================================================
// Host drivers.
template <class K>
inline nlcore_status_t set_smem(K kernel, size_t bytes, const char* what) {
  if (bytes <= 48 * 1024) return NLCORE_STATUS_SUCCESS;
  return cuda_status(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(bytes)),
                     what);
}

template <class T>
nlcore_status_t run_forward(const Params& p, cudaStream_t stream) {
  nlcore_status_t st = launch_chunk_table(p, stream);
  if (st != NLCORE_STATUS_SUCCESS) return st;
  const dim3 chunk_grid(static_cast<unsigned>(p.nc_bound), static_cast<unsigned>(p.HV));
  const dim3 seq_grid(static_cast<unsigned>(p.N), static_cast<unsigned>(p.HV),
                      static_cast<unsigned>(p.ntiles));
  if ((st = set_smem(prep_kernel<T>, kSmemPrep, "cudaFuncSetAttribute(prep_kernel)")) !=
      NLCORE_STATUS_SUCCESS)
    return st;
  prep_kernel<T><<<chunk_grid, kThreads, kSmemPrep, stream>>>(p);
  if ((st = launch_status("prep_kernel launch")) != NLCORE_STATUS_SUCCESS) return st;
  const size_t smem = smem_state_bytes(p.K, p.V);
  if ((st = set_smem(state_kernel<T>, smem, "cudaFuncSetAttribute(state_kernel)")) !=
      NLCORE_STATUS_SUCCESS)
    return st;
  state_kernel<T><<<seq_grid, kThreads, smem, stream>>>(p, 1);
  if ((st = launch_status("state_kernel launch")) != NLCORE_STATUS_SUCCESS) return st;
  output_kernel<T><<<chunk_grid, kThreads, 0, stream>>>(p);
  if ((st = launch_status("output_kernel launch")) != NLCORE_STATUS_SUCCESS) return st;
  ZeroRows z{};
  z.ptr[0] = p.o;
  z.row_bytes[0] = int64_t(p.HV) * p.V * int64_t(sizeof(T));
  z.count = 1;
  return launch_zero_uncovered(p, z, stream);
}

template <class T>
nlcore_status_t run_backward(const Params& p, cudaStream_t stream) {
  nlcore_status_t st = launch_chunk_table(p, stream);
  if (st != NLCORE_STATUS_SUCCESS) return st;
  const dim3 chunk_grid(static_cast<unsigned>(p.nc_bound), static_cast<unsigned>(p.HV));
  const dim3 seq_grid(static_cast<unsigned>(p.N), static_cast<unsigned>(p.HV),
                      static_cast<unsigned>(p.ntiles));
  if ((st = set_smem(prep_kernel<T>, kSmemPrep, "cudaFuncSetAttribute(prep_kernel)")) !=
      NLCORE_STATUS_SUCCESS)
    return st;
  prep_kernel<T><<<chunk_grid, kThreads, kSmemPrep, stream>>>(p);
  if ((st = launch_status("prep_kernel launch")) != NLCORE_STATUS_SUCCESS) return st;
  const size_t smem = smem_state_bytes(p.K, p.V);
  if ((st = set_smem(state_kernel<T>, smem, "cudaFuncSetAttribute(state_kernel)")) !=
      NLCORE_STATUS_SUCCESS)
    return st;
  state_kernel<T><<<seq_grid, kThreads, smem, stream>>>(p, 0);
  if ((st = launch_status("state_kernel launch")) != NLCORE_STATUS_SUCCESS) return st;
  bwd_pre_kernel<T><<<chunk_grid, kThreads, 0, stream>>>(p);
  if ((st = launch_status("bwd_pre_kernel launch")) != NLCORE_STATUS_SUCCESS) return st;
  if ((st = set_smem(bwd_state_kernel<T>, smem, "cudaFuncSetAttribute(bwd_state_kernel)")) !=
      NLCORE_STATUS_SUCCESS)
    return st;
  bwd_state_kernel<T><<<seq_grid, kThreads, smem, stream>>>(p);
  if ((st = launch_status("bwd_state_kernel launch")) != NLCORE_STATUS_SUCCESS) return st;
  if ((st = set_smem(bwd_chunk_kernel<T>, kSmemBwdChunk,
                     "cudaFuncSetAttribute(bwd_chunk_kernel)")) != NLCORE_STATUS_SUCCESS)
    return st;
  bwd_chunk_kernel<T><<<chunk_grid, kThreads, kSmemBwdChunk, stream>>>(p);
  if ((st = launch_status("bwd_chunk_kernel launch")) != NLCORE_STATUS_SUCCESS) return st;
  const int64_t fold_total = p.B * p.T * p.H * int64_t(p.K);
  int64_t fold_blocks = ceil_div(fold_total, 256);
  fold_blocks = fold_blocks < 1 ? 1 : (fold_blocks > 4096 ? 4096 : fold_blocks);
  fold_kernel<T><<<static_cast<unsigned>(fold_blocks), 256, 0, stream>>>(p);
  if ((st = launch_status("fold_kernel launch")) != NLCORE_STATUS_SUCCESS) return st;
  ZeroRows z{};
  int k = 0;
  z.ptr[k] = p.dv;
  z.row_bytes[k++] = int64_t(p.HV) * p.V * int64_t(sizeof(T));
  z.ptr[k] = p.dbeta;
  z.row_bytes[k++] = int64_t(p.HV) * 4;
  if (p.has_g) {
    z.ptr[k] = p.dg;
    z.row_bytes[k++] = int64_t(p.HV) * 4;
  }
  if (p.has_erase) {
    z.ptr[k] = p.derase;
    z.row_bytes[k++] = int64_t(p.HV) * 4;
  }
  z.count = k;
  return launch_zero_uncovered(p, z, stream);
}

}  // namespace nlcore::dgd

#endif  // NLCORE_CUDA_DGD_KERNELS_CUH_
