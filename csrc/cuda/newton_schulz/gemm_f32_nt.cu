// General-path GEMM instantiation: f32 compute, B operand column-major (X^T).
#include "newton_schulz/gemm.cuh"

namespace nlcore::ns {
nlcore_status_t gemm_f32_nt(const GemmArgs& g, cudaStream_t stream) {
  return run_gemm<float, true>(g, stream);
}
}  // namespace nlcore::ns
