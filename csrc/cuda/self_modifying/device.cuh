// Self-modifying memories: the token kernels (the derive step, its backward with the sums over
// the four memories, and dx), templated on the input dtype T only; included by one .cu per
// dtype. The GEMMs are the MLP scan's (memory_mlp/device.cuh), instantiated by its own .cu files.
//
// One CTA per (sequence, head) in grid.x (N·H); its 4 warps take the chunk's tokens one per warp
// at a time (grid.y splits the tokens further where no cross-token sum is formed). A lane holds
// elements d = lane + 32 i (i < D / 32) of a row; row sums are warp butterflies whose lane-0
// value is broadcast, so every lane uses the same bits and the backward's recomputation of the
// derive step reproduces the forward exactly.
#ifndef NLCORE_CUDA_SELF_MODIFYING_DEVICE_CUH_
#define NLCORE_CUDA_SELF_MODIFYING_DEVICE_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "common/mma.cuh"
#include "self_modifying/launchers.h"
#include "self_modifying/layout.h"

namespace nlcore::self_modifying {

using common::from_f32;
using common::to_f32;
using memory_mlp::chunk_span;
using memory_mlp::ChunkSpan;
using memory_mlp::kMaxGridY;

__device__ __forceinline__ ChunkSpan tok_chunk(const TokParams& q, int64_t s, int64_t j) {
  const int64_t* e = q.seq + s * kSeqEntry;
  return chunk_span(e[0], e[1], e[2], q.C, j);
}

// Sum over the warp, lane 0's result given to every lane.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return __shfl_sync(0xffffffffu, v, 0);
}

// The reads of token t (chunk row) of (s, h): r[m][i] = x + Ox_m at d = lane + 32 i, and the
// three row sums of the derive step: ‖r_k‖², w_eta · r_eta + b_eta, w_alpha · r_alpha + b_alpha.
struct Reads {
  float r[kMem][kLaneElems];
  float sumsq, a, b;
};

template <class T>
__device__ __forceinline__ Reads load_reads(const TokParams& q, int64_t s, int h, int64_t row,
                                            int64_t t, int lane) {
  Reads R;
  const int D = q.D;
  const int nd = D / 32;
  float ss = 0.0f, a = 0.0f, b = 0.0f;
#pragma unroll
  for (int i = 0; i < kLaneElems; ++i) {
#pragma unroll
    for (int m = 0; m < kMem; ++m) R.r[m][i] = 0.0f;
    if (i < nd) {
      const int d = lane + 32 * i;
      const float xv = to_f32(static_cast<const T*>(q.x)[token_index(row, h, q.H, D, d)]);
#pragma unroll
      for (int m = 0; m < kMem; ++m)
        R.r[m][i] = xv + q.Ox[chunk_index(mem_row(m, s, h, q.N, q.H), q.rows, t, D, d)];
      ss = fmaf(R.r[kMemK][i], R.r[kMemK][i], ss);
      a = fmaf(q.w_eta[int64_t(h) * D + d], R.r[kMemEta][i], a);
      b = fmaf(q.w_alpha[int64_t(h) * D + d], R.r[kMemAlpha][i], b);
    }
  }
  R.sumsq = warp_sum(ss);
  R.a = warp_sum(a) + (q.b_eta != nullptr ? q.b_eta[h] : 0.0f);
  R.b = warp_sum(b) + (q.b_alpha != nullptr ? q.b_alpha[h] : 0.0f);
  return R;
}

// ---- derive: k, v, eta, g of chunk j's tokens ----------------------------------------------------
template <class T>
__global__ void __launch_bounds__(kTokThreads) derive_kernel(const TokParams q, int64_t j) {
  const int64_t sh = blockIdx.x;
  const int64_t s = sh / q.H;
  const int h = static_cast<int>(sh % q.H);
  const ChunkSpan cs = tok_chunk(q, s, j);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nd = q.D / 32;
  const int64_t step = int64_t(gridDim.y) * kTokWarps;
  for (int64_t t = int64_t(blockIdx.y) * kTokWarps + warp; t < cs.len; t += step) {  // per warp
    const int64_t row = cs.row0 + t;
    const Reads R = load_reads<T>(q, s, h, row, t, lane);
    const float sc = key_scale(R.sumsq);
#pragma unroll
    for (int i = 0; i < kLaneElems; ++i) {
      if (i < nd) {
        const int64_t o = token_index(row, h, q.H, q.D, lane + 32 * i);
        static_cast<T*>(q.k)[o] = from_f32<T>(sc * R.r[kMemK][i]);
        static_cast<T*>(q.v)[o] = from_f32<T>(R.r[kMemV][i]);
      }
    }
    if (lane == 0) {
      q.eta[row * q.H + h] = eta_of(R.a, q.eta_max);
      q.g[row * q.H + h] = log_sigmoid(R.b);
    }
  }
}

