// DGD device helpers: conversions, mma.sync m16n8k16 (inline PTX, sm_80+), the CTA panel GEMM
// used by every kernel, and the per-chunk gate vectors.
//
// CTA GEMM. Every kernel runs 4 warps (kThreads = 128) and computes products in output panels
// of 64 rows x (32 or 64) columns: warp w owns rows m0 + 16 w .. + 15, its accumulators are
// acc[j][e] for the 8-column block j with the m16n8 C-fragment layout
//   e = 0, 1: row m0 + 16 w + lane / 4,     column n0 + 8 j + 2 (lane % 4) + e
//   e = 2, 3: row m0 + 16 w + lane / 4 + 8, same columns.
// Operands are read at fragment-load time from wherever they live (global input tensors,
// fp32 workspace, fp32 shared memory) through an Op view, converted to fp32, optionally scaled
// per row, and then ROUNDED TO THE INPUT DTYPE T when packed for the tensor core — exactly the
// precision contract (every GEMM operand, fp32 states included, rounded to the input dtype;
// fp32 accumulation). For T = float the same loop runs fp32 FMAs (never TF32) with the same
// accumulator layout, so every epilogue is shared.
#ifndef NLCORE_CUDA_DGD_DEVICE_CUH_
#define NLCORE_CUDA_DGD_DEVICE_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <type_traits>

#include "common/mma.cuh"
#include "dgd/tiling.h"

namespace nlcore::dgd {

// ---- conversions and mma.sync (common/mma.cuh) --------------------------------------------
using common::from_f32;
using common::Mma;
using common::pack2;
using common::to_f32;

// ---- operand views -------------------------------------------------------------------------
// Element (i, j) = p[i * s0 + j * s1] * (scale ? scale[i] : 1), zero outside i < lim0, j < lim1.
// For an A operand (i, j) = (row m, reduction k); for a B operand (i, j) = (reduction k, col n).
template <class E> struct Op {
  const E* p;
  int64_t s0, s1;
  int lim0, lim1;
  const float* scale;
};
template <class E>
__device__ __forceinline__ Op<E> make_op(const E* p, int64_t s0, int64_t s1, int lim0, int lim1,
                                         const float* scale = nullptr) {
  Op<E> o;
  o.p = p;
  o.s0 = s0;
  o.s1 = s1;
  o.lim0 = lim0;
  o.lim1 = lim1;
  o.scale = scale;
  return o;
}
template <class E> __device__ __forceinline__ float op_at(const Op<E>& o, int i, int j) {
  if (i >= o.lim0 || j >= o.lim1) return 0.0f;
  float v = to_f32(o.p[i * o.s0 + j * o.s1]);
  if (o.scale != nullptr) v *= o.scale[i];
  return v;
}

using Acc = float[8][4];

__device__ __forceinline__ void acc_zero(Acc& acc) {
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;
}

// acc[64 x ncols panel at (m0, n0)] += A[m0.., 0:kdim] · B[0:kdim, n0..]; kdim % 16 == 0,
// ncols in {8, .., 64} (multiple of 8). No barrier inside.
template <class T, class EA, class EB>
__device__ __forceinline__ void panel_gemm(Acc& acc, const Op<EA>& A, const Op<EB>& B, int m0,
                                           int n0, int ncols, int kdim) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  const int r0 = m0 + warp * 16 + g, r1 = r0 + 8;
  if (m0 + warp * 16 >= A.lim0) return;  // the whole warp's rows are outside A: stays zero
  for (int k0 = 0; k0 < kdim; k0 += 16) {
    if constexpr (std::is_same_v<T, float>) {
#pragma unroll 2
      for (int kk = 0; kk < 16; ++kk) {
        const float a0 = op_at(A, r0, k0 + kk), a1 = op_at(A, r1, k0 + kk);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          if (j * 8 < ncols) {
            const int c = n0 + j * 8 + 2 * q;
            const float b0 = op_at(B, k0 + kk, c), b1 = op_at(B, k0 + kk, c + 1);
            acc[j][0] = fmaf(a0, b0, acc[j][0]);
            acc[j][1] = fmaf(a0, b1, acc[j][1]);
            acc[j][2] = fmaf(a1, b0, acc[j][2]);
            acc[j][3] = fmaf(a1, b1, acc[j][3]);
          }
        }
      }
    } else {
      const int ka = k0 + 2 * q;
      uint32_t a[4];
      a[0] = pack2<T>(op_at(A, r0, ka), op_at(A, r0, ka + 1));
      a[1] = pack2<T>(op_at(A, r1, ka), op_at(A, r1, ka + 1));
      a[2] = pack2<T>(op_at(A, r0, ka + 8), op_at(A, r0, ka + 9));
      a[3] = pack2<T>(op_at(A, r1, ka + 8), op_at(A, r1, ka + 9));
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (j * 8 < ncols) {
          const int c = n0 + j * 8 + g;
          const uint32_t b0 = pack2<T>(op_at(B, ka, c), op_at(B, ka + 1, c));
          const uint32_t b1 = pack2<T>(op_at(B, ka + 8, c), op_at(B, ka + 9, c));
          Mma<T>::run(acc[j], a, b0, b1);
        }
      }
    }
  }
}

