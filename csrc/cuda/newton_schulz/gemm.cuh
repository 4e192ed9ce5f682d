// General path: one batched strided GEMM (CUTLASS 2.x universal kernel, launched directly so
// that errors keep their CUDA message and no device-property query runs per call).
//   bf16 / fp16: Sm80 tensor-op kernel (mma.sync; runs on sm_90 too), fp32 accumulation,
//                128x128x32 threadblock tile, 64x64x32 warps, 3 stages, 128-bit accesses.
//   fp32:        SIMT FFMA kernel (never TF32), 128x128x8 tile, 32x64x8 warps.
// Epilogue: LinearCombination, D = round(alpha * acc + beta * C) computed in fp32.
//
// Symmetric form (NLCORE_NS_FLAG_SYMMETRIC, bf16 / fp16 only): the same kernel with
// UpperTriangleSwizzle, which launches one CTA per output tile (tm, tn) with tm <= tn of a
// square problem (M == N, square threadblock tile) and nothing below the diagonal. The
// caller mirrors the result (launch_mirror_upper). Instantiated for the "nt" form only
// (A = X X^T, and A A^T = A A once A is mirrored): each tile it computes equals the same
// tile of the full "nt" GEMM bit for bit (same kernel, same K order).
#ifndef NLCORE_CUDA_NEWTON_SCHULZ_GEMM_CUH_
#define NLCORE_CUDA_NEWTON_SCHULZ_GEMM_CUH_

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cutlass/cutlass.h"
#include "cutlass/device_kernel.h"
#include "cutlass/epilogue/thread/linear_combination.h"
#include "cutlass/gemm/device/gemm_universal.h"
#include "cutlass/gemm/threadblock/threadblock_swizzle.h"
#include "newton_schulz/device.cuh"
#include "newton_schulz/launchers.h"
#include "newton_schulz/tiling.cuh"

namespace nlcore::ns {

// CUTLASS 2.x threadblock swizzle for GemmUniversal (kBatched mode) that enumerates only the
// upper-triangle tiles. GemmUniversal asks it for: get_tiled_shape (tile counts; k = batch),
// get_log_tile (an int the kernel hands back to get_tile_offset; here it carries the number
// t of tiles per side), get_grid_shape (x = t (t + 1) / 2 upper tiles, z = batch) and
// get_tile_offset(int) (blockIdx.x -> (tm, tn), k = blockIdx.z = batch index).
struct UpperTriangleSwizzle {
  CUTLASS_HOST_DEVICE UpperTriangleSwizzle() {}

  CUTLASS_HOST_DEVICE static cutlass::gemm::GemmCoord get_tiled_shape(
      cutlass::gemm::GemmCoord problem_size, cutlass::gemm::GemmCoord tile_size, int batch_count) {
    return cutlass::gemm::GemmCoord((problem_size.m() + tile_size.m() - 1) / tile_size.m(),
                                    (problem_size.n() + tile_size.n() - 1) / tile_size.n(),
                                    batch_count % (1 << 16));
  }
  CUTLASS_HOST_DEVICE static int get_log_tile(cutlass::gemm::GemmCoord tiled_shape) {
    return tiled_shape.m();
  }
  CUTLASS_HOST_DEVICE static dim3 get_grid_shape(cutlass::gemm::GemmCoord tiled_shape) {
    return dim3(static_cast<unsigned>(upper_tile_count(tiled_shape.m())), 1,
                static_cast<unsigned>(tiled_shape.k()));
  }
  CUTLASS_DEVICE static cutlass::gemm::GemmCoord get_tile_offset(int tiles_per_side) {
    int tm, tn;
    upper_tile_coords(static_cast<int64_t>(cutlass::gemm::threadblock::RematerializeBlockIdxX()),
                      tiles_per_side, &tm, &tn);
    return cutlass::gemm::GemmCoord{tm, tn, cutlass::gemm::threadblock::RematerializeBlockIdxZ()};
  }
  CUTLASS_DEVICE static cutlass::gemm::GemmCoord get_tile_offset(
      cutlass::gemm::GemmCoord tiled_shape) {
    return get_tile_offset(tiled_shape.m());
  }
  CUTLASS_DEVICE static int get_batch_idx() {
    return cutlass::gemm::threadblock::RematerializeBlockIdxZ();
  }
};

using FullSwizzle = cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<8>;

template <class T, bool kBColMajor, class Swizzle = FullSwizzle>
struct GemmConfig {  // tensor-op (bf16 / fp16)
  using LayoutB = std::conditional_t<kBColMajor, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;
  static constexpr int kAlign = 8;
  using Device = cutlass::gemm::device::GemmUniversal<
      T, cutlass::layout::RowMajor, T, LayoutB, T, cutlass::layout::RowMajor, float,
      cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80, cutlass::gemm::GemmShape<128, 128, 32>,
      cutlass::gemm::GemmShape<64, 64, 32>, cutlass::gemm::GemmShape<16, 8, 16>,
      cutlass::epilogue::thread::LinearCombination<T, kAlign, float, float>, Swizzle, 3, kAlign,
      kAlign>;
  using TileShape = cutlass::gemm::GemmShape<128, 128, 32>;
};

template <bool kBColMajor>
struct GemmConfig<float, kBColMajor, FullSwizzle> {  // SIMT fp32 (no symmetric form)
  using LayoutB = std::conditional_t<kBColMajor, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;
  static constexpr int kAlign = 1;
  using Device = cutlass::gemm::device::GemmUniversal<
      float, cutlass::layout::RowMajor, float, LayoutB, float, cutlass::layout::RowMajor, float,
      cutlass::arch::OpClassSimt, cutlass::arch::Sm80, cutlass::gemm::GemmShape<128, 128, 8>,
      cutlass::gemm::GemmShape<32, 64, 8>, cutlass::gemm::GemmShape<1, 1, 1>,
      cutlass::epilogue::thread::LinearCombination<float, 1, float, float>,
      cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<8>, 4, 1, 1>;
};

template <class T, bool kBColMajor, class Swizzle = FullSwizzle>
nlcore_status_t run_gemm(const GemmArgs& g, cudaStream_t stream) {
  using Config = GemmConfig<T, kBColMajor, Swizzle>;
  constexpr bool kUpper = std::is_same_v<Swizzle, UpperTriangleSwizzle>;
  if constexpr (kUpper) {
    static_assert(Config::TileShape::kM == Config::TileShape::kN &&
                      Config::TileShape::kM == kGemmTileMN,
                  "the upper-triangle swizzle needs square threadblock tiles of kGemmTileMN");
    if (g.M != g.N)
      return detail::fail(NLCORE_STATUS_INTERNAL_ERROR,
                          "newton_schulz: upper-triangle GEMM needs M == N (got %d x %d)", g.M, g.N);
    const int64_t t = ceil_div(g.M, Config::TileShape::kM);
    if (upper_tile_count(t) > INT32_MAX)
      return detail::fail(NLCORE_STATUS_NOT_SUPPORTED,
                          "newton_schulz: upper-triangle GEMM of size %d has too many tiles", g.M);
  }
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
