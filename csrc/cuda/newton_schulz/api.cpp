// nlcore C API for Newton–Schulz: validation, path selection, workspace layout and the
// host-side driver of every path. Plain C++ (no CUDA kernels here). Every validation
// failure returns before any CUDA runtime call.
//
// Paths (nlcore_newton_schulz_path) and flags (NLCORE_NS_FLAG_*):
//   0 small:   one block per matrix, all steps on chip (min <= 128, max <= 256, bf16/fp16
//              compute). DEFAULT takes it whenever it can; FORCE_SMALL demands it.
//   1 general: batched CUTLASS GEMMs through a workspace (any size, fp32 compute too).
//              DEFAULT takes it otherwise; FORCE_GENERAL demands it.
//   2 cluster: 2-CTA thread-block cluster per matrix, all steps on chip (128 < min <= 256,
//              max <= 256, bf16/fp16 compute, sm_90a device and build). Experimental: only
//              with CLUSTER, which never falls back (NOT_SUPPORTED outside its domain, and
//              from forward() on a device that is not compute capability 9.x).
//              CLUSTER with FORCE_SMALL or FORCE_GENERAL: INVALID_VALUE (contradictory);
//              CLUSTER with SYMMETRIC: NOT_SUPPORTED (no symmetric cluster variant).
//   SYMMETRIC (experimental) computes only the upper triangle of A = X X^T and of
//              B = c A^2 + b A and mirrors it bit-exactly: on chip on the small path, through
//              upper-triangle-tile GEMMs + a mirror kernel on the general path (bf16/fp16
//              compute only; fp32 compute is NOT_SUPPORTED). Rounding is unchanged.
// None of the experimental forms is ever chosen by DEFAULT.
#include <cmath>
#include <cstdint>
#include <cstring>

#include <cuda_runtime_api.h>

#include "common/error.h"
#include "newton_schulz/kernel_set.h"
#include "newton_schulz/launchers.h"
#include "newton_schulz/tiling.cuh"
#include "nlcore/newton_schulz.h"

