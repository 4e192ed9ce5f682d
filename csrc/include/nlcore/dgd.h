/*
 * nlcore C API — DGD linear fast-weight memory (DESIGN §3.1), forward and backward.
 *
 * Per sequence n and value head j (q/k head j / (heads_v / heads_qk)), state S in R^{K x V}
 * (S_0 = initial_state or 0), for each token t:
 *   S_t = exp(g_t) S_{t-1} - a_t k_t (k_t^T S_{t-1}) + beta_t k_t v_t^T,   a = erase or beta
 *   o_t = scale S_t^T q_t   (read_before = 0)   or   scale S_{t-1}^T q_t   (read_before = 1)
 * computed by the chunk form of DESIGN §3.1 (chunk-local preparation, sequential state passing
 * across chunks, chunk-local outputs) exactly as the CPU twin csrc/cpu/dgd.cpp does it.
 * Precision: GEMM operands rounded to `dtype` (the fp32 state included), fp32 accumulation;
 * gates, cumulative sums, the triangular solve and the state updates in fp32.
 *
 * Layouts (all contiguous, row-major):
 *   q, k, dq, dk            [batch, seqlen, heads_qk, head_dim_k]      dtype
 *   v, o, dv, grad_o        [batch, seqlen, heads_v, head_dim_v]       dtype
 *   beta, g, erase (+ d*)   [batch, seqlen, heads_v]                   gate_dtype
 *   initial_state, final_state, grad_final_state, dinitial_state
 *                           [num_sequences, heads_v, head_dim_k, head_dim_v]   FLOAT32
 *   cu_seqlens              [num_sequences + 1] device offsets (INT32 or INT64), batch == 1
 * Launchers never allocate and never synchronize with the host; variable-length chunk tables
 * are built on the device inside the workspace.
 */
#ifndef NLCORE_DGD_H_
#define NLCORE_DGD_H_

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#include "nlcore/status.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  NLCORE_DGD_FLAG_DEFAULT = 0,
  NLCORE_DGD_FLAG_FAST = 1u << 0 /* experimental fast forms (wgmma/TMA); never the default */
};

typedef struct nlcore_dgd_problem_t {
  int64_t batch;             /* B (1 with cu_seqlens) */
  int64_t seqlen;            /* T: tokens per batch row (the packed length with cu_seqlens) */
  int64_t num_sequences;     /* N: batch, or the number of packed sequences */
  int32_t heads_qk;          /* H */
  int32_t heads_v;           /* HV, a multiple of H */
  int32_t head_dim_k;        /* K in {32, 64, 128, 256} */
  int32_t head_dim_v;        /* V in {32, 64, 128, 256} */
  nlcore_dtype_t dtype;      /* q, k, v, o and their gradients: FLOAT32, BFLOAT16, FLOAT16 */
  nlcore_dtype_t gate_dtype; /* beta, g, erase and their gradients: FLOAT32 or == dtype */
  int32_t has_g;             /* g given (else 0) */
  int32_t has_erase;         /* erase given (else a = beta) */
  int32_t has_initial_state; /* initial_state given (else 0) */
  int32_t read_before;       /* 1: o_t reads S_{t-1} */
  float scale;               /* output scale */
  int32_t chunk_size;        /* tokens per chunk: 16, 32 or 64 */
  const void* cu_seqlens;    /* device pointer or NULL */
  nlcore_dtype_t cu_seqlens_dtype; /* INT32 or INT64 */
  uint32_t flags;            /* NLCORE_DGD_FLAG_* */
} nlcore_dgd_problem_t;

typedef struct nlcore_dgd_tensors_t {
  const void* q;
  const void* k;
  const void* v;
  const void* beta;
  const void* g;             /* NULL unless has_g */
  const void* erase;         /* NULL unless has_erase */
  const void* initial_state; /* NULL unless has_initial_state */
  void* o;
  void* final_state;         /* may be NULL: not written */
} nlcore_dgd_tensors_t;

typedef struct nlcore_dgd_grads_t {
  const void* grad_o;           /* required */
  const void* grad_final_state; /* may be NULL (zero) */
  void* dq;
  void* dk;
  void* dv;
  void* dbeta;
  void* dg;             /* written iff has_g */
  void* derase;         /* written iff has_erase */
  void* dinitial_state; /* written iff has_initial_state */
} nlcore_dgd_grads_t;

/* Device workspace bytes for forward (backward = 0) or backward (backward = 1). */
NLCORE_API nlcore_status_t nlcore_dgd_workspace_size(const nlcore_dgd_problem_t* problem,
                                                     int32_t backward, size_t* workspace_bytes);

/* o (and final_state if non-NULL) from the inputs. */
NLCORE_API nlcore_status_t nlcore_dgd_forward(const nlcore_dgd_problem_t* problem,
                                              const nlcore_dgd_tensors_t* tensors,
                                              void* workspace, size_t workspace_bytes,
                                              cudaStream_t stream);

/* Gradients of every input (recomputes the forward's chunk states). `tensors->o` and
 * `tensors->final_state` are ignored. */
NLCORE_API nlcore_status_t nlcore_dgd_backward(const nlcore_dgd_problem_t* problem,
                                               const nlcore_dgd_tensors_t* tensors,
                                               const nlcore_dgd_grads_t* grads, void* workspace,
                                               size_t workspace_bytes, cudaStream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* NLCORE_DGD_H_ */
