// General-path GEMM instantiation: f32 compute, B operand row-major.
#include "newton_schulz/gemm.cuh"

namespace nlcore::ns {
nlcore_status_t gemm_f32_nn(const GemmArgs& g, cudaStream_t stream) {
  return run_gemm<float, false>(g, stream);
}
}  // namespace nlcore::ns
