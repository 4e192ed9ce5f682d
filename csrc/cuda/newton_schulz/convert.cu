// General path, element-wise stages: per-matrix partial sums of squares (the norm), the
// normalize + convert + transpose into the padded workspace, the convert + transpose
// back into O, and (symmetric form) the upper -> lower triangle mirror. Cheap kernels:
// every io x compute dtype combination of the kernel set.
#include <algorithm>

#include "newton_schulz/device.cuh"
#include "newton_schulz/kernel_set.h"
#include "newton_schulz/launchers.h"

namespace nlcore::ns {
namespace {

constexpr int kReduceThreads = 256;
constexpr int kTile = 32;
constexpr int kTileRowsPerPass = 8;  // block = 32 x 8 threads
constexpr int64_t kMaxGrid = 65535LL * 16;

// partials[mat * chunks + chunk] = sum of squares over that chunk of G_mat (fp32).
template <class IO>
__global__ void __launch_bounds__(kReduceThreads)
    norm_partials_kernel(const IO* __restrict__ G, int64_t batch, int64_t numel, int chunks,
                         float* __restrict__ partials) {
  __shared__ float scratch[33];
  const int64_t per = (numel + chunks - 1) / chunks;
  for (int64_t blk = blockIdx.x; blk < batch * chunks; blk += gridDim.x) {
    const int64_t mat = blk / chunks, chunk = blk - mat * chunks;
    const int64_t lo = chunk * per, hi = min(numel, lo + per);
    const IO* g = G + mat * numel;
    float ss = 0.0f;
    for (int64_t i = lo + threadIdx.x; i < hi; i += kReduceThreads) {
      const float v = to_f32(g[i]);
      ss = fmaf(v, v, ss);
    }
    const float total = block_sum(ss, scratch);
    if (threadIdx.x == 0) partials[blk] = total;
  }
}

// dst(i, j) for i < dst_rows, j < dst_cols of every matrix: src(i, j) (or src(j, i) when
// transposed) inside the valid region, 0 outside; divided by the matrix's denominator when
// kNormalize. 32x32 tiles through shared memory keep both sides coalesced.
template <class Src, class Dst, bool kNormalize>
__global__ void __launch_bounds__(kTile * kTileRowsPerPass) convert_kernel(const ConvertArgs a) {
  __shared__ float tile[kTile][kTile + 1];
  const Src* src = static_cast<const Src*>(a.src);
  Dst* dst = static_cast<Dst*>(a.dst);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t tiles_i = (a.dst_rows + kTile - 1) / kTile, tiles_j = (a.dst_cols + kTile - 1) / kTile;
  const int64_t per_mat = tiles_i * tiles_j, total = per_mat * a.batch;
  for (int64_t t = blockIdx.x; t < total; t += gridDim.x) {
    const int64_t mat = t / per_mat, rem = t - mat * per_mat;
    const int64_t i0 = (rem / tiles_j) * kTile, j0 = (rem % tiles_j) * kTile;
    const Src* s = src + mat * a.src_stride;
    Dst* d = dst + mat * a.dst_stride;
    if (!a.transposed) {
      for (int r = ty; r < kTile; r += kTileRowsPerPass) {
        const int64_t i = i0 + r, j = j0 + tx;
        tile[r][tx] = (i < a.valid_rows && j < a.valid_cols) ? to_f32(s[i * a.src_ld + j]) : 0.0f;
      }
    } else {  // dst(i, j) = src(j, i): read src row j0 + r along i (coalesced)
      for (int r = ty; r < kTile; r += kTileRowsPerPass) {
        const int64_t j = j0 + r, i = i0 + tx;
        tile[tx][r] = (i < a.valid_rows && j < a.valid_cols) ? to_f32(s[j * a.src_ld + i]) : 0.0f;
      }
    }
    float denom = 1.0f;
    if (kNormalize) {
      float ss = 0.0f;  // same fixed order in every thread of every tile of this matrix
      for (int c = 0; c < a.chunks; ++c) ss += a.partials[mat * a.chunks + c];
      denom = ns_denominator(ss, a.norm_scale, a.eps, a.norm_additive);
    }
    __syncthreads();
    for (int r = ty; r < kTile; r += kTileRowsPerPass) {
      const int64_t i = i0 + r, j = j0 + tx;
      if (i < a.dst_rows && j < a.dst_cols) {
        float v = tile[r][tx];
        if (kNormalize) v = (i < a.valid_rows && j < a.valid_cols) ? v / denom : 0.0f;
        d[i * a.dst_ld + j] = from_f32<Dst>(v);
      }
    }
    __syncthreads();
  }
}

template <class Src, class Dst, bool kNormalize>
nlcore_status_t launch_convert(const ConvertArgs& a, cudaStream_t stream, const char* what) {
  const int64_t tiles = ((a.dst_rows + kTile - 1) / kTile) * ((a.dst_cols + kTile - 1) / kTile) * a.batch;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(tiles, 1), kMaxGrid));
  convert_kernel<Src, Dst, kNormalize><<<grid, dim3(kTile, kTileRowsPerPass), 0, stream>>>(a);
  return launch_status(what);
}

