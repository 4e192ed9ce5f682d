// DGD forward/backward drivers for inputs of dtype __half (see kernels.cuh).
#include "dgd/kernels.cuh"

namespace nlcore::dgd {

nlcore_status_t forward_f16(const Params& p, cudaStream_t stream) {
  return run_forward<__half>(p, stream);
}
nlcore_status_t backward_f16(const Params& p, cudaStream_t stream) {
  return run_backward<__half>(p, stream);
}

}  // namespace nlcore::dgd
