// General-path GEMM instantiation: f16 compute, B operand row-major.
#include "newton_schulz/gemm.cuh"

namespace nlcore::ns {
#if !defined(NLCORE_KERNEL_SET_CI)
nlcore_status_t gemm_f16_nn(const GemmArgs& g, cudaStream_t stream) {
  return run_gemm<cutlass::half_t, false>(g, stream);
}
#endif
}  // namespace nlcore::ns