namespace nlcore::ns {
namespace {

using detail::fail;

constexpr int kPathSmall = 0;
constexpr int kPathGeneral = 1;
constexpr int kPathCluster = 2;

using detail::dtype_name;
size_t dtype_bytes(int d) { return d == NLCORE_DTYPE_FLOAT32 ? 4 : 2; }

nlcore_status_t runtime_status(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return NLCORE_STATUS_SUCCESS;
  (void)cudaGetLastError();  // clear the (non-sticky) error this call recorded
  return fail(NLCORE_STATUS_CUDA_ERROR, "newton_schulz: %s failed: %s (%s)", what,
              cudaGetErrorString(e), cudaGetErrorName(e));
}

struct Plan {
  int path;
  int64_t batch, rows, cols, m, n;
  bool transposed;
  int io, compute;
  bool symmetric;
  SmallGeometry geo;
  ClusterGeometry cgeo;
  size_t smem_bytes;
  GeneralLayout layout;
  size_t workspace;
};

nlcore_status_t check_dtype(const char* field, int d) {
  if (d == NLCORE_DTYPE_FLOAT64)
    return fail(NLCORE_STATUS_NOT_SUPPORTED,
                "newton_schulz: problem->%s = FLOAT64 (%d) is not supported by the CUDA kernels "
                "(use FLOAT32, BFLOAT16 or FLOAT16)", field, d);
  if (!io_dtype_ok(d))
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "newton_schulz: problem->%s must be NLCORE_DTYPE_FLOAT32, BFLOAT16 or FLOAT16, "
                "got %d", field, d);
  return NLCORE_STATUS_SUCCESS;
}

// Validates every field and chooses the path; no CUDA call.
nlcore_status_t make_plan(const nlcore_ns_problem_t* p, Plan* out) {
  if (p == nullptr) return fail(NLCORE_STATUS_INVALID_VALUE, "newton_schulz: problem is NULL");
  if (p->batch < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE, "newton_schulz: problem->batch must be >= 1, got %lld",
                (long long)p->batch);
  if (p->rows < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE, "newton_schulz: problem->rows must be >= 1, got %lld",
                (long long)p->rows);
  if (p->cols < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE, "newton_schulz: problem->cols must be >= 1, got %lld",
                (long long)p->cols);
  nlcore_status_t st = check_dtype("io_dtype", static_cast<int>(p->io_dtype));
  if (st != NLCORE_STATUS_SUCCESS) return st;
  st = check_dtype("compute_dtype", static_cast<int>(p->compute_dtype));
  if (st != NLCORE_STATUS_SUCCESS) return st;
  if (p->steps < 1 || p->steps > NLCORE_NS_MAX_STEPS)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "newton_schulz: problem->steps must be in [1, %d], got %d", NLCORE_NS_MAX_STEPS,
                (int)p->steps);
  if (p->coefficients == nullptr)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "newton_schulz: problem->coefficients is NULL (need %d x 3 floats)", (int)p->steps);
  for (int s = 0; s < p->steps; ++s)
    for (int k = 0; k < 3; ++k) {
      const float v = p->coefficients[3 * s + k];
      if (!std::isfinite(v))
        return fail(NLCORE_STATUS_INVALID_VALUE,
                    "newton_schulz: problem->coefficients[%d][%d] (%c of step %d) must be finite, "
                    "got %g", s, k, "abc"[k], s, (double)v);
    }
  if (!(p->eps >= 0.0f) || !std::isfinite(p->eps))
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "newton_schulz: problem->eps must be finite and >= 0, got %g", (double)p->eps);
  if (!(p->norm_scale > 0.0f) || !std::isfinite(p->norm_scale))
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "newton_schulz: problem->norm_scale must be finite and > 0, got %g",
                (double)p->norm_scale);
  if (p->norm_additive != 0 && p->norm_additive != 1)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "newton_schulz: problem->norm_additive must be 0 or 1, got %d", (int)p->norm_additive);
  const uint32_t known = NLCORE_NS_FLAG_FORCE_SMALL | NLCORE_NS_FLAG_FORCE_GENERAL |
                         NLCORE_NS_FLAG_SYMMETRIC | NLCORE_NS_FLAG_CLUSTER;
  const uint32_t flags = p->flags;
  if (flags & ~known)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "newton_schulz: problem->flags has unknown bits 0x%x (flags = 0x%x)", flags & ~known,
                flags);
  const bool force_small = flags & NLCORE_NS_FLAG_FORCE_SMALL;
  const bool force_general = flags & NLCORE_NS_FLAG_FORCE_GENERAL;
  const bool cluster = flags & NLCORE_NS_FLAG_CLUSTER;
  const bool symmetric = flags & NLCORE_NS_FLAG_SYMMETRIC;
  if (force_small && force_general)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "newton_schulz: problem->flags = 0x%x sets both FORCE_SMALL and FORCE_GENERAL", flags);
  if (cluster && (force_small || force_general))
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "newton_schulz: problem->flags = 0x%x combines CLUSTER with FORCE_%s", flags,
                force_small ? "SMALL" : "GENERAL");
  if (cluster && symmetric)
    return fail(NLCORE_STATUS_NOT_SUPPORTED,
                "newton_schulz: problem->flags = 0x%x combines CLUSTER with SYMMETRIC; the cluster "
                "kernel has no symmetric variant", flags);

  Plan P{};
  P.batch = p->batch;
  P.rows = p->rows;
  P.cols = p->cols;
  P.transposed = p->rows > p->cols;
  P.m = P.transposed ? p->cols : p->rows;
  P.n = P.transposed ? p->rows : p->cols;
  P.io = static_cast<int>(p->io_dtype);
  P.compute = static_cast<int>(p->compute_dtype);
  P.symmetric = symmetric;
  if (P.n > (int64_t{1} << 30))
    return fail(NLCORE_STATUS_NOT_SUPPORTED,
                "newton_schulz: max(rows, cols) = %lld exceeds the supported 2^30",
                (long long)P.n);
  if ((long double)P.batch * P.rows * P.cols > (long double)(INT64_MAX / 4))
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "newton_schulz: problem too large (batch %lld x rows %lld x cols %lld)",
                (long long)P.batch, (long long)P.rows, (long long)P.cols);

  // Can the on-chip kernel take it?
  const char* small_why = nullptr;
  SmallCoefs coefs;
  if (P.compute == NLCORE_DTYPE_FLOAT32)
    small_why = "compute_dtype FLOAT32 has no on-chip kernel (tensor-core bf16/fp16 only)";
  else if (!small_shape_ok(P.m, P.n))
    small_why = "min(rows, cols) must be <= 128 and max(rows, cols) <= 256";
  else if (P.batch > INT32_MAX)
    small_why = "batch exceeds 2^31 - 1";
  else if (!encode_coefficient_runs(p->coefficients, p->steps, &coefs))
    small_why = "the coefficient list has more than 64 runs of distinct (a, b, c) triples";
  else if (!small_built(P.compute, P.io))
    small_why = "this (compute_dtype, io_dtype) combination is not built in this kernel set";

  if (cluster) {
    const char* why = nullptr;
    SmallCoefs ccoefs;
    if (P.compute == NLCORE_DTYPE_FLOAT32)
      why = "compute_dtype FLOAT32 has no cluster kernel (tensor-core bf16/fp16 only)";
    else if (!cluster_shape_ok(P.m, P.n))
      why = "it needs 128 < min(rows, cols) <= 256 and max(rows, cols) <= 256";
    else if (P.batch > INT32_MAX / 2)
      why = "batch exceeds 2^30 - 1";
    else if (!encode_coefficient_runs(p->coefficients, p->steps, &ccoefs))
      why = "the coefficient list has more than 64 runs of distinct (a, b, c) triples";
    else if (!cluster_built(P.compute, P.io))
      why = "this (compute_dtype, io_dtype) combination is not built in this kernel set";
    if (why)
      return fail(NLCORE_STATUS_NOT_SUPPORTED,
                  "newton_schulz: NLCORE_NS_FLAG_CLUSTER cannot take rows %lld x cols %lld, "
                  "compute_dtype %s, io_dtype %s (kernel set '%s'): %s", (long long)P.rows,
                  (long long)P.cols, dtype_name(P.compute), dtype_name(P.io), kKernelSetName, why);
    P.path = kPathCluster;
  } else if (force_small) {
    if (small_why)
      return fail(NLCORE_STATUS_NOT_SUPPORTED,
                  "newton_schulz: FORCE_SMALL cannot take rows %lld x cols %lld, compute_dtype %s, "
                  "io_dtype %s (kernel set '%s'): %s", (long long)P.rows, (long long)P.cols,
                  dtype_name(P.compute), dtype_name(P.io), kKernelSetName, small_why);
    P.path = kPathSmall;
  } else if (force_general) {
    P.path = kPathGeneral;
  } else {
    P.path = small_why ? kPathGeneral : kPathSmall;
  }

  if (P.path == kPathGeneral) {
    if (!general_built(P.compute, P.io))
      return fail(NLCORE_STATUS_NOT_SUPPORTED,
                  "newton_schulz: compute_dtype %s with io_dtype %s is not built in this kernel "
                  "set ('%s'); rebuild with NLCORE_KERNEL_SET=full", dtype_name(P.compute),
                  dtype_name(P.io), kKernelSetName);
    if (symmetric && P.compute == NLCORE_DTYPE_FLOAT32)
      return fail(NLCORE_STATUS_NOT_SUPPORTED,
                  "newton_schulz: NLCORE_NS_FLAG_SYMMETRIC on the GEMM path needs compute_dtype "
                  "BFLOAT16 or FLOAT16 (got FLOAT32; rows %lld x cols %lld)", (long long)P.rows,
                  (long long)P.cols);
    if (symmetric && !general_upper_built(P.compute))
      return fail(NLCORE_STATUS_NOT_SUPPORTED,
                  "newton_schulz: NLCORE_NS_FLAG_SYMMETRIC GEMMs for compute_dtype %s are not built "
                  "in this kernel set ('%s')", dtype_name(P.compute), kKernelSetName);
    if (symmetric && upper_tile_count(ceil_div(round_up(P.m, kGemmPad), kGemmTileMN)) > INT32_MAX)
      return fail(NLCORE_STATUS_NOT_SUPPORTED,
                  "newton_schulz: NLCORE_NS_FLAG_SYMMETRIC: min(rows, cols) = %lld gives more "
                  "upper-triangle GEMM tiles than one launch can hold", (long long)P.m);
    P.layout = general_layout(P.batch, P.m, P.n, dtype_bytes(P.compute));
    if (!P.layout.ok)
      return fail(NLCORE_STATUS_INVALID_VALUE,
                  "newton_schulz: problem too large: the workspace size overflows (batch %lld, "
                  "rows %lld, cols %lld)", (long long)P.batch, (long long)P.rows, (long long)P.cols);
    P.workspace = P.layout.total;
  } else if (P.path == kPathCluster) {
    P.cgeo = cluster_geometry(static_cast<int>(P.m), static_cast<int>(P.n));
    P.smem_bytes = cluster_smem_bytes(P.cgeo, dtype_bytes(P.compute));
    P.workspace = 0;
  } else {
    P.geo = small_geometry(static_cast<int>(P.m), static_cast<int>(P.n));
    P.smem_bytes = small_smem_bytes(P.geo, dtype_bytes(P.compute));
    P.workspace = 0;
  }
  *out = P;
  return NLCORE_STATUS_SUCCESS;
}

