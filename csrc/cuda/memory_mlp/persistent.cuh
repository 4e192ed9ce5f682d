// MLP scan, persistent form (NLCORE_MEMORY_MLP_FLAG_PERSISTENT, experimental, sm_90; forward
// only): one thread-block cluster of c CTAs per (sequence, head) walks every chunk of its
// sequence with the fast weights kept in shared memory, split over the cluster by hidden unit.
// The partition, the per-tile steps S1..S6 and the shared-memory layout are described in
// persistent.h (host-tested); the math per chunk is csrc/cpu/memory_mlp.h's.
//
// Templated on the input dtype T and the slice shape (D, FC = F / c): the register fragments
// of the inner gradient slices need compile-time sizes. The body exists only for
// __CUDA_ARCH__ >= 900 (clusters, distributed shared memory); other images get a trapping stub
// that the host never launches (api.cpp checks the device and the loaded image's SASS version
// through persist_probe first).
#ifndef NLCORE_CUDA_MEMORY_MLP_PERSISTENT_CUH_
#define NLCORE_CUDA_MEMORY_MLP_PERSISTENT_CUH_

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <type_traits>

#include "common/mma.cuh"
#include "memory_mlp/launchers.h"
#include "memory_mlp/layout.h"
#include "memory_mlp/persistent.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define NLCORE_MLP_PERSIST_DEVICE_CODE 1
#endif

