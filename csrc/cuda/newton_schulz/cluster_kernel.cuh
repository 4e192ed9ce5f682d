// The 2-CTA thread-block cluster Newton–Schulz kernel (NLCORE_NS_FLAG_CLUSTER, experimental,
// sm_90a only): one cluster of two CTAs per matrix, every step on chip, for
// 128 < m <= 256, n <= 256 (X is m x n, m <= n). Geometry: ClusterGeometry in tiling.cuh.
//
// CTA r (r = cluster rank) owns rows [r h, (r + 1) h) of X, A and B, h = m_pad / 2. Three
// row-half buffers (h x ld, compute dtype T) rotate through the roles:
//   xb = X (my rows),  ab = A (my rows) then X' (my rows),  rb = peer's X copy then B.
// Per step (each product accumulates in fp32 in ascending k; each result is rounded once to
// T, exactly as the small kernel and the CPU twin do):
//   1. rb <- peer's X rows (distributed shared memory, 16-byte loads); then
//      A_mine = round(X_mine X^T): 32x32 warp tiles, the B operand rows come from xb or rb.
//      cluster.sync (both A halves complete)
//   2. B_mine = round(fmaf(c, A_mine A, b A_mine)) -> rb. K = m_pad: the k rows of A owned
//      by the peer are streamed as 32-row chunks into a local double-buffered staging area
//      (register prefetch of the next chunk while the current one is multiplied), then
//      ldmatrix'ed locally.  cluster.sync (peer has finished reading my A; B complete)
//   3. X'_mine = round(fmaf(a, X_mine, B_mine X)) -> ab (A is dead), same streaming of the
//      peer's X rows.  cluster.sync (X' complete; peer has finished reading my X)
//      swap(xb, ab).
// Zero padding (rows >= m, cols >= n) stays exactly zero through every step.
// Both CTAs compute the Frobenius norm over the whole input in the same order, so their
// denominators are bit-identical.
//
// The body is compiled only for __CUDA_ARCH__ >= 900; the sm_80 image is a trapping stub
// that api.cpp never launches (it checks for a compute capability 9.x device and for an
// sm_90a build first).
#ifndef NLCORE_CUDA_NEWTON_SCHULZ_CLUSTER_KERNEL_CUH_
#define NLCORE_CUDA_NEWTON_SCHULZ_CLUSTER_KERNEL_CUH_

#include <cooperative_groups.h>

#include "newton_schulz/small_kernel.cuh"  // warp_tile_32, device helpers