bool ranges_overlap(const void* a, size_t an, const void* b, size_t bn) {
  const uintptr_t x = reinterpret_cast<uintptr_t>(a), y = reinterpret_cast<uintptr_t>(b);
  return x < y + bn && y < x + an;
}

nlcore_status_t run_small(const Plan& P, const nlcore_ns_problem_t* p, const void* G, void* O,
                          cudaStream_t stream) {
  SmallLaunchFn fn = find_small(P.compute, P.io);
  if (fn == nullptr)
    return fail(NLCORE_STATUS_INTERNAL_ERROR, "newton_schulz: small kernel missing from registry");
  SmallParams sp{};
  sp.G = G;
  sp.O = O;
  sp.rows = static_cast<int>(P.rows);
  sp.cols = static_cast<int>(P.cols);
  sp.transposed = P.transposed ? 1 : 0;
  sp.geo = P.geo;
  sp.steps = p->steps;
  sp.symmetric = P.symmetric ? 1 : 0;
  sp.eps = p->eps;
  sp.norm_scale = p->norm_scale;
  sp.norm_additive = p->norm_additive;
  encode_coefficient_runs(p->coefficients, p->steps, &sp.coefs);
  return fn(sp, P.batch, P.smem_bytes, stream);
}

nlcore_status_t run_cluster(const Plan& P, const nlcore_ns_problem_t* p, const void* G, void* O,
                            cudaStream_t stream) {
#if !defined(NLCORE_NS_HAVE_SM90A)
  return fail(NLCORE_STATUS_NOT_SUPPORTED,
              "newton_schulz: NLCORE_NS_FLAG_CLUSTER: this library was built without an sm_90a "
              "image (add 90a-real to NLCORE_CUDA_ARCHS)");
#else
  int dev = 0, major = 0, minor = 0;
  nlcore_status_t st = runtime_status(cudaGetDevice(&dev), "cudaGetDevice");
  if (st != NLCORE_STATUS_SUCCESS) return st;
  st = runtime_status(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev),
                   "cudaDeviceGetAttribute(ComputeCapabilityMajor)");
  if (st != NLCORE_STATUS_SUCCESS) return st;
  st = runtime_status(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev),
                   "cudaDeviceGetAttribute(ComputeCapabilityMinor)");
  if (st != NLCORE_STATUS_SUCCESS) return st;
  if (major != 9)
    return fail(NLCORE_STATUS_NOT_SUPPORTED,
                "newton_schulz: NLCORE_NS_FLAG_CLUSTER needs a compute capability 9.x (Hopper, "
                "sm_90a) device; the current device %d is %d.%d", dev, major, minor);
  ClusterLaunchFn fn = find_cluster(P.compute, P.io);
  if (fn == nullptr)
    return fail(NLCORE_STATUS_INTERNAL_ERROR, "newton_schulz: cluster kernel missing from registry");
  ClusterParams cp{};
  cp.G = G;
  cp.O = O;
  cp.rows = static_cast<int>(P.rows);
  cp.cols = static_cast<int>(P.cols);
  cp.transposed = P.transposed ? 1 : 0;
  cp.geo = P.cgeo;
  cp.steps = p->steps;
  cp.eps = p->eps;
  cp.norm_scale = p->norm_scale;
  cp.norm_additive = p->norm_additive;
  encode_coefficient_runs(p->coefficients, p->steps, &cp.coefs);
  return fn(cp, P.batch, P.smem_bytes, stream);
