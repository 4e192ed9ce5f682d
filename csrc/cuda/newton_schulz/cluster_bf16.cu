// 2-CTA cluster Newton–Schulz kernel (sm_90a), bf16 compute (one instantiation per io dtype).
#include "newton_schulz/cluster_kernel.cuh"

namespace nlcore::ns {
nlcore_status_t cluster_bf16_f32(const ClusterParams& p, int64_t batch, size_t smem, cudaStream_t s) {
  return launch_cluster<__nv_bfloat16, float>(p, batch, smem, s);
}
nlcore_status_t cluster_bf16_bf16(const ClusterParams& p, int64_t batch, size_t smem, cudaStream_t s) {
  return launch_cluster<__nv_bfloat16, __nv_bfloat16>(p, batch, smem, s);
}
#if !defined(NLCORE_KERNEL_SET_CI)
nlcore_status_t cluster_bf16_f16(const ClusterParams& p, int64_t batch, size_t smem, cudaStream_t s) {
  return launch_cluster<__nv_bfloat16, __half>(p, batch, smem, s);
}
#endif
}  // namespace nlcore::ns