namespace nlcore::ns {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define NLCORE_NS_CLUSTER_DEVICE_CODE 1
#endif

#if defined(NLCORE_NS_CLUSTER_DEVICE_CODE)

// Copies rows [0, 32) x cols [0, width) of a staged peer chunk as 16-byte vectors:
// 32 x 128 / 8 = 512 vectors, two per thread. Vector v -> (row v / 16, col 8 (v % 16)).
constexpr int kClusterVecsPerThread = kClusterChunkK * kClusterPassN / 8 / kClusterThreads;

template <class T>
__device__ __forceinline__ void cluster_chunk_load(uint4 (&v)[kClusterVecsPerThread],
                                                   const T* peer_rows, int ld, int col0, int width,
                                                   int tid) {
#pragma unroll
  for (int q = 0; q < kClusterVecsPerThread; ++q) {
    const int idx = tid + q * kClusterThreads, r = idx / 16, c = (idx % 16) * 8;
    if (c < width) v[q] = *reinterpret_cast<const uint4*>(peer_rows + r * ld + col0 + c);
  }
}
template <class T>
__device__ __forceinline__ void cluster_chunk_store(const uint4 (&v)[kClusterVecsPerThread],
                                                    T* stage, int width, int tid) {
#pragma unroll
  for (int q = 0; q < kClusterVecsPerThread; ++q) {
    const int idx = tid + q * kClusterThreads, r = idx / 16, c = (idx % 16) * 8;
    if (c < width) *reinterpret_cast<uint4*>(stage + r * kClusterStageLd + c) = v[q];
  }
}

// out(i, c) = sum_{k < m_pad} aop[i][k] * Bop[k][c] for my rows i < h and cols c < W, in
// passes of 128 columns (8 warps as 4 x 2 tiles of 32 x 64). Rows k of Bop live in `bloc`
// (k in my half) or at the same offsets in the peer's buffer `bpeer` (distributed shared
// memory; staged). Then epi(row, col, acc(row, col), acc(row, col + 1)) for every even col.
template <class T, class Epi>
__device__ __forceinline__ void cluster_pass_gemm(const T* aop, const T* bloc, const T* bpeer,
                                                  T* stage, const ClusterGeometry& g, int rank,
                                                  int W, int tid, Epi&& epi) {
  const int lane = tid % 32, warp = tid / 32;
  const int wr = warp / 2, wc = warp % 2;
  const int h = g.half, ld = g.ld, chunks = g.m_pad / kClusterChunkK;
  const RowCol la = ldsm_a_x4(lane);
  const RowCol lb = ldsm_b_kn_x4_trans(lane);
  for (int c0 = 0; c0 < W; c0 += kClusterPassN) {
    const int width = W - c0 < kClusterPassN ? W - c0 : kClusterPassN;  // 64 or 128
    const int wcol = c0 + wc * 64;
    const bool active = wr * 32 < h && wcol < W;  // warp-uniform
    float acc[2][8][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    __syncthreads();  // the staging buffers are free (earlier pass or phase done with them)
    uint4 pre[kClusterVecsPerThread];
    if (rank != 0) {  // chunk 0 (rows 0..31) belongs to CTA 0, the peer: stage it first
      cluster_chunk_load<T>(pre, bpeer, ld, c0, width, tid);
      cluster_chunk_store<T>(pre, stage, width, tid);
    }
    __syncthreads();
    for (int kc = 0; kc < chunks; ++kc) {
      const int k0 = kc * kClusterChunkK;
      const int owner = k0 / h;  // h is a multiple of 32: a chunk never straddles the halves
      const bool next_remote = kc + 1 < chunks && ((k0 + kClusterChunkK) / h) != rank;
      if (next_remote)  // prefetch the next peer chunk into registers
        cluster_chunk_load<T>(pre, bpeer + ((k0 + kClusterChunkK) - (rank ^ 1) * h) * ld, ld, c0,
                              width, tid);
      if (active) {
        const T* src;
        int src_ld, src_col;
        if (owner == rank) {
          src = bloc + (k0 - rank * h) * ld;
          src_ld = ld;
          src_col = wcol;
        } else {
          src = stage + (kc & 1) * (kClusterChunkK * kClusterStageLd);
          src_ld = kClusterStageLd;
          src_col = wcol - c0;
        }
#pragma unroll
        for (int kk = 0; kk < kClusterChunkK; kk += 16) {
          uint32_t af[2][4], bf[4][4];
#pragma unroll
          for (int i = 0; i < 2; ++i)
            ldsm_x4(af[i], aop + (wr * 32 + 16 * i + la.r) * ld + k0 + kk + la.c);
#pragma unroll
          for (int j = 0; j < 4; ++j)
            ldsm_x4_trans(bf[j], src + (kk + lb.r) * src_ld + src_col + 16 * j + lb.c);
#pragma unroll
          for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j)
              Mma<T>::run(acc[i][j], af[i], bf[j / 2][(j % 2) * 2], bf[j / 2][(j % 2) * 2 + 1]);
        }
      }
      if (next_remote)  // stage[(kc + 1) & 1] was last read by chunk kc - 1: synced since
        cluster_chunk_store<T>(pre, stage + ((kc + 1) & 1) * (kClusterChunkK * kClusterStageLd),
                               width, tid);
      __syncthreads();
    }
    if (active) {
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const RowCol rc = mma_acc_pos(lane, 2 * hh);
            epi(wr * 32 + 16 * i + rc.r, wcol + 8 * j + rc.c, acc[i][j][2 * hh],
                acc[i][j][2 * hh + 1]);
          }
    }
  }
}

