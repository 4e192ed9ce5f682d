/*
 * nlcore C API - self-modifying memories (DESIGN section 3.3), forward and backward.
 *
 * Hope's keys, values, learning rates and retention gates come from four 2-layer MLP memories
 * M_k, M_v, M_eta, M_alpha (memory index m = 0, 1, 2, 3 in that order), each as in
 * nlcore/memory_mlp.h with residual = 1, objective "l2" and self_target = 1, all four advancing
 * on one chunk grid. For chunk c of a sequence, per head, every memory reads the chunk's x rows
 * at its chunk-start weights, r_m,t = x_t + W_out,m sigma(W_in,m x_t), and
 *   k_t   = r_k,t / sqrt(||r_k,t||^2 + 1e-12)          v_t = r_v,t
 *   eta_t = eta_max * sigmoid(w_eta . r_eta,t + b_eta)  g_t = log sigmoid(w_alpha . r_alpha,t + b_alpha)
 * then every memory takes the chunk step of the MLP memory scan with keys k, values v (its own
 * targets M_m(v_t)), rates eta and log-retention g. The exact per-chunk math and its explicit
 * backward are written out in csrc/cpu/self_modifying.h; the CUDA kernels follow it chunk by
 * chunk.
 * Precision: BFLOAT16 / FLOAT16 inputs round every GEMM operand (fp32 weights included) to
 * `dtype` and accumulate in fp32; FLOAT32 inputs use fp32 math (never TF32). The reads r, the
 * normalization, the gates, the accumulators and the updates stay fp32. The memories' steps use
 * k and v as written to the outputs (rounded to `dtype`).
 *
 * Layouts (all contiguous, row-major; M = 4 memories, N = num_sequences, F = hidden_dim,
 * D = head_dim):
 *   x, k, v, grad_k, grad_v, dx        [batch, seqlen, heads, D]                   dtype
 *   eta, g, grad_eta, grad_g           [batch, seqlen, heads]                      FLOAT32
 *   w_in  (+ dw_in)                    [M, heads, F, D] (weights_shared = 1) or
 *                                      [M, N, heads, F, D]                         FLOAT32
 *   w_out (+ dw_out)                   [M, heads, D, F] or [M, N, heads, D, F]     FLOAT32
 *   p_in, acc_in and the final w_in, p_in, acc_in (+ their gradients)
 *                                      [M, N, heads, F, D]                         FLOAT32
 *   p_out, acc_out and the final w_out, p_out, acc_out (+ their gradients)
 *                                      [M, N, heads, D, F]                         FLOAT32
 *   acc_g, final acc_g (+ gradients)   [N, heads] (shared by the four memories)    FLOAT32
 *   n, final n                         [N] (shared by the four memories)           INT64
 *   w_eta, w_alpha (+ dw_eta, dw_alpha) [heads, D]                                 FLOAT32
 *   b_eta, b_alpha (+ db_eta, db_alpha) [heads], or NULL (= 0)                     FLOAT32
 *   cu_seqlens                         [N + 1] device offsets (INT32 or INT64), batch == 1
 * Launchers never allocate and never synchronize with the host (cu_seqlens and n are read on
 * the device only); all scratch lives in the caller's workspace.
 */
#ifndef NLCORE_SELF_MODIFYING_H_
#define NLCORE_SELF_MODIFYING_H_

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#include "nlcore/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NLCORE_SELF_MODIFYING_MEMORIES 4 /* k, v, eta, alpha */

enum {
  NLCORE_SELF_MODIFYING_ACT_SILU = 0, /* sigma(z) = z sigmoid(z) */
  NLCORE_SELF_MODIFYING_ACT_GELU = 1  /* sigma(z) = z Phi(z) (exact, erf) */
};

enum { NLCORE_SELF_MODIFYING_FLAG_DEFAULT = 0 };

