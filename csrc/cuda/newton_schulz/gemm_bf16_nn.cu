// General-path GEMM instantiation: bf16 compute, B operand row-major.
#include "newton_schulz/gemm.cuh"

namespace nlcore::ns {
nlcore_status_t gemm_bf16_nn(const GemmArgs& g, cudaStream_t stream) {
  return run_gemm<cutlass::bfloat16_t, false>(g, stream);
}
}  // namespace nlcore::ns