#endif  // NLCORE_NS_CLUSTER_DEVICE_CODE

template <class T, class IO>
__global__ void __launch_bounds__(kClusterThreads, 1)
    ns_cluster_kernel(const __grid_constant__ ClusterParams p) {
#if defined(NLCORE_NS_CLUSTER_DEVICE_CODE)
  namespace cg = cooperative_groups;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = static_cast<int>(cluster.block_rank());
  const unsigned peer = static_cast<unsigned>(rank ^ 1);
  const ClusterGeometry g = p.geo;
  const int h = g.half, ld = g.ld, row0 = rank * h;
  const size_t buf = cluster_buffer_elems(g);
  T* xb = reinterpret_cast<T*>(smem_raw);
  T* ab = xb + buf;
  T* rb = ab + buf;
  T* stage = rb + buf;
  float* red = reinterpret_cast<float*>(stage + cluster_stage_elems());

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t mat = blockIdx.x / 2;
  const int64_t numel = static_cast<int64_t>(p.rows) * p.cols;
  const IO* Gm = static_cast<const IO*>(p.G) + mat * numel;
  IO* Om = static_cast<IO*>(p.O) + mat * numel;

  // ---- 1. Frobenius norm over the whole matrix (both CTAs, same order) ----
  float ss = 0.0f;
  for (int64_t i = tid; i < numel; i += kClusterThreads) {
    const float v = to_f32(Gm[i]);
    ss = fmaf(v, v, ss);
  }
  const float denom = ns_denominator(block_sum(ss, red), p.norm_scale, p.eps, p.norm_additive);

  // ---- 2. my rows of X = round(G / denom) (transposed if rows > cols), zero-padded ----
  const int hn = h * g.n_pad;
  for (int idx = tid; idx < hn; idx += kClusterThreads) {
    int il, j;
    if (p.transposed) {  // X(i, j) = G(j, i): i fastest walks a row of G
      j = idx / h;
      il = idx - j * h;
    } else {
      il = idx / g.n_pad;
      j = idx - il * g.n_pad;
    }
    const int i = row0 + il;
    float v = 0.0f;
    if (i < g.m && j < g.n) v = to_f32(p.transposed ? Gm[j * p.cols + i] : Gm[i * p.cols + j]) / denom;
    xb[il * ld + j] = from_f32<T>(v);
  }
  cluster.sync();  // both halves of X ready; also: the peer CTA is running before any DSMEM access

  const int tiles_j = g.m_pad / 32, tiles_a = (h / 32) * tiles_j, vec_per_row = g.n_pad / 8;
  int run = 0, left = p.coefs.run_len[0];
  for (int s = 0; s < p.steps; ++s) {
    if (left == 0) {
      ++run;
      left = p.coefs.run_len[run];
    }
    --left;
    const float ca = p.coefs.a[run], cb = p.coefs.b[run], cc = p.coefs.c[run];

    // ---- phase 1: rb <- peer's X; A_mine = round(X_mine X^T) -> ab ----
    {
      const T* xpeer = cluster.map_shared_rank(xb, peer);
      for (int v = tid; v < h * vec_per_row; v += kClusterThreads) {
        const int r = v / vec_per_row, c = (v - r * vec_per_row) * 8;
        *reinterpret_cast<uint4*>(rb + r * ld + c) = *reinterpret_cast<const uint4*>(xpeer + r * ld + c);
      }
      __syncthreads();
      for (int t = warp; t < tiles_a; t += kClusterThreads / 32) {
        const int ti = t / tiles_j, tj = t - ti * tiles_j;
        const int owner = (tj * 32) / h;
        const T* bop = owner == rank ? xb : rb;
        float acc[2][4][4];
        warp_tile_32<T, 2, false>(acc, xb, ld, ti * 32, bop, ld, tj * 32 - owner * h, g.n_pad, lane);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
              const RowCol rc = mma_acc_pos(lane, 2 * hh);
              *reinterpret_cast<uint32_t*>(ab + (ti * 32 + 16 * i + rc.r) * ld + tj * 32 + 8 * j + rc.c) =
                  pack2<T>(acc[i][j][2 * hh], acc[i][j][2 * hh + 1]);
            }
      }
    }
    cluster.sync();

    // ---- phase 2: B_mine = round(b A_mine + c A_mine A) -> rb ----
    cluster_pass_gemm<T>(ab, ab, cluster.map_shared_rank(ab, peer), stage, g, rank, g.m_pad, tid,
                         [&](int row, int col, float v0, float v1) {
                           const T* pa = ab + row * ld + col;
                           *reinterpret_cast<uint32_t*>(rb + row * ld + col) = pack2<T>(
                               fmaf(cc, v0, cb * to_f32(pa[0])), fmaf(cc, v1, cb * to_f32(pa[1])));
                         });
    cluster.sync();

    // ---- phase 3: X'_mine = round(a X_mine + B_mine X) -> ab ----
    cluster_pass_gemm<T>(rb, xb, cluster.map_shared_rank(xb, peer), stage, g, rank, g.n_pad, tid,
                         [&](int row, int col, float v0, float v1) {
                           const T* px = xb + row * ld + col;
                           *reinterpret_cast<uint32_t*>(ab + row * ld + col) = pack2<T>(
                               fmaf(ca, to_f32(px[0]), v0), fmaf(ca, to_f32(px[1]), v1));
                         });
    cluster.sync();
    T* tmp = xb;
    xb = ab;
    ab = tmp;
  }

  // ---- 3. O = my rows of X (transposed back), in the io dtype; local reads only ----
  const int mine = g.m - row0 < h ? g.m - row0 : h;  // >= 1 since m > 128 >= h
  const int64_t count = static_cast<int64_t>(mine) * g.n;
  for (int64_t idx = tid; idx < count; idx += kClusterThreads) {
    if (p.transposed) {  // O is n x m: O(r, row0 + c) = X(c, r), c fastest
      const int r = static_cast<int>(idx / mine), c = static_cast<int>(idx - static_cast<int64_t>(r) * mine);
      Om[static_cast<int64_t>(r) * p.cols + row0 + c] = from_f32<IO>(to_f32(xb[c * ld + r]));
    } else {  // O rows [row0, row0 + mine) are contiguous
      const int r = static_cast<int>(idx / g.n), c = static_cast<int>(idx - static_cast<int64_t>(r) * g.n);
      Om[static_cast<int64_t>(row0 + r) * p.cols + c] = from_f32<IO>(to_f32(xb[r * ld + c]));
    }
  }
#else
  __trap();  // sm_80 image: never launched (api.cpp requires a compute capability 9.x device)
#endif
}

template <class T, class IO>
nlcore_status_t launch_cluster(const ClusterParams& p, int64_t batch, size_t smem_bytes,
                               cudaStream_t stream) {
  auto kernel = ns_cluster_kernel<T, IO>;
  nlcore_status_t st = cuda_status(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem_bytes)),
      "cudaFuncSetAttribute(MaxDynamicSharedMemorySize) of the cluster kernel");
  if (st != NLCORE_STATUS_SUCCESS) return st;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = 2;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(2 * batch), 1, 1);
  cfg.blockDim = dim3(kClusterThreads, 1, 1);
  cfg.dynamicSmemBytes = smem_bytes;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  st = cuda_status(cudaLaunchKernelEx(&cfg, kernel, p), "launch of the cluster Newton-Schulz kernel");
  if (st != NLCORE_STATUS_SUCCESS) return st;
  return launch_status("launch of the cluster Newton-Schulz kernel");
}

}  // namespace nlcore::ns

#endif  // NLCORE_CUDA_NEWTON_SCHULZ_CLUSTER_KERNEL_CUH_