namespace nlcore::memory_mlp::persist {

#if defined(NLCORE_MLP_PERSIST_DEVICE_CODE)

using common::from_f32;
using common::Mma;
using common::pack2;
using common::to_f32;

// ---- operand accessors over fp32 shared memory: element (row, col) of a GEMM operand ---------
template <int LD>
struct RowMajor {  // op(r, c) = p[r][c]
  const float* p;
  __device__ __forceinline__ float operator()(int r, int c) const { return p[r * LD + c]; }
};
template <int LD>
struct RowMajorNeg {  // op(r, c) = −p[r][c]
  const float* p;
  __device__ __forceinline__ float operator()(int r, int c) const { return -p[r * LD + c]; }
};
template <int LD>
struct ColMajor {  // op(r, c) = p[c][r]
  const float* p;
  __device__ __forceinline__ float operator()(int r, int c) const { return p[c * LD + r]; }
};
template <int LD>
struct RowScaled {  // op(t, d) = s[t] · p[t][d]     (diag(η) E)
  const float* p;
  const float* s;
  __device__ __forceinline__ float operator()(int r, int c) const { return s[r] * p[r * LD + c]; }
};
template <int LD>
struct ColScaled {  // op(d, t) = s[t] · p[t][d]     ((diag(η) E)ᵀ)
  const float* p;
  const float* s;
  __device__ __forceinline__ float operator()(int r, int c) const { return s[c] * p[c * LD + r]; }
};

// acc (m16n8 C fragment at rows i0.., cols n0..) += A[i0 : i0 + 16, k0 : k0 + 16] ·
// B[k0 : k0 + 16, n0 : n0 + 8]. bf16 / fp16: operands rounded to T, mma.sync; fp32: FMAs in
// the same layout (never TF32).
template <class T, class FA, class FB>
__device__ __forceinline__ void mma16(float (&acc)[4], const FA& A, int i0, const FB& B, int n0,
                                      int k0, int lane) {
  const int g = lane >> 2, q = lane & 3;
  if constexpr (std::is_same_v<T, float>) {
#pragma unroll
    for (int kx = 0; kx < 16; ++kx) {
      const float a0 = A(i0 + g, k0 + kx), a1 = A(i0 + g + 8, k0 + kx);
      const float b0 = B(k0 + kx, n0 + 2 * q), b1 = B(k0 + kx, n0 + 2 * q + 1);
      acc[0] = fmaf(a0, b0, acc[0]);
      acc[1] = fmaf(a0, b1, acc[1]);
      acc[2] = fmaf(a1, b0, acc[2]);
      acc[3] = fmaf(a1, b1, acc[3]);
    }
  } else {
    const int ka = k0 + 2 * q;
    uint32_t a[4];
    a[0] = pack2<T>(A(i0 + g, ka), A(i0 + g, ka + 1));
    a[1] = pack2<T>(A(i0 + g + 8, ka), A(i0 + g + 8, ka + 1));
    a[2] = pack2<T>(A(i0 + g, ka + 8), A(i0 + g, ka + 9));
    a[3] = pack2<T>(A(i0 + g + 8, ka + 8), A(i0 + g + 8, ka + 9));
    const uint32_t b0 = pack2<T>(B(ka, n0 + g), B(ka + 1, n0 + g));
    const uint32_t b1 = pack2<T>(B(ka + 8, n0 + g), B(ka + 9, n0 + g));
    Mma<T>::run(acc, a, b0, b1);
  }
}

__device__ __forceinline__ int64_t cu_at(const void* cu, int is64, int64_t i) {
  return is64 ? static_cast<const int64_t*>(cu)[i]
              : static_cast<int64_t>(static_cast<const int32_t*>(cu)[i]);
}

#endif  // NLCORE_MLP_PERSIST_DEVICE_CODE

// grid = N·H·c CTAs in clusters of c (cluster = one (sequence, head)), kThreads threads,
// smem_bytes(D, FC) of dynamic shared memory.
template <class T, int D, int FC>
__global__ void __launch_bounds__(kThreads, 1) persist_kernel(const Params p, int csize) {
#if defined(NLCORE_MLP_PERSIST_DEVICE_CODE)
  namespace cg = cooperative_groups;
  constexpr Smem L = smem_layout(D, FC);
  constexpr int LW1 = D + kPad, LW2 = FC + kPad, LD_ = D + kPad, LF = FC + kPad;
  static_assert(L.ldw1 == LW1 && L.ldw2 == LW2 && L.ldd == LD_ && L.ldf == LF, "strides");
  constexpr int NF = frags_per_warp(FC, D);  // G fragments per warp (G1 and G2 alike)
  static_assert(slice_fits(D, FC), "slice budget");
  static_assert(NF == frags_per_warp(D, FC), "G1 and G2 fragments per warp");

  extern __shared__ float4 smem_f4[];
  float* const sm = reinterpret_cast<float*>(smem_f4);
  float* const W1s = sm + L.w1;
  float* const W2s = sm + L.w2;
  float* const Xs = sm + L.x;
  float* const Ks = sm + L.k;
  float* const Vs = sm + L.v;
  float* const eta_s = sm + L.eta;
  float* const g_s = sm + L.g;
  float* const Zk = sm + L.zk;
  float* const Hk = sm + L.hk;
  float* const Hx = sm + L.hx;  // σ(Zx) in S2..S3, then Q1 in S5..S6
  float* const Hv = sm + L.hv;
  float* const Es = sm + L.e;
  float* const P1s = sm + L.p1;
  float* const P2s = sm + L.p2;

  cg::cluster_group cluster = cg::this_cluster();
  const int rank = static_cast<int>(cluster.block_rank());
  const int64_t pair = blockIdx.x / csize;  // sh = s·H + h
  const int64_t s = pair / p.H;
  const int h = static_cast<int>(pair % p.H);
  const int F = p.F;
  const int f0 = rank * FC;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gq = lane >> 2, qq = lane & 3;
  const bool need_e = p.l2 || p.self_target;  // E has a product term to reduce
  const int64_t FD = int64_t(F) * D;

  // ---- this sequence (same clamping as step one's table_kernel) ----
  int64_t start, len, n0;
  {
    const int64_t rows = p.B * p.T;
    int64_t a, b;
    if (p.cu != nullptr) {
      a = cu_at(p.cu, p.cu_is64, s);
      b = cu_at(p.cu, p.cu_is64, s + 1);
    } else {
      a = s * p.T;
      b = a + p.T;
    }
    a = a < 0 ? 0 : (a > rows ? rows : a);
    b = b < a ? a : (b > rows ? rows : b);
    start = a;
    len = b - a;
    n0 = p.has_init ? p.n_init[s] : 0;
    n0 = n0 < 0 ? 0 : (n0 >= p.C ? p.C - 1 : n0);
  }
  const int64_t nchunks = chunks_of(len, n0, p.C);
  const int64_t fcount = final_count(len, n0, p.C);

  // ---- state slices in ----
  {
    const float* w1 = p.w1_init + (p.w_shared ? int64_t(h) : pair) * FD;
    const float* w2 = p.w2_init + (p.w_shared ? int64_t(h) : pair) * FD;
    for (int e = tid; e < FC * D; e += kThreads) {
      const int i = e / D, d = e % D;  // W1 [F][D]: rows f0 + i
      W1s[i * LW1 + d] = w1[int64_t(f0 + i) * D + d];
      P1s[i * LW1 + d] = p.has_init ? p.p1_init[pair * FD + int64_t(f0 + i) * D + d] : 0.0f;
    }
    for (int e = tid; e < D * FC; e += kThreads) {
      const int d = e / FC, j = e % FC;  // W2 [D][F]: columns f0 + j
      W2s[d * LW2 + j] = w2[int64_t(d) * F + f0 + j];
      P2s[d * LW2 + j] = p.has_init ? p.p2_init[pair * FD + int64_t(d) * F + f0 + j] : 0.0f;
    }
  }
  // G fragments start as the carried open chunk's accumulators (zero without a state)
  float g1[NF][4], g2[NF][4];
#pragma unroll
  for (int i = 0; i < NF; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const ElemRC a = frag_elem(D, warp, i, lane, e);   // G1 [FC][D]
      const ElemRC b = frag_elem(FC, warp, i, lane, e);  // G2 [D][FC]
      g1[i][e] = p.has_init ? p.a1_init[pair * FD + int64_t(f0 + a.r) * D + a.c] : 0.0f;
      g2[i][e] = p.has_init ? p.a2_init[pair * FD + int64_t(b.r) * F + f0 + b.c] : 0.0f;
    }
  float ag = p.has_init ? p.ag_init[pair] : 0.0f;  // a_g at the current chunk's start
  __syncthreads();

  int64_t tile_no = 0;  // tiles so far: the partial slot's parity
  for (int64_t j = 0; j < nchunks; ++j) {
    const ChunkSpan cs = chunk_span(start, len, n0, p.C, j);
    float gsum = 0.0f;
    for (int64_t t0 = 0; t0 < cs.len; t0 += kTok, ++tile_no) {
      const int valid = cs.len - t0 < kTok ? static_cast<int>(cs.len - t0) : kTok;
      const int64_t row0 = cs.row0 + t0;
      const int slot = static_cast<int>(tile_no & 1);
      float* const Yp = sm + L.yp + slot * (kTok * LD_);
      float* const Ep = sm + L.ep + slot * (kTok * LD_);

      // S1: token tiles (zero rows past the chunk's end; η = g = 0 there)
      for (int e = tid; e < kTok * D; e += kThreads) {
        const int t = e / D, d = e % D;
        float xv = 0.0f, kv = 0.0f, vv = 0.0f;
        if (t < valid) {
          const int64_t idx = ((row0 + t) * p.H + h) * D + d;
          xv = to_f32(static_cast<const T*>(p.x)[idx]);
          kv = to_f32(static_cast<const T*>(p.k)[idx]);
          vv = to_f32(static_cast<const T*>(p.v)[idx]);
        }
        Xs[t * LD_ + d] = xv;
        Ks[t * LD_ + d] = kv;
        Vs[t * LD_ + d] = vv;
      }
      if (tid < kTok) {
        const bool ok = tid < valid;
        const int64_t idx = (row0 + tid) * p.H + h;
        eta_s[tid] = ok ? p.eta[idx] : 0.0f;
        g_s[tid] = (ok && p.has_g) ? p.g[idx] : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int t = 0; t < kTok; ++t) gsum += g_s[t];  // same order in every thread and CTA

      // S2: Zx, Z, Zv = (X, K, V) W1sᵀ  [16 × FC]; B(k = d, n = f) = W1s[f][d]
      {
        const int nmat = p.self_target ? 3 : 2;
        const ColMajor<LW1> B{W1s};
        for (int item = warp; item < nmat * (FC / 8); item += kWarps) {
          const int mat = item / (FC / 8), c0 = 8 * (item % (FC / 8));
          const RowMajor<LD_> A{mat == 0 ? Xs : (mat == 1 ? Ks : Vs)};
          float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
          for (int k0 = 0; k0 < D; k0 += 16) mma16<T>(acc, A, 0, B, c0, k0, lane);
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int t = gq + ((e >> 1) << 3), f = c0 + 2 * qq + (e & 1);
            const float z = acc[e];
            if (mat == 0) {
              Hx[t * LF + f] = act_f(p.gelu, z);
            } else if (mat == 1) {
              Zk[t * LF + f] = z;
              Hk[t * LF + f] = act_f(p.gelu, z);
            } else {
              Hv[t * LF + f] = act_f(p.gelu, z);
            }
          }
        }
      }
      __syncthreads();

      // S3: partials over my hidden units [16 × D]; B(k = f, n = d) = W2s[d][f]
      {
        const ColMajor<LW2> B{W2s};
        const int items = (need_e ? 2 : 1) * (D / 8);
        for (int item = warp; item < items; item += kWarps) {
          const bool is_e = item >= D / 8;
          const int c0 = 8 * (is_e ? item - D / 8 : item);
          float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
          if (!is_e) {
            const RowMajor<LF> A{Hx};
#pragma unroll
            for (int k0 = 0; k0 < FC; k0 += 16) mma16<T>(acc, A, 0, B, c0, k0, lane);
          } else {
            if (p.l2) {
              const RowMajor<LF> A{Hk};
#pragma unroll
              for (int k0 = 0; k0 < FC; k0 += 16) mma16<T>(acc, A, 0, B, c0, k0, lane);
            }
            if (p.self_target) {
              const RowMajorNeg<LF> A{Hv};
#pragma unroll
              for (int k0 = 0; k0 < FC; k0 += 16) mma16<T>(acc, A, 0, B, c0, k0, lane);
            }
          }
          float* const out = is_e ? Ep : Yp;
#pragma unroll
          for (int e = 0; e < 4; ++e)
            out[(gq + ((e >> 1) << 3)) * LD_ + c0 + 2 * qq + (e & 1)] = acc[e];
        }
      }
      cluster.sync();  // every CTA's partials of this tile are visible cluster-wide

      // S4: E = base + Σ_r Ep_r (rank order, every CTA alike); y for my columns
      for (int e = tid; e < kTok * D; e += kThreads) {
        const int t = e / D, d = e % D;
        float v = 0.0f;
        if (p.l2 && p.residual) v += Ks[t * LD_ + d];
        if (!p.self_target || p.residual) v -= Vs[t * LD_ + d];
        if (need_e)
          for (int r = 0; r < csize; ++r)
            v += cluster.map_shared_rank(Ep, static_cast<unsigned>(r))[t * LD_ + d];
        Es[t * LD_ + d] = v;
      }
      {
        const ColRange yc = y_cols(D, csize, rank);
        for (int e = tid; e < kTok * yc.count; e += kThreads) {
          const int t = e / yc.count, d = yc.d0 + e % yc.count;
          if (t >= valid) continue;
          float v = 0.0f;
          for (int r = 0; r < csize; ++r)
            v += cluster.map_shared_rank(Yp, static_cast<unsigned>(r))[t * LD_ + d];
          if (p.residual) v += Xs[t * LD_ + d];
          static_cast<T*>(p.y)[((row0 + t) * p.H + h) * D + d] = from_f32<T>(v);
        }
      }
      __syncthreads();

      // S5: R = (ηE) W2s [16 × FC]; Q1 = σ'(Z) ⊙ R [+ η Z] -> Hx
      {
        const RowScaled<LD_> A{Es, eta_s};
        const RowMajor<LW2> B{W2s};  // B(k = d, n = f) = W2s[d][f]
        for (int item = warp; item < FC / 8; item += kWarps) {
          const int c0 = 8 * item;
          float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
          for (int k0 = 0; k0 < D; k0 += 16) mma16<T>(acc, A, 0, B, c0, k0, lane);
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int t = gq + ((e >> 1) << 3), f = c0 + 2 * qq + (e & 1);
            const float z = Zk[t * LF + f];
            float q = act_d1(p.gelu, z) * acc[e];
            if (p.erase) q += eta_s[t] * z;
            Hx[t * LF + f] = q;
          }
        }
      }
      __syncthreads();

      // S6: G1 += Q1ᵀ K [FC × D], G2 += (ηE)ᵀ σ(Z) [D × FC]; one k16 step over the tile
      {
        const ColMajor<LF> A1{Hx};       // A1(f, t) = Q1[t][f]
        const RowMajor<LD_> B1{Ks};      // B1(t, d) = K[t][d]
        const ColScaled<LD_> A2{Es, eta_s};  // A2(d, t) = η_t E[t][d]
        const RowMajor<LF> B2{Hk};       // B2(t, f) = σ(Z)[t][f]
#pragma unroll
        for (int i = 0; i < NF; ++i) {
          const TileRC a = frag_tile(D, warp, i);
          mma16<T>(g1[i], A1, a.r0, B1, a.c0, 0, lane);
          const TileRC b = frag_tile(FC, warp, i);
          mma16<T>(g2[i], A2, b.r0, B2, b.c0, 0, lane);
        }
      }
      __syncthreads();  // the tiles are free for the next one
    }

