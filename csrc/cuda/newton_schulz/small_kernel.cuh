// The on-chip Newton–Schulz kernel: one thread block per matrix, every step in shared
// memory, tensor-core mma.sync m16n8k16 with fp32 accumulation.
//
// Shared memory (compute dtype T, 2 bytes): X [m_pad][ldx], A [m_pad][lda], B [m_pad][lda],
// plus 33 floats of reduction scratch. Zero padding (rows m..m_pad, cols n..n_pad) is exact:
// padded rows/cols of X, A and B stay zero through every step.
//
// Per step (each product accumulates in fp32; each result is rounded once to T):
//   A = round(X X^T)                 32x32 warp tiles, B operand = X rows (ldmatrix, no trans)
//   B = round(b A + c A A)           32x32 warp tiles, B operand = A (ldmatrix.trans); the
//                                    epilogue reads the rounded A from shared memory
//   X = round(a X + B X)             each warp owns 16-column strips over all rows, so it can
//                                    overwrite its strip of X in place after its own reads
// This is exactly the rounding placement of the CPU twin (csrc/cpu/newton_schulz.cpp).
#ifndef NLCORE_CUDA_NEWTON_SCHULZ_SMALL_KERNEL_CUH_
#define NLCORE_CUDA_NEWTON_SCHULZ_SMALL_KERNEL_CUH_

#include "newton_schulz/device.cuh"
#include "newton_schulz/launchers.h"
#include "newton_schulz/tiling.cuh"

