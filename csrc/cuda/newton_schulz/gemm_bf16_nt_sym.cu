// Symmetric-form GEMM instantiation (upper-triangle tiles only): bf16 compute, B operand
// column-major: A = X X^T, and A A = A A^T (A is exactly symmetric once mirrored).
#include "newton_schulz/gemm.cuh"

namespace nlcore::ns {
nlcore_status_t gemm_bf16_nt_sym(const GemmArgs& g, cudaStream_t stream) {
  return run_gemm<cutlass::bfloat16_t, true, UpperTriangleSwizzle>(g, stream);
}
}  // namespace nlcore::ns