// M(i, j) = M(j, i) for every i > j of each n x n matrix (16-bit elements, bit-exact copy).
// One 32x32 upper tile (ti <= tj) per iteration: read it row-wise, write its transpose into
// tile (tj, ti) row-wise; on a diagonal tile only the elements below the diagonal are written
// (the ones read are above it, so reads and writes never touch the same element).
__global__ void __launch_bounds__(kTile * kTileRowsPerPass)
    mirror_upper_kernel(uint16_t* __restrict__ M, int64_t n, int64_t ld, int64_t stride,
                        int64_t batch) {
  __shared__ uint32_t tile[kTile][kTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t t = (n + kTile - 1) / kTile, per_mat = upper_tile_count(t), total = per_mat * batch;
  for (int64_t it = blockIdx.x; it < total; it += gridDim.x) {
    const int64_t mat = it / per_mat;
    int ti, tj;
    upper_tile_coords(it - mat * per_mat, t, &ti, &tj);
    uint16_t* m = M + mat * stride;
    const int64_t r0 = static_cast<int64_t>(ti) * kTile, c0 = static_cast<int64_t>(tj) * kTile;
    for (int r = ty; r < kTile; r += kTileRowsPerPass) {
      const int64_t i = r0 + r, j = c0 + tx;
      tile[r][tx] = (i < n && j < n) ? m[i * ld + j] : 0u;
    }
    __syncthreads();
    for (int r = ty; r < kTile; r += kTileRowsPerPass) {
      const int64_t i = c0 + r, j = r0 + tx;  // destination (i, j) = source (j, i)
      if (i < n && j < n && (ti != tj || r > tx)) m[i * ld + j] = static_cast<uint16_t>(tile[tx][r]);
    }
    __syncthreads();
  }
}

// dtype code -> type dispatch
template <class F>
nlcore_status_t dispatch_dtype(int d, F&& f) {
  switch (d) {
    case NLCORE_DTYPE_FLOAT32: return f(float{});
    case NLCORE_DTYPE_BFLOAT16: return f(__nv_bfloat16{});
    case NLCORE_DTYPE_FLOAT16: return f(__half{});
  }
  return detail::fail(NLCORE_STATUS_INTERNAL_ERROR, "newton_schulz: bad dtype code %d", d);
}

}  // namespace

nlcore_status_t launch_norm_partials(int io_dtype, const void* G, int64_t batch, int64_t numel,
                                     int chunks, float* partials, cudaStream_t stream) {
  return dispatch_dtype(io_dtype, [&](auto io) {
    using IO = decltype(io);
    const int64_t blocks = std::min<int64_t>(batch * chunks, kMaxGrid);
    norm_partials_kernel<IO><<<static_cast<unsigned>(blocks), kReduceThreads, 0, stream>>>(
        static_cast<const IO*>(G), batch, numel, chunks, partials);
    return launch_status("launch of the norm kernel");
  });
}

nlcore_status_t launch_mirror_upper(int compute_dtype, void* M, int64_t n, int64_t ld,
                                    int64_t stride, int64_t batch, cudaStream_t stream) {
  if (compute_dtype != NLCORE_DTYPE_BFLOAT16 && compute_dtype != NLCORE_DTYPE_FLOAT16)
    return detail::fail(NLCORE_STATUS_INTERNAL_ERROR,
                        "newton_schulz: triangle mirror supports 16-bit dtypes only (got %d)",
                        compute_dtype);
  const int64_t tiles = upper_tile_count((n + kTile - 1) / kTile) * batch;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(tiles, 1), kMaxGrid));
  mirror_upper_kernel<<<grid, dim3(kTile, kTileRowsPerPass), 0, stream>>>(static_cast<uint16_t*>(M),
                                                                          n, ld, stride, batch);
  return launch_status("launch of the triangle mirror kernel");
}

nlcore_status_t launch_to_work(int io_dtype, int compute_dtype, const ConvertArgs& a,
                               cudaStream_t stream) {
  return dispatch_dtype(io_dtype, [&](auto io) {
    return dispatch_dtype(compute_dtype, [&](auto ct) {
      return launch_convert<decltype(io), decltype(ct), true>(a, stream,
                                                              "launch of the normalize kernel");
    });
  });
}

nlcore_status_t launch_from_work(int compute_dtype, int io_dtype, const ConvertArgs& a,
                                 cudaStream_t stream) {
  return dispatch_dtype(compute_dtype, [&](auto ct) {
    return dispatch_dtype(io_dtype, [&](auto io) {
      return launch_convert<decltype(ct), decltype(io), false>(a, stream,
                                                               "launch of the output kernel");
    });
  });
}

}  // namespace nlcore::ns