namespace nlcore::ns {

// acc[MB][4][4]: a 16*MB x 32 tile (4 n8 blocks) = sum_k Aop[rows, k] * Bop[k, cols].
// Aop row-major in smem (rows a_row0.., ld lda_); Bop either "N x K" row-major (kTransB =
// false: element (k, n) at b[n * ldb + k]) or "K x N" row-major (kTransB = true: b[k * ldb + n]).
template <class T, int MB, bool kTransB>
__device__ __forceinline__ void warp_tile_32(float (&acc)[MB][4][4], const T* aop, int lda_,
                                             int a_row0, const T* bop, int ldb_, int b_col0, int K,
                                             int lane) {
#pragma unroll
  for (int i = 0; i < MB; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
  const RowCol la = ldsm_a_x4(lane);
  const RowCol lb = kTransB ? ldsm_b_kn_x4_trans(lane) : ldsm_b_nk_x4(lane);
  for (int k0 = 0; k0 < K; k0 += 16) {
    uint32_t af[MB][4], bf[2][4];
#pragma unroll
    for (int i = 0; i < MB; ++i) ldsm_x4(af[i], aop + (a_row0 + 16 * i + la.r) * lda_ + k0 + la.c);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      if (kTransB)
        ldsm_x4_trans(bf[j], bop + (k0 + lb.r) * ldb_ + b_col0 + 16 * j + lb.c);
      else
        ldsm_x4(bf[j], bop + (b_col0 + 16 * j + lb.r) * ldb_ + k0 + lb.c);
    }
#pragma unroll
    for (int i = 0; i < MB; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) Mma<T>::run(acc[i][j], af[i], bf[j / 2][(j % 2) * 2], bf[j / 2][(j % 2) * 2 + 1]);
  }
}

// Writes a 32x32 tile value v(r, c) at (row0 + r, col0 + c) of a symmetric-storage matrix.
// symmetric: also writes the mirror; on a diagonal tile only r <= c is written (and mirrored),
// so each element has exactly one writer.
template <class T>
__device__ __forceinline__ void store_sym(T* dst, int ld, int row, int col, float v0, float v1,
                                          bool symmetric, bool diag) {
  if (!symmetric) {
    *reinterpret_cast<uint32_t*>(dst + row * ld + col) = pack2<T>(v0, v1);
    return;
  }
  const T h0 = from_f32<T>(v0), h1 = from_f32<T>(v1);
  if (!diag || row <= col) {
    dst[row * ld + col] = h0;
    dst[col * ld + row] = h0;
  }
  if (!diag || row <= col + 1) {
    dst[row * ld + col + 1] = h1;
    dst[(col + 1) * ld + row] = h1;
  }
}

template <class T, class IO>
__global__ void __launch_bounds__(kSmallThreads, 1)
    ns_small_kernel(const __grid_constant__ SmallParams p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const SmallGeometry g = p.geo;
  T* Xs = reinterpret_cast<T*>(smem_raw);
  T* As = Xs + static_cast<size_t>(g.m_pad) * g.ldx;
  T* Bs = As + static_cast<size_t>(g.m_pad) * g.lda;
  float* red = reinterpret_cast<float*>(Bs + static_cast<size_t>(g.m_pad) * g.lda);

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t numel = static_cast<int64_t>(p.rows) * p.cols;
  const IO* Gm = static_cast<const IO*>(p.G) + static_cast<int64_t>(blockIdx.x) * numel;
  IO* Om = static_cast<IO*>(p.O) + static_cast<int64_t>(blockIdx.x) * numel;

  // ---- 1. Frobenius norm of the input values, fp32 ----
  float ss = 0.0f;
  for (int64_t i = tid; i < numel; i += kSmallThreads) {
    const float v = to_f32(Gm[i]);
    ss = fmaf(v, v, ss);
  }
  const float denom = ns_denominator(block_sum(ss, red), p.norm_scale, p.eps, p.norm_additive);

  // ---- 2. X = round(G / denom), transposed if rows > cols, zero-padded ----
  const int mn_pad = g.m_pad * g.n_pad;
  for (int idx = tid; idx < mn_pad; idx += kSmallThreads) {
    int i, j;
    if (p.transposed) {  // walk G row-major: X(i, j) = G(j, i), i fastest
      j = idx / g.m_pad;
      i = idx - j * g.m_pad;
    } else {
      i = idx / g.n_pad;
      j = idx - i * g.n_pad;
    }
    float v = 0.0f;
    if (i < g.m && j < g.n) v = to_f32(p.transposed ? Gm[j * p.cols + i] : Gm[i * p.cols + j]) / denom;
    Xs[i * g.ldx + j] = from_f32<T>(v);
  }
  __syncthreads();

  const bool sym = p.symmetric != 0;
  const int ab_tiles = small_ab_tiles(g.m_pad, sym);
  const int strips = g.n_pad / kSmallStripX;
  const int mblocks = g.m_pad / 16;
  int run = 0, left = p.coefs.run_len[0];

  for (int s = 0; s < p.steps; ++s) {
    if (left == 0) {
      ++run;
      left = p.coefs.run_len[run];
    }
    --left;
    const float ca = p.coefs.a[run], cb = p.coefs.b[run], cc = p.coefs.c[run];

    // ---- A = round(X X^T) ----
    for (int t = warp; t < ab_tiles; t += kSmallWarps) {
      int ti, tj;
      small_ab_tile_coords(t, g.m_pad, sym, &ti, &tj);
      float acc[2][4][4];
      warp_tile_32<T, 2, false>(acc, Xs, g.ldx, ti * 32, Xs, g.ldx, tj * 32, g.n_pad, lane);
      const bool diag = ti == tj;
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const RowCol rc = mma_acc_pos(lane, 2 * h);
            store_sym<T>(As, g.lda, ti * 32 + 16 * i + rc.r, tj * 32 + 8 * j + rc.c,
                         acc[i][j][2 * h], acc[i][j][2 * h + 1], sym, diag);
          }
    }
    __syncthreads();

    // ---- B = round(b A + c (A A)) ----
    for (int t = warp; t < ab_tiles; t += kSmallWarps) {
      int ti, tj;
      small_ab_tile_coords(t, g.m_pad, sym, &ti, &tj);
      float acc[2][4][4];
      warp_tile_32<T, 2, true>(acc, As, g.lda, ti * 32, As, g.lda, tj * 32, g.m_pad, lane);
      const bool diag = ti == tj;
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const RowCol rc = mma_acc_pos(lane, 2 * h);
            const int row = ti * 32 + 16 * i + rc.r, col = tj * 32 + 8 * j + rc.c;
            const float a0 = to_f32(As[row * g.lda + col]), a1 = to_f32(As[row * g.lda + col + 1]);
            store_sym<T>(Bs, g.lda, row, col, fmaf(cc, acc[i][j][2 * h], cb * a0),
                         fmaf(cc, acc[i][j][2 * h + 1], cb * a1), sym, diag);
          }
    }
    __syncthreads();

