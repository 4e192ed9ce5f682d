// Self-modifying memories: the token kernels for inputs of dtype __nv_bfloat16 (device.cuh), paired
// with the MLP scan's GEMM launcher of the same dtype.
#include "self_modifying/device.cuh"

namespace nlcore::self_modifying {

TokenKernels kernels_bf16() { return token_kernels<__nv_bfloat16>(&memory_mlp::gemm_bf16); }

}  // namespace nlcore::self_modifying
