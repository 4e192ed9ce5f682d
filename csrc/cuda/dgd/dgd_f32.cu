// DGD forward/backward drivers for inputs of dtype float (see kernels.cuh).
#include "dgd/kernels.cuh"

namespace nlcore::dgd {

nlcore_status_t forward_f32(const Params& p, cudaStream_t stream) {
  return run_forward<float>(p, stream);
}
nlcore_status_t backward_f32(const Params& p, cudaStream_t stream) {
  return run_backward<float>(p, stream);
}

}  // namespace nlcore::dgd
