// MLP scan: the generic tile GEMM every step of csrc/cpu/memory_mlp.h runs through, and its
// epilogues. Templated on the input dtype T only; included by one .cu per dtype.
//
// One CTA (kThreads = 128, 4 warps) computes a kTileM × kTileN tile of one (sequence, head)'s
// product for chunk j: grid = (N·H, ceil(M / 64), ceil(N / 64)). Per reduction slice of kTileK,
// the A slice [64 × 32] and the B slice [32 × 64] are fetched element by element through their
// views (dtype conversion, optional σ, η row scale and constant factor applied in fp32) into
// fp32 shared memory, then consumed by warp w for rows 16 w .. 16 w + 15 of the tile with the
// m16n8 C-fragment layout:
//   acc[b][e], e = 0, 1: row 16 w + lane / 4,     column 8 b + 2 (lane % 4) + e
//              e = 2, 3: row 16 w + lane / 4 + 8, same columns.
// Precision (DESIGN §2): for T = bf16 / fp16 every operand element is ROUNDED TO T when packed
// for mma.sync m16n8k16 (fp32 accumulation) — the fp32 weights and buffers included; for
// T = float the same loop runs fp32 FMAs (never TF32) with the same accumulator layout.
#ifndef NLCORE_CUDA_MEMORY_MLP_DEVICE_CUH_
#define NLCORE_CUDA_MEMORY_MLP_DEVICE_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <type_traits>

#include "common/mma.cuh"
#include "memory_mlp/launchers.h"
#include "memory_mlp/layout.h"

