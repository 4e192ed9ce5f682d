// DGD forward/backward drivers for inputs of dtype __nv_bfloat16 (see kernels.cuh).
#include "dgd/kernels.cuh"

namespace nlcore::dgd {

nlcore_status_t forward_bf16(const Params& p, cudaStream_t stream) {
  return run_forward<__nv_bfloat16>(p, stream);
}
nlcore_status_t backward_bf16(const Params& p, cudaStream_t stream) {
  return run_backward<__nv_bfloat16>(p, stream);
}

}  // namespace nlcore::dgd