    // ---- X = round(a X + B X), in place: a warp reads and writes only its own strips ----
    for (int st = warp; st < strips; st += kSmallWarps) {
      const int col0 = st * kSmallStripX;
      float acc[kSmallMaxRowBlocks][2][4];
#pragma unroll
      for (int i = 0; i < kSmallMaxRowBlocks; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
      const RowCol la = ldsm_a_x4(lane);
      const RowCol lb = ldsm_b_kn_x4_trans(lane);
      for (int k0 = 0; k0 < g.m_pad; k0 += 16) {
        uint32_t bf[4];
        ldsm_x4_trans(bf, Xs + (k0 + lb.r) * g.ldx + col0 + lb.c);
#pragma unroll
        for (int i = 0; i < kSmallMaxRowBlocks; ++i) {
          if (i < mblocks) {
            uint32_t af[4];
            ldsm_x4(af, Bs + (16 * i + la.r) * g.lda + k0 + la.c);
            Mma<T>::run(acc[i][0], af, bf[0], bf[1]);
            Mma<T>::run(acc[i][1], af, bf[2], bf[3]);
          }
        }
      }
      __syncwarp();
#pragma unroll
      for (int i = 0; i < kSmallMaxRowBlocks; ++i) {
        if (i < mblocks) {
#pragma unroll
          for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const RowCol rc = mma_acc_pos(lane, 2 * h);
              T* px = Xs + (16 * i + rc.r) * g.ldx + col0 + 8 * j + rc.c;
              const float x0 = to_f32(px[0]), x1 = to_f32(px[1]);
              *reinterpret_cast<uint32_t*>(px) =
                  pack2<T>(fmaf(ca, x0, acc[i][j][2 * h]), fmaf(ca, x1, acc[i][j][2 * h + 1]));
            }
        }
      }
    }
    __syncthreads();
  }

  // ---- 3. O = X (transposed back), in the io dtype; coalesced over O ----
  for (int64_t idx = tid; idx < numel; idx += kSmallThreads) {
    const int r = static_cast<int>(idx / p.cols), c = static_cast<int>(idx - static_cast<int64_t>(r) * p.cols);
    const T x = p.transposed ? Xs[c * g.ldx + r] : Xs[r * g.ldx + c];
    Om[idx] = from_f32<IO>(to_f32(x));
  }
}

template <class T, class IO>
nlcore_status_t launch_small(const SmallParams& p, int64_t batch, size_t smem_bytes,
                             cudaStream_t stream) {
  auto kernel = ns_small_kernel<T, IO>;
  nlcore_status_t st = cuda_status(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem_bytes)),
      "cudaFuncSetAttribute(MaxDynamicSharedMemorySize) of the on-chip kernel");
  if (st != NLCORE_STATUS_SUCCESS) return st;
  kernel<<<static_cast<unsigned>(batch), kSmallThreads, smem_bytes, stream>>>(p);
  return launch_status("launch of the on-chip Newton-Schulz kernel");
}

}  // namespace nlcore::ns

#endif  // NLCORE_CUDA_NEWTON_SCHULZ_SMALL_KERNEL_CUH_
