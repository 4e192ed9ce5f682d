// General path: one batched strided GEMM (CUTLASS 2.x universal kernel, launched directly so
// that errors keep their CUDA message and no device-property query runs per call).
//   bf16 / fp16: Sm80 tensor-op kernel (mma.sync; runs on sm_90 too), fp32 accumulation,
//                128x128x32 threadblock tile, 64x64x32 warps, 3 stages, 128-bit accesses.
//   fp32:        SIMT FFMA kernel (never TF32), 128x128x8 tile, 32x64x8 warps.
// Epilogue: LinearCombination, D = round(alpha * acc + beta * C) computed in fp32.
#ifndef NLCORE_CUDA_NEWTON_SCHULZ_GEMM_CUH_
#define NLCORE_CUDA_NEWTON_SCHULZ_GEMM_CUH_

#include <algorithm>

#include "cutlass/cutlass.h"
#include "cutlass/device_kernel.h"
#include "cutlass/epilogue/thread/linear_combination.h"
#include "cutlass/gemm/device/gemm_universal.h"
#include "cutlass/gemm/threadblock/threadblock_swizzle.h"
#include "newton_schulz/device.cuh"
#include "newton_schulz/launchers.h"
#include "newton_schulz/tiling.cuh"

namespace nlcore::ns {

template <class T, bool kBColMajor>
struct GemmConfig {  // tensor-op (bf16 / fp16)
  using LayoutB = std::conditional_t<kBColMajor, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;
  static constexpr int kAlign = 8;
  using Device = cutlass::gemm::device::GemmUniversal<
      T, cutlass::layout::RowMajor, T, LayoutB, T, cutlass::layout::RowMajor, float,
      cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80, cutlass::gemm::GemmShape<128, 128, 32>,
      cutlass::gemm::GemmShape<64, 64, 32>, cutlass::gemm::GemmShape<16, 8, 16>,
      cutlass::epilogue::thread::LinearCombination<T, kAlign, float, float>,
      cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<8>, 3, kAlign, kAlign>;
};

template <bool kBColMajor>
struct GemmConfig<float, kBColMajor> {  // SIMT fp32
  using LayoutB = std::conditional_t<kBColMajor, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;
  static constexpr int kAlign = 1;
  using Device = cutlass::gemm::device::GemmUniversal<
      float, cutlass::layout::RowMajor, float, LayoutB, float, cutlass::layout::RowMajor, float,
      cutlass::arch::OpClassSimt, cutlass::arch::Sm80, cutlass::gemm::GemmShape<128, 128, 8>,
      cutlass::gemm::GemmShape<32, 64, 8>, cutlass::gemm::GemmShape<1, 1, 1>,
      cutlass::epilogue::thread::LinearCombination<float, 1, float, float>,
      cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<8>, 4, 1, 1>;
};

template <class T, bool kBColMajor>
nlcore_status_t run_gemm(const GemmArgs& g, cudaStream_t stream) {
  using Config = GemmConfig<T, kBColMajor>;
  using Kernel = typename Config::Device::GemmKernel;
  using Arguments = typename Kernel::Arguments;
  using Params = typename Kernel::Params;
  using EpParams = typename Kernel::EpilogueOutputOp::Params;

  const int smem = static_cast<int>(sizeof(typename Kernel::SharedStorage));
  if (smem >= (48 << 10)) {
    nlcore_status_t st = cuda_status(
        cudaFuncSetAttribute(cutlass::Kernel2<Kernel>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
        "cudaFuncSetAttribute(MaxDynamicSharedMemorySize) of the GEMM kernel");
    if (st != NLCORE_STATUS_SUCCESS) return st;
  }
  const T* A = static_cast<const T*>(g.A);
  const T* B = static_cast<const T*>(g.B);
  const T* C = static_cast<const T*>(g.C);
  T* D = static_cast<T*>(g.D);
  for (int64_t b0 = 0; b0 < g.batch; b0 += kGemmMaxBatchPerLaunch) {
    const int nb = static_cast<int>(std::min<int64_t>(kGemmMaxBatchPerLaunch, g.batch - b0));
    Arguments args(cutlass::gemm::GemmUniversalMode::kBatched, cutlass::gemm::GemmCoord(g.M, g.N, g.K),
                   nb, EpParams(g.alpha, g.beta), A + b0 * g.stride_a, B + b0 * g.stride_b,
                   C + b0 * g.stride_c, D + b0 * g.stride_d, g.stride_a, g.stride_b, g.stride_c,
                   g.stride_d, g.lda, g.ldb, g.ldc, g.ldd);
    const cutlass::Status cs = Kernel::can_implement(args);
    if (cs != cutlass::Status::kSuccess)
      return detail::fail(NLCORE_STATUS_INTERNAL_ERROR,
                          "newton_schulz: CUTLASS GEMM cannot implement M=%d N=%d K=%d: %s", g.M,
                          g.N, g.K, cutlassGetStatusString(cs));
    Params params(args, /*device_sms=*/0, /*sm_occupancy=*/0);
    const dim3 grid = params.get_grid_dims();
    cutlass::Kernel2<Kernel><<<grid, dim3(Kernel::kThreadCount, 1, 1), smem, stream>>>(params);
    nlcore_status_t st = launch_status("launch of a CUTLASS GEMM");
    if (st != NLCORE_STATUS_SUCCESS) return st;
  }
  return NLCORE_STATUS_SUCCESS;
}

}  // namespace nlcore::ns

#endif  // NLCORE_CUDA_NEWTON_SCHULZ_GEMM_CUH_