namespace nlcore::memory_mlp {

using common::from_f32;
using common::Mma;
using common::pack2;
using common::to_f32;

__device__ __forceinline__ ChunkSpan seq_chunk(const Params& p, int64_t s, int64_t j) {
  const int64_t* e = p.seq + s * kSeqEntry;
  return chunk_span(e[0], e[1], e[2], p.C, j);
}

// ---- operand views ---------------------------------------------------------------------------
// A MatDesc resolved for one (sh, chunk): stored element (r, c) at base[r * ld + c], valid for
// r < rows, c < cols; operand element (i, j) = stored (trans ? (j, i) : (i, j)).
struct View {
  const float* f;      // fp32 storage (kSrcTok, kSrcMat), else NULL
  const void* t;       // input-dtype storage (kSrcSeq)
  const float* etap;   // η of stored row 0 (row stride H)
  int64_t ld, rows;
  int cols, H, trans, act, eta;
  float mult;
};

template <class T>
__device__ __forceinline__ View resolve(const MatDesc& d, const Params& p, int64_t sh, int h,
                                        const ChunkSpan& cs) {
  View v;
  v.f = nullptr;
  v.t = nullptr;
  v.etap = p.eta + cs.row0 * p.H + h;
  v.cols = d.cols;
  v.H = p.H;
  v.trans = d.trans;
  v.act = d.act;
  v.eta = d.eta;
  v.mult = d.mult;
  if (d.src == kSrcSeq) {
    v.t = static_cast<const T*>(d.p) + (cs.row0 * p.H + h) * d.cols;
    v.ld = int64_t(p.H) * d.cols;
    v.rows = cs.len;
  } else if (d.src == kSrcTok) {
    v.f = static_cast<const float*>(d.p) + sh * p.rows * d.cols;
    v.ld = d.cols;
    v.rows = cs.len;
  } else {
    v.f = static_cast<const float*>(d.p) + sh * int64_t(d.mrows) * d.cols;
    v.ld = d.cols;
    v.rows = d.mrows;
  }
  return v;
}

template <class T>
__device__ __forceinline__ float fetch(const View& v, int gelu, int64_t i, int64_t j) {
  const int64_t r = v.trans ? j : i, c = v.trans ? i : j;
  if (r >= v.rows || c >= v.cols) return 0.0f;
  float x = v.f != nullptr ? v.f[r * v.ld + c] : to_f32(static_cast<const T*>(v.t)[r * v.ld + c]);
  if (v.act) x = act_f(gelu, x);
  if (v.eta) x *= v.etap[r * v.H];
  return x * v.mult;
}

// ---- epilogues ---------------------------------------------------------------------------------
// Element (i, j) of the product for (sh = s·H + h, chunk cs). For M = kTokens, i is the token
// index t within the chunk: [SH][rows][F] buffers at (sh·rows + t)·F + j, token tensors at
// ((row0 + t)·H + h)·D + j.
template <class T>
__device__ __forceinline__ void epilogue(const Params& p, const Gemm& g, int64_t sh, int h,
                                         const ChunkSpan& cs, int M, int64_t i, int64_t j,
                                         float acc, float alpha) {
  const int64_t tf = (sh * p.rows + i) * p.F + j;          // [SH][rows][F]
  const int64_t td = (sh * p.rows + i) * p.D + j;          // [SH][rows][D]
  const int64_t sd = ((cs.row0 + i) * p.H + h) * p.D + j;  // token tensor [B*T][H][D]
  switch (g.epi) {
    case kEpiStore:  // Z / Zx / Zv = U W1ᵀ
      g.out[(sh * p.rows + i) * g.n + j] = acc;
      break;
    case kEpiY: {    // Y = [X +] σ(Zx) W2ᵀ
      float y = acc;
      if (p.residual) y += to_f32(static_cast<const T*>(p.x)[sd]);
      static_cast<T*>(p.y)[sd] = from_f32<T>(y);
      break;
    }
    case kEpiTg: {   // Tg = [V +] σ(Zv) W2ᵀ
      float t = acc;
      if (p.residual) t += to_f32(static_cast<const T*>(p.v)[sd]);
      p.Tg[td] = t;
      break;
    }
    case kEpiE: {    // E = Pr − Tg, Pr = [K +] σ(Z) W2ᵀ ("l2");  E = −Tg ("dot")
      const float tg = p.self_target ? p.Tg[td] : to_f32(static_cast<const T*>(p.v)[sd]);
      float e = -tg;
      if (p.l2) {
        float pr = acc;
        if (p.residual) pr += to_f32(static_cast<const T*>(p.k)[sd]);
        e = pr - tg;
      }
      p.E[td] = e;
      break;
    }
    case kEpiQ1: {   // R = Eη W2;  Q1 = σ'(Z) ⊙ R [+ diag(η) Z]
      const float z = p.Z[tf];
      if (p.R != nullptr) p.R[tf] = acc;
      float q = act_d1(p.gelu, z) * acc;
      if (p.erase) q += p.eta[(cs.row0 + i) * p.H + h] * z;
      p.Q1[tf] = q;
      break;
    }
    case kEpiUpdate: {  // G = A + acc; complete: P ← μ P − G, W ← ᾱ W + P, A ← 0; else A ← G
      float* W = g.which == 1 ? p.w1 : p.w2;
      float* P = g.which == 1 ? p.p1 : p.p2;
      float* A = g.which == 1 ? p.a1 : p.a2;
      const int64_t e = (sh * M + i) * g.n + j;
      const float G = A[e] + acc;
      if (cs.complete) {
        const float pn = p.momentum * P[e] - G;
        P[e] = pn;
        W[e] = alpha * W[e] + pn;
        A[e] = 0.0f;
      } else {
        A[e] = G;
      }
      break;
    }
    case kEpiDQ1: {  // dQ1 = K dG1ᵀ; dR = σ'(Z) ⊙ dQ1; dZ = σ''(Z) ⊙ R ⊙ dQ1 [+ diag(η) dQ1]
      const float z = p.Z[tf];
      p.dQ1[tf] = acc;
      p.dR[tf] = act_d1(p.gelu, z) * acc;
      float dz = act_d2(p.gelu, z) * p.R[tf] * acc;
      if (p.erase) dz += p.eta[(cs.row0 + i) * p.H + h] * acc;
      p.dZ[tf] = dz;
      break;
    }
    case kEpiDEeta:  // dEη = σ(Z) dG2ᵀ + dR W2ᵀ;  dE = diag(η) dEη
      p.dEeta[td] = acc;
      p.dE[td] = p.eta[(cs.row0 + i) * p.H + h] * acc;
      break;
    case kEpiDH:     // dH = Eη dG2 [+ dPr W2];  dZ += σ'(Z) ⊙ dH
      p.dZ[tf] += act_d1(p.gelu, p.Z[tf]) * acc;
      break;
    case kEpiDK: {   // dK = Q1 dG1 + dZ W1 [+ dPr]   (dPr = dE, "l2" only)
      float d = acc;
      if (p.residual && p.l2) d += p.dE[td];
      static_cast<T*>(p.dk)[sd] = from_f32<T>(d);
      break;
    }
    case kEpiDZv:    // dZv = σ'(Zv) ⊙ (dTg W2)
      p.dZv[tf] = act_d1(p.gelu, p.Zv[tf]) * acc;
      break;
    case kEpiDV: {   // dV = dZv W1 [+ dTg] (self_target), dV = dTg otherwise; dTg = −dE
      float d = acc;
      if (!p.self_target || p.residual) d -= p.dE[td];
      static_cast<T*>(p.dv)[sd] = from_f32<T>(d);
      break;
    }
    case kEpiDZx:    // dZx = σ'(Zx) ⊙ (dY W2)
      p.dZx[tf] = act_d1(p.gelu, p.Zx[tf]) * acc;
      break;
    case kEpiDX: {   // dX = dZx W1 [+ dY]
      float d = acc;
      if (p.residual) d += to_f32(static_cast<const T*>(p.dy)[sd]);
      static_cast<T*>(p.dx)[sd] = from_f32<T>(d);
      break;
    }
    case kEpiAdd:    // dW += Σ terms
      g.out[(sh * M + i) * g.n + j] += acc;
      break;
    default:
      break;
  }
}

// ---- the kernel ----------------------------------------------------------------------------------
template <class T>
__global__ void __launch_bounds__(kThreads) gemm_kernel(const Params p, const Gemm g) {
  __shared__ float As[kTileM * kALd];  // A slice (i, k): As[i * kALd + k]
  __shared__ float Bs[kTileK * kBLd];  // B slice (k, j): Bs[k * kBLd + j]
  const int64_t sh = blockIdx.x;
  const int64_t s = sh / p.H;
  const int h = static_cast<int>(sh % p.H);
  const ChunkSpan cs = seq_chunk(p, s, g.chunk);
  if (cs.len <= 0) return;                       // this sequence has no chunk j (CTA-uniform)
  const int M = g.m == kTokens ? static_cast<int>(cs.len) : g.m;
  const int N = g.n;
  const int m0 = blockIdx.y * kTileM, n0 = blockIdx.z * kTileN;
  if (m0 >= M) return;                           // CTA-uniform
  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int gq = lane >> 2, q = lane & 3;
  const int r0 = warp * 16 + gq, r1 = r0 + 8;    // tile rows of this thread's fragments

  float acc[8][4];
#pragma unroll
  for (int b = 0; b < 8; ++b)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[b][e] = 0.0f;

  for (int term = 0; term < g.nterms; ++term) {
    const View A = resolve<T>(g.term[term].a, p, sh, h, cs);
    const View B = resolve<T>(g.term[term].b, p, sh, h, cs);
    const int64_t K = g.term[term].kdim == kTokens ? cs.len : g.term[term].kdim;
    for (int64_t k0 = 0; k0 < K; k0 += kTileK) {
      // Stage A(m0 + il, k0 + kl) and B(k0 + kl, n0 + jl) in fp32; consecutive threads walk the
      // stored rows' contiguous dimension.
      for (int e = tid; e < kTileM * kTileK; e += kThreads) {
        const int il = A.trans ? e % kTileM : e / kTileK;
        const int kl = A.trans ? e / kTileM : e % kTileK;
        const int64_t kk = k0 + kl;
        As[il * kALd + kl] = (m0 + il < M && kk < K) ? fetch<T>(A, p.gelu, m0 + il, kk) : 0.0f;
      }
      for (int e = tid; e < kTileK * kTileN; e += kThreads) {
        const int jl = B.trans ? e / kTileK : e % kTileN;
        const int kl = B.trans ? e % kTileK : e / kTileN;
        const int64_t kk = k0 + kl;
        Bs[kl * kBLd + jl] = (n0 + jl < N && kk < K) ? fetch<T>(B, p.gelu, kk, n0 + jl) : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int ks = 0; ks < kTileK; ks += 16) {
        if constexpr (std::is_same_v<T, float>) {
#pragma unroll
          for (int kx = 0; kx < 16; ++kx) {
            const float a0 = As[r0 * kALd + ks + kx], a1 = As[r1 * kALd + ks + kx];
#pragma unroll
            for (int b = 0; b < 8; ++b) {
              if (n0 + 8 * b < N) {
                const float b0 = Bs[(ks + kx) * kBLd + 8 * b + 2 * q];
                const float b1 = Bs[(ks + kx) * kBLd + 8 * b + 2 * q + 1];
                acc[b][0] = fmaf(a0, b0, acc[b][0]);
                acc[b][1] = fmaf(a0, b1, acc[b][1]);
                acc[b][2] = fmaf(a1, b0, acc[b][2]);
                acc[b][3] = fmaf(a1, b1, acc[b][3]);
              }
            }
          }
        } else {
          const int ka = ks + 2 * q;
          uint32_t a[4];
          a[0] = pack2<T>(As[r0 * kALd + ka], As[r0 * kALd + ka + 1]);
          a[1] = pack2<T>(As[r1 * kALd + ka], As[r1 * kALd + ka + 1]);
          a[2] = pack2<T>(As[r0 * kALd + ka + 8], As[r0 * kALd + ka + 9]);
          a[3] = pack2<T>(As[r1 * kALd + ka + 8], As[r1 * kALd + ka + 9]);
#pragma unroll
          for (int b = 0; b < 8; ++b) {
            if (n0 + 8 * b < N) {
              const int c = 8 * b + gq;
              const uint32_t b0 = pack2<T>(Bs[ka * kBLd + c], Bs[(ka + 1) * kBLd + c]);
              const uint32_t b1 = pack2<T>(Bs[(ka + 8) * kBLd + c], Bs[(ka + 9) * kBLd + c]);
              Mma<T>::run(acc[b], a, b0, b1);
            }
          }
        }
      }
      __syncthreads();
    }
  }

  const float alpha = g.epi == kEpiUpdate ? p.alpha[sh] : 1.0f;
#pragma unroll
  for (int b = 0; b < 8; ++b) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int i = m0 + (e >= 2 ? r1 : r0);
      const int j = n0 + 8 * b + 2 * q + (e & 1);
      if (i < M && j < N) epilogue<T>(p, g, sh, h, cs, M, i, j, acc[b][e], alpha);
    }
  }
}

// Launches one GEMM: grid (N·H, ceil(M / 64), ceil(n / 64)); M = the chunk-buffer rows for
// kTokens (CTAs past a chunk's length exit).
template <class T>
nlcore_status_t launch_gemm(const Params& p, const Gemm& g, cudaStream_t stream) {
  const int64_t m = g.m == kTokens ? p.rows : g.m;
  const dim3 grid(static_cast<unsigned>(p.N * p.H), static_cast<unsigned>(ceil_div(m, kTileM)),
                  static_cast<unsigned>(ceil_div(g.n, kTileN)));
  gemm_kernel<T><<<grid, kThreads, 0, stream>>>(p, g);
  return launch_status("gemm_kernel launch");
}

}  // namespace nlcore::memory_mlp

#endif  // NLCORE_CUDA_MEMORY_MLP_DEVICE_CUH_