// ---- token backward ------------------------------------------------------------------------------
// Per token t of chunk j (csrc/cpu/self_modifying.h, backward steps 1–2):
//   dk = grad_k + Σ_m (dK_m + dE_m)          (dK_m = Q1 dG1 + dZ W1; the residual adds dPr = dE)
//   dv = grad_v + Σ_m (dV_m − dE_m)          (dV_m = dZv W1; the residual target adds dTg = −dE)
//   deta = grad_eta + Σ_m (⟨E_m, dEη_m⟩ [+ ⟨Z_m, dQ1_m⟩ dgd_erase])
//   dg = grad_g + Σ_m dΣg_m
//   dRx_k = s (dk − ⟨k, dk⟩ k),  dRx_v = dv,  da = deta · eta'(a),  dRx_eta = da w_eta,
//   db = dg · sigmoid(−b),  dRx_alpha = db w_alpha
// and this (sequence, head)'s sums Σ_t da_t r_eta,t, Σ_t db_t r_alpha,t, Σ_t da_t, Σ_t db_t.
// One CTA per (sequence, head) walks all the chunk's tokens (the sums are per-CTA, fixed order).
template <class T>
__global__ void __launch_bounds__(kTokThreads) token_bwd_kernel(const TokParams q, int64_t j) {
  __shared__ float red_w[kTokWarps][2][kMaxHeadDim];
  __shared__ float red_b[kTokWarps][2];
  static_assert(sizeof(red_w) + sizeof(red_b) == kTokBwdSmemBytes, "layout.h's shared-memory count");
  const int64_t sh = blockIdx.x;
  const int64_t s = sh / q.H;
  const int h = static_cast<int>(sh % q.H);
  const ChunkSpan cs = tok_chunk(q, s, j);
  if (cs.len <= 0) return;  // CTA-uniform
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int D = q.D, F = q.F, H = q.H;
  const int nd = D / 32;
  int64_t msh[kMem];
#pragma unroll
  for (int m = 0; m < kMem; ++m) msh[m] = mem_row(m, s, h, q.N, H);
  float dsg_sum = 0.0f;
#pragma unroll
  for (int m = 0; m < kMem; ++m) dsg_sum += q.dsg[msh[m]];

  float swe[kLaneElems], swa[kLaneElems];
#pragma unroll
  for (int i = 0; i < kLaneElems; ++i) swe[i] = swa[i] = 0.0f;
  float sbe = 0.0f, sba = 0.0f;

  for (int64_t t = warp; t < cs.len; t += kTokWarps) {  // per warp; no barrier inside
    const int64_t row = cs.row0 + t;
    const Reads R = load_reads<T>(q, s, h, row, t, lane);
    const float sc = key_scale(R.sumsq);
    float kk[kLaneElems], dk[kLaneElems], dv[kLaneElems];
    float kdk = 0.0f, de = 0.0f;
#pragma unroll
    for (int i = 0; i < kLaneElems; ++i) {
      kk[i] = dk[i] = dv[i] = 0.0f;
      if (i < nd) {
        const int d = lane + 32 * i;
        const int64_t o = token_index(row, h, H, D, d);
        kk[i] = sc * R.r[kMemK][i];
        float gk = q.grad_k != nullptr ? to_f32(static_cast<const T*>(q.grad_k)[o]) : 0.0f;
        float gv = q.grad_v != nullptr ? to_f32(static_cast<const T*>(q.grad_v)[o]) : 0.0f;
#pragma unroll
        for (int m = 0; m < kMem; ++m) {
          const int64_t c = chunk_index(msh[m], q.rows, t, D, d);
          const float dEm = q.dE[c];
          gk += q.dK[c] + dEm;
          gv += q.dV[c] - dEm;
          de = fmaf(q.E[c], q.dEeta[c], de);
        }
        dk[i] = gk;
        dv[i] = gv;
        kdk = fmaf(kk[i], gk, kdk);
      }
    }
    if (q.erase) {
      for (int f = lane; f < F; f += 32) {
#pragma unroll
        for (int m = 0; m < kMem; ++m) {
          const int64_t c = chunk_index(msh[m], q.rows, t, F, f);
          de = fmaf(q.Z[c], q.dQ1[c], de);
        }
      }
    }
    kdk = warp_sum(kdk);
    de = warp_sum(de);
    if (q.grad_eta != nullptr) de += q.grad_eta[row * H + h];
    float dg = dsg_sum;
    if (q.grad_g != nullptr) dg += q.grad_g[row * H + h];
    const float da = de * deta_da(R.a, q.eta_max);
    const float db = dg * dlogsig_db(R.b);
    sbe += da;
    sba += db;
#pragma unroll
    for (int i = 0; i < kLaneElems; ++i) {
      if (i < nd) {
        const int d = lane + 32 * i;
        const float we = q.w_eta[int64_t(h) * D + d], wa = q.w_alpha[int64_t(h) * D + d];
        q.dRx[chunk_index(msh[kMemK], q.rows, t, D, d)] = sc * (dk[i] - kdk * kk[i]);
        q.dRx[chunk_index(msh[kMemV], q.rows, t, D, d)] = dv[i];
        q.dRx[chunk_index(msh[kMemEta], q.rows, t, D, d)] = da * we;
        q.dRx[chunk_index(msh[kMemAlpha], q.rows, t, D, d)] = db * wa;
        swe[i] = fmaf(da, R.r[kMemEta][i], swe[i]);
        swa[i] = fmaf(db, R.r[kMemAlpha][i], swa[i]);
      }
    }
  }

  // this (sequence, head)'s sums: warps in a fixed order, then one read-modify-write per element
#pragma unroll
  for (int i = 0; i < kLaneElems; ++i) {
    red_w[warp][0][lane + 32 * i] = swe[i];
    red_w[warp][1][lane + 32 * i] = swa[i];
  }
  if (lane == 0) {
    red_b[warp][0] = sbe;
    red_b[warp][1] = sba;
  }
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += kTokThreads) {
    float we = 0.0f, wa = 0.0f;
#pragma unroll
    for (int w = 0; w < kTokWarps; ++w) {
      we += red_w[w][0][d];
      wa += red_w[w][1][d];
    }
    q.dwe[sh * D + d] += we;
    q.dwa[sh * D + d] += wa;
  }
  if (threadIdx.x == 0) {
    float be = 0.0f, ba = 0.0f;
#pragma unroll
    for (int w = 0; w < kTokWarps; ++w) {
      be += red_b[w][0];
      ba += red_b[w][1];
    }
    q.dbe[sh] += be;
    q.dba[sh] += ba;
  }
}

