// Internal interface between the host-side driver (api.cpp, plain C++) and the kernels
// (*.cu). Not installed; hidden symbols.
#ifndef NLCORE_CUDA_NEWTON_SCHULZ_LAUNCHERS_H_
#define NLCORE_CUDA_NEWTON_SCHULZ_LAUNCHERS_H_

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "newton_schulz/tiling.cuh"
#include "nlcore/status.h"

namespace nlcore::ns {

// Parameters of the on-chip kernel (passed by value, __grid_constant__).
struct SmallParams {
  const void* G;
  void* O;
  int rows, cols;     // G_i is rows x cols
  int transposed;     // rows > cols: X = G_i^T
  SmallGeometry geo;  // X is geo.m x geo.n
  int steps;
  int symmetric;      // compute the upper-triangle tiles of A and B only, mirror them
  float eps, norm_scale;
  int norm_additive;
  SmallCoefs coefs;
};

// Parameters of the 2-CTA cluster kernel (passed by value, __grid_constant__).
struct ClusterParams {
  const void* G;
  void* O;
  int rows, cols;       // G_i is rows x cols
  int transposed;       // rows > cols: X = G_i^T
  ClusterGeometry geo;  // X is geo.m x geo.n
  int steps;
  float eps, norm_scale;
  int norm_additive;
  SmallCoefs coefs;
};

// Each returns a launch status; errors are recorded with detail::fail().
using ClusterLaunchFn = nlcore_status_t (*)(const ClusterParams& p, int64_t batch,
                                            size_t smem_bytes, cudaStream_t stream);
using SmallLaunchFn = nlcore_status_t (*)(const SmallParams& p, int64_t batch, size_t smem_bytes,
                                          cudaStream_t stream);

// Batched strided GEMM D = alpha * A B + beta * C on padded dimensions; A row-major (M x K),
// B row-major (K x N) or, for the "nt" form, column-major (B[k][n] at b[n * ldb + k]);
// C and D row-major. Element type = the compute dtype.
struct GemmArgs {
  int M, N, K;
  const void* A;
  int64_t lda, stride_a;
  const void* B;
  int64_t ldb, stride_b;
  const void* C;
  int64_t ldc, stride_c;
  void* D;
  int64_t ldd, stride_d;
  float alpha, beta;
  int64_t batch;
};
using GemmLaunchFn = nlcore_status_t (*)(const GemmArgs& g, cudaStream_t stream);

// Normalize + convert + transpose into the padded workspace X, and back.
struct ConvertArgs {
  const void* src;
  int64_t src_ld, src_stride;
  void* dst;
  int64_t dst_ld, dst_stride;
  int64_t dst_rows, dst_cols;      // extent of dst written (padding included)
  int64_t valid_rows, valid_cols;  // dst(i, j) maps to src only for i < valid_rows, j < valid_cols
  int transposed;                  // dst(i, j) = src(j, i)
  int64_t batch;
  // normalization (to_work only)
  const float* partials;
  int chunks;
  float eps, norm_scale;
  int norm_additive;
};

// dtype codes as in nlcore_dtype_t (FLOAT32, BFLOAT16, FLOAT16).
nlcore_status_t launch_norm_partials(int io_dtype, const void* G, int64_t batch, int64_t numel,
                                     int chunks, float* partials, cudaStream_t stream);
nlcore_status_t launch_to_work(int io_dtype, int compute_dtype, const ConvertArgs& a,
                               cudaStream_t stream);
nlcore_status_t launch_from_work(int compute_dtype, int io_dtype, const ConvertArgs& a,
                                 cudaStream_t stream);
// Symmetric form: M(i, j) = M(j, i) for i > j of each n x n matrix (16-bit compute dtypes).
nlcore_status_t launch_mirror_upper(int compute_dtype, void* M, int64_t n, int64_t ld,
                                    int64_t stride, int64_t batch, cudaStream_t stream);

// Registries (defined in api.cpp from what the kernel set compiled in); NULL if absent.
SmallLaunchFn find_small(int compute_dtype, int io_dtype);
ClusterLaunchFn find_cluster(int compute_dtype, int io_dtype);
GemmLaunchFn find_gemm(int compute_dtype, bool b_col_major);
GemmLaunchFn find_gemm_upper(int compute_dtype);  // upper-triangle tiles, B column-major

// Per-instantiation entry points (defined in the .cu files).
#define NLCORE_NS_DECLARE_SMALL(NAME) \
  nlcore_status_t NAME(const SmallParams& p, int64_t batch, size_t smem_bytes, cudaStream_t stream);
NLCORE_NS_DECLARE_SMALL(small_bf16_f32)
NLCORE_NS_DECLARE_SMALL(small_bf16_bf16)
NLCORE_NS_DECLARE_SMALL(small_bf16_f16)
NLCORE_NS_DECLARE_SMALL(small_f16_f32)
NLCORE_NS_DECLARE_SMALL(small_f16_bf16)
NLCORE_NS_DECLARE_SMALL(small_f16_f16)
#undef NLCORE_NS_DECLARE_SMALL
#define NLCORE_NS_DECLARE_CLUSTER(NAME) \
  nlcore_status_t NAME(const ClusterParams& p, int64_t batch, size_t smem_bytes, cudaStream_t stream);
NLCORE_NS_DECLARE_CLUSTER(cluster_bf16_f32)
NLCORE_NS_DECLARE_CLUSTER(cluster_bf16_bf16)
NLCORE_NS_DECLARE_CLUSTER(cluster_bf16_f16)
NLCORE_NS_DECLARE_CLUSTER(cluster_f16_f32)
NLCORE_NS_DECLARE_CLUSTER(cluster_f16_bf16)
NLCORE_NS_DECLARE_CLUSTER(cluster_f16_f16)
#undef NLCORE_NS_DECLARE_CLUSTER

nlcore_status_t gemm_bf16_nt(const GemmArgs& g, cudaStream_t stream);
nlcore_status_t gemm_bf16_nn(const GemmArgs& g, cudaStream_t stream);
nlcore_status_t gemm_f16_nt(const GemmArgs& g, cudaStream_t stream);
nlcore_status_t gemm_f16_nn(const GemmArgs& g, cudaStream_t stream);
nlcore_status_t gemm_f32_nt(const GemmArgs& g, cudaStream_t stream);
nlcore_status_t gemm_f32_nn(const GemmArgs& g, cudaStream_t stream);
// Upper-triangle tiles only (square M == N); B column-major ("nt").
nlcore_status_t gemm_bf16_nt_sym(const GemmArgs& g, cudaStream_t stream);
nlcore_status_t gemm_f16_nt_sym(const GemmArgs& g, cudaStream_t stream);

}  // namespace nlcore::ns

#endif  // NLCORE_CUDA_NEWTON_SCHULZ_LAUNCHERS_H_