#endif
}

nlcore_status_t run_general(const Plan& P, const nlcore_ns_problem_t* p, const void* G, void* O,
                            void* workspace, cudaStream_t stream) {
  const GeneralLayout& L = P.layout;
  // SYMMETRIC: A = X X^T and B = c A A^T + b A (A A^T = A A: A is bit-exactly symmetric once
  // mirrored) on the upper-triangle tiles with the "nt" GEMM, each mirrored below the
  // diagonal before it is read; B X stays a full GEMM. The general form computes A A ("nn").
  const bool sym = P.symmetric;
  GemmLaunchFn gemm_a = sym ? find_gemm_upper(P.compute) : find_gemm(P.compute, true);
  GemmLaunchFn gemm_b = sym ? find_gemm_upper(P.compute) : find_gemm(P.compute, false);
  GemmLaunchFn gemm_x = find_gemm(P.compute, false);
  if (gemm_a == nullptr || gemm_b == nullptr || gemm_x == nullptr)
    return fail(NLCORE_STATUS_INTERNAL_ERROR, "newton_schulz: GEMM missing from registry");
  char* ws = static_cast<char*>(workspace);
  void* X[2] = {ws + L.off_x0, ws + L.off_x1};
  void* A = ws + L.off_a;
  void* B = ws + L.off_b;
  float* partials = reinterpret_cast<float*>(ws + L.off_partials);

  nlcore_status_t st = launch_norm_partials(P.io, G, P.batch, P.rows * P.cols, L.chunks, partials,
                                            stream);
  if (st != NLCORE_STATUS_SUCCESS) return st;

  ConvertArgs in{};
  in.src = G;
  in.src_ld = P.cols;
  in.src_stride = P.rows * P.cols;
  in.dst = X[0];
  in.dst_ld = L.n_p;
  in.dst_stride = L.m_p * L.n_p;
  in.dst_rows = L.m_p;
  in.dst_cols = L.n_p;
  in.valid_rows = P.m;
  in.valid_cols = P.n;
  in.transposed = P.transposed ? 1 : 0;
  in.batch = P.batch;
  in.partials = partials;
  in.chunks = L.chunks;
  in.eps = p->eps;
  in.norm_scale = p->norm_scale;
  in.norm_additive = p->norm_additive;
  st = launch_to_work(P.io, P.compute, in, stream);
  if (st != NLCORE_STATUS_SUCCESS) return st;

  const int mp = static_cast<int>(L.m_p), np = static_cast<int>(L.n_p);
  const int64_t sx = L.m_p * L.n_p, sa = L.m_p * L.m_p;
  int cur = 0;
  for (int s = 0; s < p->steps; ++s) {
    const float a = p->coefficients[3 * s], b = p->coefficients[3 * s + 1],
                c = p->coefficients[3 * s + 2];
    // A = X X^T
    GemmArgs g1{mp, mp, np, X[cur], np, sx, X[cur], np, sx, A, mp, sa, A, mp, sa, 1.0f, 0.0f,
                P.batch};
    if ((st = gemm_a(g1, stream)) != NLCORE_STATUS_SUCCESS) return st;
    if (sym && (st = launch_mirror_upper(P.compute, A, mp, mp, sa, P.batch, stream)) !=
                   NLCORE_STATUS_SUCCESS)
      return st;
    // B = c A A + b A
    GemmArgs g2{mp, mp, mp, A, mp, sa, A, mp, sa, A, mp, sa, B, mp, sa, c, b, P.batch};
    if ((st = gemm_b(g2, stream)) != NLCORE_STATUS_SUCCESS) return st;
    if (sym && (st = launch_mirror_upper(P.compute, B, mp, mp, sa, P.batch, stream)) !=
                   NLCORE_STATUS_SUCCESS)
      return st;
    // X' = B X + a X
    GemmArgs g3{mp, np, mp, B, mp, sa, X[cur], np, sx, X[cur], np, sx, X[1 - cur], np, sx,
                1.0f, a, P.batch};
    if ((st = gemm_x(g3, stream)) != NLCORE_STATUS_SUCCESS) return st;
    cur = 1 - cur;
  }

  ConvertArgs outa{};
  outa.src = X[cur];
  outa.src_ld = L.n_p;
  outa.src_stride = sx;
  outa.dst = O;
  outa.dst_ld = P.cols;
  outa.dst_stride = P.rows * P.cols;
  outa.dst_rows = P.rows;
  outa.dst_cols = P.cols;
  outa.valid_rows = P.rows;
  outa.valid_cols = P.cols;
  outa.transposed = P.transposed ? 1 : 0;
  outa.batch = P.batch;
  return launch_from_work(P.compute, P.io, outa, stream);
}

}  // namespace

