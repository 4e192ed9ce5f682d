// Which DGD dtypes this build instantiates. Head dims are runtime values in every kernel, so a
// built dtype takes every head dim K, V in {32, 64, 128, 256}.
//   NLCORE_KERNEL_SET_CI defined ("ci"): BFLOAT16 only.
//   otherwise ("full"):                  FLOAT32, BFLOAT16, FLOAT16.
#ifndef NLCORE_CUDA_DGD_KERNEL_SET_H_
#define NLCORE_CUDA_DGD_KERNEL_SET_H_

#include "nlcore/status.h"

namespace nlcore::dgd {

#if defined(NLCORE_KERNEL_SET_CI)
constexpr const char* kKernelSetName = "ci";
#else
constexpr const char* kKernelSetName = "full";
#endif

constexpr bool dtype_built(int d) {
#if defined(NLCORE_KERNEL_SET_CI)
  return d == NLCORE_DTYPE_BFLOAT16;
#else
  return d == NLCORE_DTYPE_FLOAT32 || d == NLCORE_DTYPE_BFLOAT16 || d == NLCORE_DTYPE_FLOAT16;
#endif
}

}  // namespace nlcore::dgd

#endif  // NLCORE_CUDA_DGD_KERNEL_SET_H_
