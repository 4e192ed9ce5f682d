// MLP scan GEMM launcher for inputs of dtype float (see device.cuh).
#include "memory_mlp/device.cuh"

namespace nlcore::memory_mlp {

nlcore_status_t gemm_f32(const Params& p, const Gemm& g, cudaStream_t stream) {
  return launch_gemm<float>(p, g, stream);
}

}  // namespace nlcore::memory_mlp
