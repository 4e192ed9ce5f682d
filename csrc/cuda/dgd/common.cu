// DGD: dtype-independent kernels — the device-built chunk table and the zeroing of output rows
// that no sequence covers — and the CUDA-error -> status helpers.
#include <cuda_runtime.h>
#include <stdint.h>

#include "common/error.h"
#include "dgd/launchers.h"
#include "dgd/tiling.h"

namespace nlcore::dgd {
namespace {

__device__ __forceinline__ int64_t cu_at(const void* cu, int is64, int64_t i) {
  return is64 ? static_cast<const int64_t*>(cu)[i]
              : static_cast<int64_t>(static_cast<const int32_t*>(cu)[i]);
}

// One CTA of kTableThreads. Sequence n covers rows [start_n, end_n) (clamped to [0, B*T));
// its chunks get consecutive slots from an exclusive scan of the chunk counts; slots past the
// total (the host bound is an upper bound) get seq = -1 so that their CTAs exit.
__global__ void __launch_bounds__(kTableThreads) chunk_table_kernel(const Params p) {
  __shared__ int64_t scan[kTableThreads];
  __shared__ int64_t carry_s;
  const int tid = threadIdx.x;
  const int64_t C = kChunk;
  const int64_t rows = p.B * p.T;
  if (tid == 0) carry_s = 0;
  __syncthreads();
  for (int64_t base = 0; base < p.N; base += kTableThreads) {
    const int64_t n = base + tid;
    int64_t start = 0, len = 0, nc = 0;
    if (n < p.N) {
      int64_t s, e;
      if (p.cu != nullptr) {
        s = cu_at(p.cu, p.cu_is64, n);
        e = cu_at(p.cu, p.cu_is64, n + 1);
      } else {
        s = n * p.T;
        e = s + p.T;
      }
      s = s < 0 ? 0 : (s > rows ? rows : s);
      e = e < s ? s : (e > rows ? rows : e);
      start = s;
      len = e - s;
      nc = chunks_of_len(len, C);
    }
    scan[tid] = nc;
    __syncthreads();
    for (int off = 1; off < kTableThreads; off <<= 1) {  // inclusive Hillis–Steele scan
      const int64_t add = tid >= off ? scan[tid - off] : 0;
      __syncthreads();
      scan[tid] += add;
      __syncthreads();
    }
    const int64_t carry = carry_s;
    const int64_t first = carry + scan[tid] - nc;
    if (n < p.N) {
      int64_t room = p.nc_bound - first;
      room = room < 0 ? 0 : room;
      const int64_t ncw = nc < room ? nc : room;
      p.seqs[n * kSeqEntry + 0] = first < p.nc_bound ? first : p.nc_bound;
      p.seqs[n * kSeqEntry + 1] = ncw;
      for (int64_t c = 0; c < ncw; ++c) {
        int64_t* e = p.chunks + (first + c) * kChunkEntry;
        const int64_t r0 = start + c * C;
        const int64_t rest = len - c * C;
        e[0] = n;
        e[1] = r0;
        e[2] = rest < C ? rest : C;
        e[3] = c;
      }
    }
    __syncthreads();
    if (tid == kTableThreads - 1) carry_s = carry + scan[tid];
    __syncthreads();
  }
  int64_t total = carry_s;
  total = total > p.nc_bound ? p.nc_bound : total;
  for (int64_t c = total + tid; c < p.nc_bound; c += kTableThreads) {
    int64_t* e = p.chunks + c * kChunkEntry;
    e[0] = -1;
    e[1] = 0;
    e[2] = 0;
    e[3] = 0;
  }
  if (tid == 0) {
    p.meta[0] = total;
    if (p.cu != nullptr) {
      int64_t lo = cu_at(p.cu, p.cu_is64, 0), hi = cu_at(p.cu, p.cu_is64, p.N);
      lo = lo < 0 ? 0 : (lo > rows ? rows : lo);
      hi = hi < lo ? lo : (hi > rows ? rows : hi);
      p.meta[1] = lo;
      p.meta[2] = hi;
    } else {
      p.meta[1] = 0;
      p.meta[2] = rows;
    }
    p.meta[3] = 0;
  }
}

// Zero rows [0, lo) and [hi, B*T) of each listed output (bytes per row given).
__global__ void zero_uncovered_kernel(const int64_t* meta, int64_t rows, ZeroRows z) {
  const int64_t lo = meta[1], hi = meta[2];
  const int64_t out_rows = lo + (rows - hi);
  for (int i = 0; i < z.count; ++i) {
    const int64_t rb = z.row_bytes[i];
    unsigned char* base = static_cast<unsigned char*>(z.ptr[i]);
    const int64_t n = out_rows * rb;
    for (int64_t x = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; x < n;
         x += int64_t(gridDim.x) * blockDim.x) {
      const int64_t r = x / rb, b = x % rb;
      const int64_t row = r < lo ? r : hi + (r - lo);
      base[row * rb + b] = 0;
    }
  }
}

}  // namespace

nlcore_status_t launch_status(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    return detail::fail(NLCORE_STATUS_CUDA_ERROR, "dgd: %s failed: %s (%s)", what,
                        cudaGetErrorString(e), cudaGetErrorName(e));
  return NLCORE_STATUS_SUCCESS;
}

nlcore_status_t cuda_status(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return detail::fail(NLCORE_STATUS_CUDA_ERROR, "dgd: %s failed: %s (%s)", what,
                        cudaGetErrorString(e), cudaGetErrorName(e));
  }
  return NLCORE_STATUS_SUCCESS;
}

nlcore_status_t launch_chunk_table(const Params& p, cudaStream_t stream) {
  chunk_table_kernel<<<1, kTableThreads, 0, stream>>>(p);
  return launch_status("chunk_table_kernel launch");
}

nlcore_status_t launch_zero_uncovered(const Params& p, const ZeroRows& z, cudaStream_t stream) {
  if (p.cu == nullptr || z.count == 0) return NLCORE_STATUS_SUCCESS;
  zero_uncovered_kernel<<<32, 256, 0, stream>>>(p.meta, p.B * p.T, z);
  return launch_status("zero_uncovered_kernel launch");
}

}  // namespace nlcore::dgd
