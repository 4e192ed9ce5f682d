// Persistent MLP-scan forward (sm_90, experimental) for inputs of dtype __half: the six slice
// instantiations of persistent.cuh behind one dispatcher.
#include "memory_mlp/persistent.cuh"

namespace nlcore::memory_mlp {

nlcore_status_t persist_f16(const Params* p, const PersistLaunch& pl, int* max_clusters,
                            cudaStream_t stream) {
  return persist::persist_dispatch<__half>(p, pl, max_clusters, stream);
}

}  // namespace nlcore::memory_mlp
