// Which MLP-scan dtypes this build instantiates. Dims and flags are runtime values in every
// kernel, so a built dtype takes every D in {32, 64, 128} and F in {D, 2D, 4D}.
//   NLCORE_KERNEL_SET_CI defined ("ci"): BFLOAT16 only.
//   otherwise ("full"):                  FLOAT32, BFLOAT16, FLOAT16.
#ifndef NLCORE_CUDA_MEMORY_MLP_KERNEL_SET_H_
#define NLCORE_CUDA_MEMORY_MLP_KERNEL_SET_H_

#include "nlcore/status.h"

namespace nlcore::memory_mlp {

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

}  // namespace nlcore::memory_mlp

#endif  // NLCORE_CUDA_MEMORY_MLP_KERNEL_SET_H_
