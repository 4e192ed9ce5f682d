// On-chip Newton–Schulz kernel, fp16 compute (full kernel set only).
#include "newton_schulz/small_kernel.cuh"

namespace nlcore::ns {
#if !defined(NLCORE_KERNEL_SET_CI)
nlcore_status_t small_f16_f32(const SmallParams& p, int64_t batch, size_t smem, cudaStream_t s) {
  return launch_small<__half, float>(p, batch, smem, s);
}
nlcore_status_t small_f16_bf16(const SmallParams& p, int64_t batch, size_t smem, cudaStream_t s) {
  return launch_small<__half, __nv_bfloat16>(p, batch, smem, s);
}
nlcore_status_t small_f16_f16(const SmallParams& p, int64_t batch, size_t smem, cudaStream_t s) {
  return launch_small<__half, __half>(p, batch, smem, s);
}
#endif
}  // namespace nlcore::ns
