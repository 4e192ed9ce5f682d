// General-path GEMM instantiation: bf16 compute, B operand column-major (X^T).
#include "newton_schulz/gemm.cuh"

namespace nlcore::ns {
nlcore_status_t gemm_bf16_nt(const GemmArgs& g, cudaStream_t stream) {
  return run_gemm<cutlass::bfloat16_t, true>(g, stream);
}
}  // namespace nlcore::ns