    // chunk end: complete -> ᾱ = exp(a_g + Σg), P ← μ P − G, W ← ᾱ W + P, G ← 0;
    // incomplete (the last chunk) -> G and a_g + Σg stay open (written out below)
    const float sg = ag + gsum;
    if (cs.complete) {
      const float alpha = expf(sg);
#pragma unroll
      for (int i = 0; i < NF; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const ElemRC a = frag_elem(D, warp, i, lane, e);
          const int oa = a.r * LW1 + a.c;
          const float pa = p.momentum * P1s[oa] - g1[i][e];
          P1s[oa] = pa;
          W1s[oa] = alpha * W1s[oa] + pa;
          g1[i][e] = 0.0f;
          const ElemRC b = frag_elem(FC, warp, i, lane, e);
          const int ob = b.r * LW2 + b.c;
          const float pb = p.momentum * P2s[ob] - g2[i][e];
          P2s[ob] = pb;
          W2s[ob] = alpha * W2s[ob] + pb;
          g2[i][e] = 0.0f;
        }
      ag = 0.0f;
      __syncthreads();  // the next chunk reads the updated weights
    } else {
      ag = sg;
    }
  }

  // ---- final state out ----
  {
    float* w1 = p.w1 + pair * FD;
    float* w2 = p.w2 + pair * FD;
    for (int e = tid; e < FC * D; e += kThreads) {
      const int i = e / D, d = e % D;
      const int64_t o = int64_t(f0 + i) * D + d;
      w1[o] = W1s[i * LW1 + d];
      p.p1[pair * FD + o] = P1s[i * LW1 + d];
    }
    for (int e = tid; e < D * FC; e += kThreads) {
      const int d = e / FC, jj = e % FC;
      const int64_t o = int64_t(d) * F + f0 + jj;
      w2[o] = W2s[d * LW2 + jj];
      p.p2[pair * FD + o] = P2s[d * LW2 + jj];
    }
    // accumulators: the open chunk's G (or the untouched initial ones), else zero
    const bool open = nchunks == 0 || fcount != 0;
#pragma unroll
    for (int i = 0; i < NF; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const ElemRC a = frag_elem(D, warp, i, lane, e);
        const ElemRC b = frag_elem(FC, warp, i, lane, e);
        p.a1[pair * FD + int64_t(f0 + a.r) * D + a.c] = open ? g1[i][e] : 0.0f;
        p.a2[pair * FD + int64_t(b.r) * F + f0 + b.c] = open ? g2[i][e] : 0.0f;
      }
    if (rank == 0 && tid == 0) {
      p.ag[pair] = ag;
      if (h == 0 && p.n_out != nullptr) p.n_out[s] = fcount;
    }
  }
  cluster.sync();  // no CTA leaves while a peer may still read its partial slots
