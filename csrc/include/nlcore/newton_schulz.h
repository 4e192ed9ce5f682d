/*
 * nlcore C API — batched Newton–Schulz orthogonalization (DESIGN §3.4).
 *
 * For each of `batch` independent row-major matrices G_i (rows x cols):
 *   X = G_i in compute_dtype; transpose if rows > cols (so X is m x n with m <= n);
 *   X = X / denom,  denom = norm_additive ? (||X||_F * norm_scale + eps)
 *                                        : max(||X||_F * norm_scale, eps);
 *   for s in 0..steps-1:  A = X X^T;  X = a_s X + (b_s A + c_s A^2) X;
 *   O_i = X (transposed back to rows x cols), in io_dtype.
 * GEMM operands are rounded to compute_dtype (bf16/fp16) and accumulate in fp32; the
 * a/b/c combinations and the normalization are fp32. compute_dtype FLOAT32 means fp32
 * arithmetic (no plain TF32).
 *
 * Launchers never allocate and never synchronize with the host; all work is enqueued
 * on `stream`. The coefficient array is read on the host during the call only.
 */
#ifndef NLCORE_NEWTON_SCHULZ_H_
#define NLCORE_NEWTON_SCHULZ_H_

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#include "nlcore/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Flags selecting kernel variants. DEFAULT lets the library choose (proven paths only). */
enum {
  NLCORE_NS_FLAG_DEFAULT = 0,
  NLCORE_NS_FLAG_FORCE_SMALL = 1u << 0,   /* on-chip one-block-per-matrix kernel (min(m,n) <= 128) */
  NLCORE_NS_FLAG_FORCE_GENERAL = 1u << 1, /* GEMM path (any size) */
  NLCORE_NS_FLAG_SYMMETRIC = 1u << 2,     /* experimental: one triangle of X X^T and A^2 */
  NLCORE_NS_FLAG_CLUSTER = 1u << 3        /* experimental: 2-block cluster for 256-wide matrices */
};

/* Maximum number of steps a single call accepts. */
#define NLCORE_NS_MAX_STEPS 1024

typedef struct nlcore_ns_problem_t {
  int64_t batch;                /* number of matrices, >= 1 */
  int64_t rows;                 /* rows of each G_i, >= 1 */
  int64_t cols;                 /* cols of each G_i, >= 1 */
  nlcore_dtype_t io_dtype;      /* dtype of G and O: FLOAT32, BFLOAT16 or FLOAT16 */
  nlcore_dtype_t compute_dtype; /* GEMM operand dtype: BFLOAT16, FLOAT16 or FLOAT32 */
  int32_t steps;                /* 1 ..= NLCORE_NS_MAX_STEPS */
  const float* coefficients;    /* host array [steps][3] = (a_s, b_s, c_s) */
  float eps;                    /* normalization epsilon */
  float norm_scale;             /* 1.0 for "muon", 1.01 for "polar_express" */
  int32_t norm_additive;        /* 0: max(||X||*scale, eps); 1: ||X||*scale + eps */
  uint32_t flags;               /* NLCORE_NS_FLAG_* */
} nlcore_ns_problem_t;

/* Bytes of device workspace newton_schulz_forward needs for `problem` (0 is possible).
 * Returns NLCORE_STATUS_INVALID_VALUE for an invalid problem. */
NLCORE_API nlcore_status_t nlcore_newton_schulz_workspace_size(
    const nlcore_ns_problem_t* problem, size_t* workspace_bytes);

/* O = NS(G). G and O: device pointers to contiguous row-major [batch, rows, cols] arrays in
 * io_dtype (O may not alias G). workspace: device memory of at least
 * nlcore_newton_schulz_workspace_size() bytes, 256-byte aligned (may be NULL if that is 0). */
NLCORE_API nlcore_status_t nlcore_newton_schulz_forward(
    const nlcore_ns_problem_t* problem, const void* G, void* O,
    void* workspace, size_t workspace_bytes, cudaStream_t stream);

/* Which path forward() would take for `problem`: 0 = small on-chip kernel, 1 = GEMM path,
 * 2 = 2-block cluster kernel. For tests and benchmarks. */
NLCORE_API nlcore_status_t nlcore_newton_schulz_path(const nlcore_ns_problem_t* problem,
                                                     int32_t* path);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* NLCORE_NEWTON_SCHULZ_H_ */