SmallLaunchFn find_small(int compute, int io) {
  if (!small_built(compute, io)) return nullptr;
#define NLCORE_CASE(C, I, FN) \
  if (compute == C && io == I) return &FN;
  NLCORE_CASE(NLCORE_DTYPE_BFLOAT16, NLCORE_DTYPE_FLOAT32, small_bf16_f32)
  NLCORE_CASE(NLCORE_DTYPE_BFLOAT16, NLCORE_DTYPE_BFLOAT16, small_bf16_bf16)
#if !defined(NLCORE_KERNEL_SET_CI)
  NLCORE_CASE(NLCORE_DTYPE_BFLOAT16, NLCORE_DTYPE_FLOAT16, small_bf16_f16)
  NLCORE_CASE(NLCORE_DTYPE_FLOAT16, NLCORE_DTYPE_FLOAT32, small_f16_f32)
  NLCORE_CASE(NLCORE_DTYPE_FLOAT16, NLCORE_DTYPE_BFLOAT16, small_f16_bf16)
  NLCORE_CASE(NLCORE_DTYPE_FLOAT16, NLCORE_DTYPE_FLOAT16, small_f16_f16)
#endif
#undef NLCORE_CASE
  return nullptr;
}

ClusterLaunchFn find_cluster(int compute, int io) {
  if (!cluster_built(compute, io)) return nullptr;
#define NLCORE_CASE(C, I, FN) \
  if (compute == C && io == I) return &FN;
  NLCORE_CASE(NLCORE_DTYPE_BFLOAT16, NLCORE_DTYPE_FLOAT32, cluster_bf16_f32)
  NLCORE_CASE(NLCORE_DTYPE_BFLOAT16, NLCORE_DTYPE_BFLOAT16, cluster_bf16_bf16)
#if !defined(NLCORE_KERNEL_SET_CI)
  NLCORE_CASE(NLCORE_DTYPE_BFLOAT16, NLCORE_DTYPE_FLOAT16, cluster_bf16_f16)
  NLCORE_CASE(NLCORE_DTYPE_FLOAT16, NLCORE_DTYPE_FLOAT32, cluster_f16_f32)
  NLCORE_CASE(NLCORE_DTYPE_FLOAT16, NLCORE_DTYPE_BFLOAT16, cluster_f16_bf16)
  NLCORE_CASE(NLCORE_DTYPE_FLOAT16, NLCORE_DTYPE_FLOAT16, cluster_f16_f16)
#endif
#undef NLCORE_CASE
  return nullptr;
}

