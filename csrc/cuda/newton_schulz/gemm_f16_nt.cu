// General-path GEMM instantiation: f16 compute, B operand column-major (X^T).
#include "newton_schulz/gemm.cuh"

namespace nlcore::ns {
#if !defined(NLCORE_KERNEL_SET_CI)
nlcore_status_t gemm_f16_nt(const GemmArgs& g, cudaStream_t stream) {
  return run_gemm<cutlass::half_t, true>(g, stream);
}
#endif
}  // namespace nlcore::ns
