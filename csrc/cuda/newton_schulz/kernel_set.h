// Which (compute dtype, io dtype) combinations this build instantiates.
//   NLCORE_KERNEL_SET_CI defined ("ci"): small and cluster kernels bf16 compute x io
//                                        {fp32, bf16}; general path bf16 and fp32 compute,
//                                        every io dtype; symmetric GEMMs bf16 compute.
//   otherwise ("full"):                  small and cluster kernels {bf16, fp16} x every io
//                                        dtype; general path {bf16, fp16, fp32} x every io
//                                        dtype; symmetric GEMMs bf16 and fp16 compute.
#ifndef NLCORE_CUDA_NEWTON_SCHULZ_KERNEL_SET_H_
#define NLCORE_CUDA_NEWTON_SCHULZ_KERNEL_SET_H_

#include "nlcore/status.h"

namespace nlcore::ns {

#if defined(NLCORE_KERNEL_SET_CI)
constexpr const char* kKernelSetName = "ci";
#else
constexpr const char* kKernelSetName = "full";
#endif

constexpr bool io_dtype_ok(int d) {
  return d == NLCORE_DTYPE_FLOAT32 || d == NLCORE_DTYPE_BFLOAT16 || d == NLCORE_DTYPE_FLOAT16;
}

constexpr bool small_built(int compute, int io) {
#if defined(NLCORE_KERNEL_SET_CI)
  return compute == NLCORE_DTYPE_BFLOAT16 && (io == NLCORE_DTYPE_FLOAT32 || io == NLCORE_DTYPE_BFLOAT16);
#else
  return (compute == NLCORE_DTYPE_BFLOAT16 || compute == NLCORE_DTYPE_FLOAT16) && io_dtype_ok(io);
#endif
}

// The cluster kernel is instantiated for exactly the small kernel's combinations.
constexpr bool cluster_built(int compute, int io) { return small_built(compute, io); }

// Upper-triangle (NLCORE_NS_FLAG_SYMMETRIC) GEMMs of the general path; io dtypes as general.
constexpr bool general_upper_built(int compute) {
#if defined(NLCORE_KERNEL_SET_CI)
  return compute == NLCORE_DTYPE_BFLOAT16;
#else
  return compute == NLCORE_DTYPE_BFLOAT16 || compute == NLCORE_DTYPE_FLOAT16;
#endif
}

constexpr bool general_built(int compute, int io) {
#if defined(NLCORE_KERNEL_SET_CI)
  return (compute == NLCORE_DTYPE_BFLOAT16 || compute == NLCORE_DTYPE_FLOAT32) && io_dtype_ok(io);
#else
  return io_dtype_ok(compute) && io_dtype_ok(io);
#endif
}

}  // namespace nlcore::ns

#endif  // NLCORE_CUDA_NEWTON_SCHULZ_KERNEL_SET_H_