GemmLaunchFn find_gemm_upper(int compute) {
  if (!general_upper_built(compute)) return nullptr;
  switch (compute) {
    case NLCORE_DTYPE_BFLOAT16: return &gemm_bf16_nt_sym;
#if !defined(NLCORE_KERNEL_SET_CI)
    case NLCORE_DTYPE_FLOAT16: return &gemm_f16_nt_sym;
#endif
    default: return nullptr;
  }
}

GemmLaunchFn find_gemm(int compute, bool b_col_major) {
  switch (compute) {
    case NLCORE_DTYPE_BFLOAT16: return b_col_major ? &gemm_bf16_nt : &gemm_bf16_nn;
    case NLCORE_DTYPE_FLOAT32: return b_col_major ? &gemm_f32_nt : &gemm_f32_nn;
#if !defined(NLCORE_KERNEL_SET_CI)
    case NLCORE_DTYPE_FLOAT16: return b_col_major ? &gemm_f16_nt : &gemm_f16_nn;
#endif
    default: return nullptr;
  }
}

}  // namespace nlcore::ns

extern "C" {

NLCORE_API nlcore_status_t nlcore_newton_schulz_workspace_size(const nlcore_ns_problem_t* problem,
                                                               size_t* workspace_bytes) {
  using namespace nlcore::ns;
  if (workspace_bytes == nullptr)
    return nlcore::detail::fail(NLCORE_STATUS_INVALID_VALUE,
                                "newton_schulz_workspace_size: workspace_bytes is NULL");
  Plan P;
  nlcore_status_t st = make_plan(problem, &P);
  if (st != NLCORE_STATUS_SUCCESS) return st;
  *workspace_bytes = P.workspace;
  return NLCORE_STATUS_SUCCESS;
}

NLCORE_API nlcore_status_t nlcore_newton_schulz_path(const nlcore_ns_problem_t* problem,
                                                     int32_t* path) {
  using namespace nlcore::ns;
  if (path == nullptr)
    return nlcore::detail::fail(NLCORE_STATUS_INVALID_VALUE, "newton_schulz_path: path is NULL");
  Plan P;
  nlcore_status_t st = make_plan(problem, &P);
  if (st != NLCORE_STATUS_SUCCESS) return st;
  *path = P.path;
  return NLCORE_STATUS_SUCCESS;
}

NLCORE_API nlcore_status_t nlcore_newton_schulz_forward(const nlcore_ns_problem_t* problem,
                                                        const void* G, void* O, void* workspace,
                                                        size_t workspace_bytes,
                                                        cudaStream_t stream) {
  using namespace nlcore::ns;
  using nlcore::detail::fail;
  try {
    Plan P;
    nlcore_status_t st = make_plan(problem, &P);
    if (st != NLCORE_STATUS_SUCCESS) return st;
    if (G == nullptr) return fail(NLCORE_STATUS_INVALID_VALUE, "newton_schulz: G is NULL");
    if (O == nullptr) return fail(NLCORE_STATUS_INVALID_VALUE, "newton_schulz: O is NULL");
    if (O == G)
      return fail(NLCORE_STATUS_INVALID_VALUE,
                  "newton_schulz: O == G (%p); the output may not alias the input", O);
    const size_t bytes = static_cast<size_t>(P.batch * P.rows * P.cols) * dtype_bytes(P.io);
    if (ranges_overlap(G, bytes, O, bytes))
      return fail(NLCORE_STATUS_INVALID_VALUE,
                  "newton_schulz: O (%p) overlaps G (%p) (%zu bytes each)", O, G, bytes);
    if (reinterpret_cast<uintptr_t>(G) % dtype_bytes(P.io) != 0 ||
        reinterpret_cast<uintptr_t>(O) % dtype_bytes(P.io) != 0)
      return fail(NLCORE_STATUS_INVALID_VALUE,
                  "newton_schulz: G (%p) and O (%p) must be aligned to the io_dtype size (%zu)", G,
                  O, dtype_bytes(P.io));
    if (P.workspace > 0) {
      if (workspace == nullptr)
        return fail(NLCORE_STATUS_INVALID_VALUE,
                    "newton_schulz: workspace is NULL but %zu bytes are required", P.workspace);
      if (reinterpret_cast<uintptr_t>(workspace) % kWorkspaceAlign != 0)
        return fail(NLCORE_STATUS_INVALID_VALUE,
                    "newton_schulz: workspace (%p) must be %zu-byte aligned", workspace,
                    kWorkspaceAlign);
      if (workspace_bytes < P.workspace)
        return fail(NLCORE_STATUS_INSUFFICIENT_WORKSPACE,
                    "newton_schulz: workspace_bytes = %zu is smaller than the %zu bytes required",
                    workspace_bytes, P.workspace);
    }
    // ---- from here on: CUDA runtime calls ----
    if (P.path == kPathSmall) return run_small(P, problem, G, O, stream);
    if (P.path == kPathCluster) return run_cluster(P, problem, G, O, stream);
    return run_general(P, problem, G, O, workspace, stream);
  } catch (...) {
    return fail(NLCORE_STATUS_INTERNAL_ERROR, "newton_schulz: unexpected C++ exception");
  }
}

}  // extern "C"