// ---- dx = dX + Σ_m dRx_m (the residual of every read) ------------------------------------------
template <class T>
__global__ void __launch_bounds__(kTokThreads) dx_kernel(const TokParams q, int64_t j) {
  const int64_t sh = blockIdx.x;
  const int64_t s = sh / q.H;
  const int h = static_cast<int>(sh % q.H);
  const ChunkSpan cs = tok_chunk(q, s, j);
  const int D = q.D;
  const int64_t n = cs.len * D;
  const int64_t step = int64_t(gridDim.y) * kTokThreads;
  for (int64_t e = int64_t(blockIdx.y) * kTokThreads + threadIdx.x; e < n; e += step) {
    const int64_t t = e / D;
    const int d = static_cast<int>(e % D);
    float v = q.dX[chunk_index(sh, q.rows, t, D, d)];
#pragma unroll
    for (int m = 0; m < kMem; ++m) v += q.dRx[chunk_index(mem_row(m, s, h, q.N, q.H), q.rows, t, D, d)];
    static_cast<T*>(q.dx)[token_index(cs.row0 + t, h, q.H, D, d)] = from_f32<T>(v);
  }
}

// ---- launchers -----------------------------------------------------------------------------------
inline unsigned grid_y(int64_t units, int per_block) {
  int64_t y = ceil_div(units, per_block);
  y = y < 1 ? 1 : (y > kMaxGridY ? kMaxGridY : y);
  return static_cast<unsigned>(y);
}

template <class T>
nlcore_status_t launch_derive(const TokParams& q, int64_t j, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(q.N * q.H), grid_y(q.rows, kTokWarps));
  derive_kernel<T><<<grid, kTokThreads, 0, stream>>>(q, j);
  return launch_status("derive_kernel launch");
}

template <class T>
nlcore_status_t launch_token_bwd(const TokParams& q, int64_t j, cudaStream_t stream) {
  token_bwd_kernel<T><<<static_cast<unsigned>(q.N * q.H), kTokThreads, 0, stream>>>(q, j);
  return launch_status("token_bwd_kernel launch");
}

template <class T>
nlcore_status_t launch_dx(const TokParams& q, int64_t j, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(q.N * q.H), grid_y(int64_t(q.rows) * q.D, kTokThreads));
  dx_kernel<T><<<grid, kTokThreads, 0, stream>>>(q, j);
  return launch_status("dx_kernel launch");
}

template <class T>
TokenKernels token_kernels(memory_mlp::GemmFn gemm) {
  TokenKernels k;
  k.derive = &launch_derive<T>;
  k.token_bwd = &launch_token_bwd<T>;
  k.dx = &launch_dx<T>;
  k.gemm = gemm;
  return k;
}

}  // namespace nlcore::self_modifying

#endif  // NLCORE_CUDA_SELF_MODIFYING_DEVICE_CUH_