#else
  __trap();  // never launched: api.cpp takes this path only for a loaded sm_90 image
#endif
}

// ---- host side ------------------------------------------------------------------------------
template <class T, int D, int FC>
nlcore_status_t persist_run(const Params* p, const PersistLaunch& pl, int* max_clusters,
                            cudaStream_t stream) {
  auto kernel = persist_kernel<T, D, FC>;
  if (p == nullptr) {  // probe: is the loaded image a real sm_90 one, and can a cluster run?
    *max_clusters = 0;
    cudaFuncAttributes fa{};
    nlcore_status_t st = cuda_status(cudaFuncGetAttributes(&fa, kernel),
                                     "cudaFuncGetAttributes(persistent MLP-scan kernel)");
    if (st != NLCORE_STATUS_SUCCESS) return st;
    if (fa.binaryVersion < 90) {  // the trapping stub
      *max_clusters = -1;
      return NLCORE_STATUS_SUCCESS;
    }
  }
  nlcore_status_t st = cuda_status(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(pl.smem)),
      "cudaFuncSetAttribute(MaxDynamicSharedMemorySize) of the persistent MLP-scan kernel");
  if (st != NLCORE_STATUS_SUCCESS) return st;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(pl.cluster);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(pl.pairs * pl.cluster), 1, 1);
  cfg.blockDim = dim3(kThreads, 1, 1);
  cfg.dynamicSmemBytes = pl.smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  if (p == nullptr) {
    int n = 0;
    st = cuda_status(cudaOccupancyMaxActiveClusters(&n, kernel, &cfg),
                     "cudaOccupancyMaxActiveClusters(persistent MLP-scan kernel)");
    if (st != NLCORE_STATUS_SUCCESS) return st;
    *max_clusters = n;
    return NLCORE_STATUS_SUCCESS;
  }
  st = cuda_status(cudaLaunchKernelEx(&cfg, kernel, *p, pl.cluster),
                   "launch of the persistent MLP-scan kernel");
  if (st != NLCORE_STATUS_SUCCESS) return st;
  return launch_status("launch of the persistent MLP-scan kernel");
}

// Dispatch over the instantiated slices (persistent.h: slice_built).
template <class T>
nlcore_status_t persist_dispatch(const Params* p, const PersistLaunch& pl, int* max_clusters,
                                 cudaStream_t stream) {
  if (pl.D == 32 && pl.fc == 32) return persist_run<T, 32, 32>(p, pl, max_clusters, stream);
  if (pl.D == 32 && pl.fc == 64) return persist_run<T, 32, 64>(p, pl, max_clusters, stream);
  if (pl.D == 32 && pl.fc == 128) return persist_run<T, 32, 128>(p, pl, max_clusters, stream);
  if (pl.D == 64 && pl.fc == 64) return persist_run<T, 64, 64>(p, pl, max_clusters, stream);
  if (pl.D == 64 && pl.fc == 128) return persist_run<T, 64, 128>(p, pl, max_clusters, stream);
  if (pl.D == 128 && pl.fc == 64) return persist_run<T, 128, 64>(p, pl, max_clusters, stream);
  return NLCORE_STATUS_NOT_SUPPORTED;
}

}  // namespace nlcore::memory_mlp::persist

#endif  // NLCORE_CUDA_MEMORY_MLP_PERSISTENT_CUH_
