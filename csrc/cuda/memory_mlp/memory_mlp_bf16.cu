// MLP scan GEMM launcher for inputs of dtype __nv_bfloat16 (see device.cuh).
#include "memory_mlp/device.cuh"

namespace nlcore::memory_mlp {

nlcore_status_t gemm_bf16(const Params& p, const Gemm& g, cudaStream_t stream) {
  return launch_gemm<__nv_bfloat16>(p, g, stream);
}

}  // namespace nlcore::memory_mlp
