// 2-CTA cluster Newton–Schulz kernel (sm_90a), fp16 compute (full kernel set only).
#include "newton_schulz/cluster_kernel.cuh"

namespace nlcore::ns {
#if !defined(NLCORE_KERNEL_SET_CI)
nlcore_status_t cluster_f16_f32(const ClusterParams& p, int64_t batch, size_t smem, cudaStream_t s) {
  return launch_cluster<__half, float>(p, batch, smem, s);
}
nlcore_status_t cluster_f16_bf16(const ClusterParams& p, int64_t batch, size_t smem, cudaStream_t s) {
  return launch_cluster<__half, __nv_bfloat16>(p, batch, smem, s);
}
nlcore_status_t cluster_f16_f16(const ClusterParams& p, int64_t batch, size_t smem, cudaStream_t s) {
  return launch_cluster<__half, __half>(p, batch, smem, s);
}
#endif
}  // namespace nlcore::ns
