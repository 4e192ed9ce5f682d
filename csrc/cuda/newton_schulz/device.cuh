// Device helpers: dtype conversion, ldmatrix, mma.sync m16n8k16 (inline PTX, sm_80+),
// block reductions, and the CUDA-error -> nlcore status mapping used by every launcher.
#ifndef NLCORE_CUDA_NEWTON_SCHULZ_DEVICE_CUH_
#define NLCORE_CUDA_NEWTON_SCHULZ_DEVICE_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "common/error.h"
#include "common/mma.cuh"
#include "nlcore/status.h"

namespace nlcore::ns {

// ---- conversions and mma.sync (common/mma.cuh) --------------------------------------------
using common::from_f32;
using common::Mma;
using common::pack2;
using common::to_f32;

// ---- tensor-core primitives --------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
}

// ---- reductions --------------------------------------------------------------------------
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the total.
// `scratch` holds >= 33 floats of shared memory. Fixed order: deterministic.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float t = lane < nw ? scratch[lane] : 0.0f;
    t = warp_sum(t);
    if (lane == 0) scratch[32] = t;
  }
  __syncthreads();
  const float total = scratch[32];
  __syncthreads();  // scratch may be reused right after
  return total;
}

// Normalization denominator of the precision contract (fp32).
__device__ __forceinline__ float ns_denominator(float sumsq, float norm_scale, float eps,
                                                int additive) {
  const float scaled = sqrtf(sumsq) * norm_scale;
  return additive ? scaled + eps : fmaxf(scaled, eps);
}

// ---- host: status of a launch --------------------------------------------------------------
inline nlcore_status_t launch_status(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    return detail::fail(NLCORE_STATUS_CUDA_ERROR, "newton_schulz: %s failed: %s (%s)", what,
                        cudaGetErrorString(e), cudaGetErrorName(e));
  return NLCORE_STATUS_SUCCESS;
}
inline nlcore_status_t cuda_status(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // clear the (non-sticky) error this call recorded
    return detail::fail(NLCORE_STATUS_CUDA_ERROR, "newton_schulz: %s failed: %s (%s)", what,
                        cudaGetErrorString(e), cudaGetErrorName(e));
  }
  return NLCORE_STATUS_SUCCESS;
}

}  // namespace nlcore::ns

#endif  // NLCORE_CUDA_NEWTON_SCHULZ_DEVICE_CUH_
