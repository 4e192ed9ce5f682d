// Symmetric-form GEMM instantiation (upper-triangle tiles only): f16 compute, B operand
// column-major: A = X X^T, and A A = A A^T (A is exactly symmetric once mirrored).
#include "newton_schulz/gemm.cuh"

namespace nlcore::ns {
#if !defined(NLCORE_KERNEL_SET_CI)
nlcore_status_t gemm_f16_nt_sym(const GemmArgs& g, cudaStream_t stream) {
  return run_gemm<cutlass::half_t, true, UpperTriangleSwizzle>(g, stream);
}
#endif
}  // namespace nlcore::ns