typedef struct nlcore_self_modifying_problem_t {
  int64_t batch;              /* B (1 with cu_seqlens) */
  int64_t seqlen;             /* T: tokens per batch row (the packed length with cu_seqlens) */
  int64_t num_sequences;      /* N: batch, or the number of packed sequences */
  int32_t heads;              /* H */
  int32_t head_dim;           /* D in {32, 64, 128} */
  int32_t hidden_dim;         /* F in {D, 2D, 4D} */
  nlcore_dtype_t dtype;       /* x, k, v and their gradients: FLOAT32, BFLOAT16, FLOAT16 */
  int64_t chunk_size;         /* C >= 1: tokens per inner update (semantic) */
  float eta_max;              /* > 0, finite */
  float momentum;             /* mu of P <- mu P - G (finite) */
  int32_t activation;         /* NLCORE_SELF_MODIFYING_ACT_* */
  int32_t dgd_erase;          /* 1: G_in gains the DGD erase term W_in sum eta_t k_t k_t^T */
  int32_t weights_shared;     /* 1: w_in / w_out are [M, H, ...], shared over the sequences */
  int32_t has_initial_state;  /* p_in, p_out, acc_in, acc_out, acc_g and n given (else zeros);
                                 requires weights_shared = 0 */
  int64_t checkpoint_every;   /* backward: chunks between saved states (>= 1) */
  const void* cu_seqlens;     /* device pointer or NULL */
  nlcore_dtype_t cu_seqlens_dtype; /* INT32 or INT64 */
  uint32_t flags;             /* NLCORE_SELF_MODIFYING_FLAG_* (none defined yet: 0) */
} nlcore_self_modifying_problem_t;

typedef struct nlcore_self_modifying_tensors_t {
  const void* x;
  const void* w_in;
  const void* w_out;
  const void* w_eta;
  const void* w_alpha;
  const void* b_eta;    /* NULL: no bias (0) */
  const void* b_alpha;  /* NULL: no bias (0) */
  /* initial state beyond the weights: all NULL unless has_initial_state */
  const void* p_in;
  const void* p_out;
  const void* acc_in;
  const void* acc_out;
  const void* acc_g;
  const void* n;        /* INT64, each in [0, chunk_size) */
  /* forward outputs (all required by the forward; ignored by the backward) */
  void* k;
  void* v;
  void* eta;
  void* g;
  void* w_in_final;
  void* w_out_final;
  void* p_in_final;
  void* p_out_final;
  void* acc_in_final;
  void* acc_out_final;
  void* acc_g_final;
  void* n_final;        /* INT64 */
} nlcore_self_modifying_tensors_t;

typedef struct nlcore_self_modifying_grads_t {
  /* gradients of the outputs; each may be NULL (zero) */
  const void* grad_k;
  const void* grad_v;
  const void* grad_eta;
  const void* grad_g;
  /* gradients of the final state; each may be NULL (zero) */
  const void* grad_w_in;
  const void* grad_w_out;
  const void* grad_p_in;
  const void* grad_p_out;
  const void* grad_acc_in;
  const void* grad_acc_out;
  const void* grad_acc_g;
  void* dx;        /* required */
  void* dw_in;     /* required; w_in's layout (summed over the sequences when weights_shared) */
  void* dw_out;    /* required */
  void* dw_eta;    /* required */
  void* dw_alpha;  /* required */
  void* db_eta;    /* written iff tensors->b_eta is given */
  void* db_alpha;  /* written iff tensors->b_alpha is given */
  void* dp_in;     /* dp_in .. dacc_g: written iff has_initial_state */
  void* dp_out;
  void* dacc_in;
  void* dacc_out;
  void* dacc_g;
} nlcore_self_modifying_grads_t;

/* Device workspace bytes for forward (backward = 0) or backward (backward = 1). */
NLCORE_API nlcore_status_t nlcore_self_modifying_workspace_size(
    const nlcore_self_modifying_problem_t* problem, int32_t backward, size_t* workspace_bytes);

/* k, v, eta, g and the final state from the inputs. */
NLCORE_API nlcore_status_t nlcore_self_modifying_forward(
    const nlcore_self_modifying_problem_t* problem,
    const nlcore_self_modifying_tensors_t* tensors, void* workspace, size_t workspace_bytes,
    cudaStream_t stream);

/* Gradients of every input (recomputes the forward from checkpoints). The forward outputs in
 * `tensors` are ignored. */
NLCORE_API nlcore_status_t nlcore_self_modifying_backward(
    const nlcore_self_modifying_problem_t* problem,
    const nlcore_self_modifying_tensors_t* tensors, const nlcore_self_modifying_grads_t* grads,
    void* workspace, size_t workspace_bytes, cudaStream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* NLCORE_SELF_MODIFYING_H_ */
