// Self-modifying memories: the token kernels for inputs of dtype __half (device.cuh), paired
// with the MLP scan's GEMM launcher of the same dtype.
#include "self_modifying/device.cuh"

namespace nlcore::self_modifying {

TokenKernels kernels_f16() { return token_kernels<__half>(&memory_mlp::gemm_f16); }

}  // namespace nlcore::self_modifying