// Calls f(row, col, value&) for every accumulator element of the calling thread.
template <class F>
__device__ __forceinline__ void acc_for_each(Acc& acc, int m0, int n0, int ncols, F&& f) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int r0 = m0 + warp * 16 + (lane >> 2);
  const int c0 = n0 + 2 * (lane & 3);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    if (j * 8 < ncols) {
#pragma unroll
      for (int e = 0; e < 4; ++e) f(r0 + (e >= 2 ? 8 : 0), c0 + j * 8 + (e & 1), acc[j][e]);
    }
  }
}

// Multiplies accumulator rows by s[row] (rows of the panel at m0).
__device__ __forceinline__ void acc_scale_rows(Acc& acc, int m0, const float* s) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int r0 = m0 + warp * 16 + (lane >> 2);
  const float s0 = s[r0], s1 = s[r0 + 8];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    acc[j][0] *= s0;
    acc[j][1] *= s0;
    acc[j][2] *= s1;
    acc[j][3] *= s1;
  }
}

// Sum over the 4 lanes that share a row (lane % 4); every one of them gets the total.
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  return v;
}

// ---- chunk table and gates --------------------------------------------------------------------
struct ChunkInfo {
  int64_t seq, row0;
  int len;
};
__device__ __forceinline__ ChunkInfo chunk_info(const int64_t* chunks, int64_t c) {
  ChunkInfo ci;
  ci.seq = chunks[c * kChunkEntry + 0];
  ci.row0 = chunks[c * kChunkEntry + 1];
  ci.len = static_cast<int>(chunks[c * kChunkEntry + 2]);
  return ci;
}

// Gate vectors of one chunk in shared memory (kGateFloats floats). Padded tokens (t >= len)
// have beta = a = g = 0 and leave the state untouched.
struct Gates {
  float* beta;
  float* a;
  float* g;
  float* Gc;  // inclusive cumsum of g within the chunk
  float* Gp;  // Gc - g (= G_{t-1})
  float* d;   // exp(Gc_{C-1} - Gc_t)
  float* c;   // a exp(Gp)
  float* Dq;  // exp(Gq): Gq = Gp (read before) or Gc (read after)
  float* nc;  // -c
  float* eC;  // exp(Gc_{C-1}) (one float)
};
__device__ __forceinline__ Gates gates_view(float* s) {
  Gates G;
  G.beta = s;
  G.a = s + 1 * kChunk;
  G.g = s + 2 * kChunk;
  G.Gc = s + 3 * kChunk;
  G.Gp = s + 4 * kChunk;
  G.d = s + 5 * kChunk;
  G.c = s + 6 * kChunk;
  G.Dq = s + 7 * kChunk;
  G.nc = s + 8 * kChunk;
  G.eC = s + 9 * kChunk;
  return G;
}

// All threads of the CTA must call it (contains barriers); on return the vectors are visible.
template <class P>
__device__ __forceinline__ void load_gates(const Gates& G, const P& p, const ChunkInfo& ci,
                                           int hv) {
  const int t = threadIdx.x;
  if (t < kChunk) {
    float b = 0.0f, a = 0.0f, g = 0.0f;
    if (t < ci.len) {
      const int64_t idx = (ci.row0 + t) * p.HV + hv;
      b = p.beta[idx];
      a = p.has_erase ? p.erase[idx] : b;
      g = p.has_g ? p.g[idx] : 0.0f;
    }
    G.beta[t] = b;
    G.a[t] = a;
    G.g[t] = g;
  }
  __syncthreads();
  if (t == 0) {  // sequential cumsum: the same order in every kernel
    float s = 0.0f;
    for (int i = 0; i < kChunk; ++i) {
      s += G.g[i];
      G.Gc[i] = s;
    }
    G.eC[0] = expf(s);
  }
  __syncthreads();
  if (t < kChunk) {
    const float gc = G.Gc[t], gp = gc - G.g[t];
    G.Gp[t] = gp;
    G.d[t] = expf(G.Gc[kChunk - 1] - gc);
    const float c = G.a[t] * expf(gp);
    G.c[t] = c;
    G.nc[t] = -c;
    G.Dq[t] = expf(p.read_before ? gp : gc);
  }
  __syncthreads();
}

// Γ_ti = exp(Gp_t − Gc_i) for i < t, else 0.
__device__ __forceinline__ float gamma_at(const Gates& G, int t, int i) {
  return i < t ? expf(G.Gp[t] - G.Gc[i]) : 0.0f;
}
// Output mask M: Γ (read before) or exp(Gc_t − Gc_i) for i <= t (read after).
__device__ __forceinline__ float mask_at(const Gates& G, int t, int i, int read_before) {
  if (read_before) return gamma_at(G, t, i);
  return i <= t ? expf(G.Gc[t] - G.Gc[i]) : 0.0f;
}

}  // namespace nlcore::dgd

#endif  // NLCORE_CUDA_DGD_DEVICE_CUH_
