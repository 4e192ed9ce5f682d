// Self-modifying memories: the token kernels for inputs of dtype float (device.cuh), paired
// with the MLP scan's GEMM launcher of the same dtype.
#include "self_modifying/device.cuh"

namespace nlcore::self_modifying {

TokenKernels kernels_f32() { return token_kernels<float>(&memory_mlp::gemm_f32); }

}  // namespace nlcore::self_modifying
