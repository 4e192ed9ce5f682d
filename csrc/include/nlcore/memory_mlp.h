/*
 * nlcore C API - MLP memory scan (DESIGN section 3.2), forward and backward.
 *
 * Per sequence n and head h, a 2-layer MLP memory M(u) = [u +] W_out sigma(W_in u) with
 * W_in [F, D], W_out [D, F] is read on every token and trained in context once per chunk of
 * `chunk_size` tokens (weights, momentum buffers P, open-chunk accumulators A, a_g and the
 * open chunk's token count n form the state). The exact per-chunk math and its explicit
 * backward (second order, through the inner gradient) are written out in
 * csrc/cpu/memory_mlp.h; the CUDA kernels follow it chunk by chunk.
 * Precision: BFLOAT16 / FLOAT16 inputs round every GEMM operand (fp32 weights included) to
 * `dtype` and accumulate in fp32; FLOAT32 inputs use fp32 math (never TF32). Activations,
 * accumulators and the updates stay fp32.
 *
 * Layouts (all contiguous, row-major):
 *   x, k, v, y, grad_y, dx, dk, dv     [batch, seqlen, heads, head_dim]            dtype
 *   eta, g, deta, dg                   [batch, seqlen, heads]                      FLOAT32
 *   w_in  (+ dw_in)                    [heads, hidden, head_dim] (weights_shared = 1) or
 *                                      [num_sequences, heads, hidden, head_dim]    FLOAT32
 *   w_out (+ dw_out)                   [heads, head_dim, hidden] or
 *                                      [num_sequences, heads, head_dim, hidden]    FLOAT32
 *   p_in, acc_in and the final w_in, p_in, acc_in (+ their gradients)
 *                                      [num_sequences, heads, hidden, head_dim]    FLOAT32
 *   p_out, acc_out and the final w_out, p_out, acc_out (+ their gradients)
 *                                      [num_sequences, heads, head_dim, hidden]    FLOAT32
 *   acc_g, final acc_g (+ gradients)   [num_sequences, heads]                      FLOAT32
 *   n, final n                         [num_sequences]                             INT64
 *   cu_seqlens                         [num_sequences + 1] device offsets (INT32 or INT64),
 *                                      batch == 1
 * Launchers never allocate and never synchronize with the host (cu_seqlens and n are read on
 * the device only); all scratch lives in the caller's workspace.
 *
 * Kernels (DESIGN section 7). By default the forward and the backward run the step-one kernels:
 * tile GEMMs launched by a host loop over the chunk index, the state stepped in global memory.
 * NLCORE_MEMORY_MLP_FLAG_PERSISTENT (experimental, forward only) asks for the persistent
 * kernel instead: one launch in which a thread-block cluster of 1, 2, 4 or 8 CTAs per
 * (sequence, head) walks every chunk with the weights, momentum buffers and inner gradient
 * kept on chip, the hidden units split over the cluster (distributed shared memory carries
 * the second layer's sums). It needs an sm_90 image and a compute capability 9.x device with
 * cluster launch; every supported (head_dim, hidden_dim) fits (up to 217 KiB of shared memory
 * per CTA). When the device or build cannot run it, the forward silently takes the step-one
 * path; nlcore_memory_mlp_forward_path says which path a problem takes and why. The backward
 * accepts the flag and always runs step one (its per-segment recompute is not persistent).
 */
#ifndef NLCORE_MEMORY_MLP_H_
#define NLCORE_MEMORY_MLP_H_

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#include "nlcore/status.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  NLCORE_MEMORY_MLP_ACT_SILU = 0, /* sigma(z) = z sigmoid(z) */
  NLCORE_MEMORY_MLP_ACT_GELU = 1  /* sigma(z) = z Phi(z) (exact, erf) */
};

enum {
  NLCORE_MEMORY_MLP_OBJECTIVE_L2 = 0, /* l_t = 1/2 ||p_t - target_t||^2 */
  NLCORE_MEMORY_MLP_OBJECTIVE_DOT = 1 /* l_t = -<p_t, target_t> */
};

enum {
  NLCORE_MEMORY_MLP_FLAG_DEFAULT = 0,
  NLCORE_MEMORY_MLP_FLAG_PERSISTENT = 1 /* forward: the persistent cluster kernel where it runs */
};

enum {
  NLCORE_MEMORY_MLP_PATH_STEP = 0,      /* step one: chunk-loop tile GEMMs (the default) */
  NLCORE_MEMORY_MLP_PATH_PERSISTENT = 1 /* one launch, weights on chip, a cluster per (n, h) */
};

typedef struct nlcore_memory_mlp_problem_t {
  int64_t batch;              /* B (1 with cu_seqlens) */
  int64_t seqlen;             /* T: tokens per batch row (the packed length with cu_seqlens) */
  int64_t num_sequences;      /* N: batch, or the number of packed sequences */
  int32_t heads;              /* H */
  int32_t head_dim;           /* D in {32, 64, 128} */
  int32_t hidden_dim;         /* F in {D, 2D, 4D} */
  nlcore_dtype_t dtype;       /* x, k, v, y and their gradients: FLOAT32, BFLOAT16, FLOAT16 */
  nlcore_dtype_t gate_dtype;  /* eta, g and their gradients: FLOAT32 */
  int64_t chunk_size;         /* C >= 1: tokens per inner update (semantic) */
  float momentum;             /* mu of P <- mu P - G */
  int32_t activation;         /* NLCORE_MEMORY_MLP_ACT_* */
  int32_t objective;          /* NLCORE_MEMORY_MLP_OBJECTIVE_* */
  int32_t residual;           /* 1: M(u) = u + W_out sigma(W_in u) */
  int32_t self_target;        /* 1: target_t = M(v_t), else v_t */
  int32_t dgd_erase;          /* 1: G_in gains the DGD erase term W_in sum eta_t k_t k_t^T */
  int32_t has_g;              /* g given (else 0) */
  int32_t weights_shared;     /* 1: w_in / w_out are [H, ...], shared over the sequences */
  int32_t has_initial_state;  /* p_in, p_out, acc_in, acc_out, acc_g and n given (else zeros);
                                 requires weights_shared = 0 */
  int64_t checkpoint_every;   /* backward: chunks between saved states (>= 1) */
  const void* cu_seqlens;     /* device pointer or NULL */
  nlcore_dtype_t cu_seqlens_dtype; /* INT32 or INT64 */
  uint32_t flags;             /* NLCORE_MEMORY_MLP_FLAG_* bits */
} nlcore_memory_mlp_problem_t;

typedef struct nlcore_memory_mlp_tensors_t {
  const void* x;
  const void* k;
  const void* v;
  const void* eta;
  const void* g;        /* NULL unless has_g */
  const void* w_in;
  const void* w_out;
  /* initial state beyond the weights: all NULL unless has_initial_state */
  const void* p_in;
  const void* p_out;
  const void* acc_in;
  const void* acc_out;
  const void* acc_g;
  const void* n;        /* INT64, each in [0, chunk_size) */
  /* forward outputs (all required by the forward; ignored by the backward) */
  void* y;
  void* w_in_final;
  void* w_out_final;
  void* p_in_final;
  void* p_out_final;
  void* acc_in_final;
  void* acc_out_final;
  void* acc_g_final;
  void* n_final;        /* INT64 */
} nlcore_memory_mlp_tensors_t;

typedef struct nlcore_memory_mlp_grads_t {
  const void* grad_y;          /* required */
  /* gradients of the final state; each may be NULL (zero) */
  const void* grad_w_in;
  const void* grad_w_out;
  const void* grad_p_in;
  const void* grad_p_out;
  const void* grad_acc_in;
  const void* grad_acc_out;
  const void* grad_acc_g;
  void* dx;
  void* dk;
  void* dv;
  void* deta;
  void* dg;        /* written iff has_g */
  void* dw_in;     /* w_in's layout (summed over the sequences when weights_shared) */
  void* dw_out;
  void* dp_in;     /* dp_in .. dacc_g: written iff has_initial_state */
  void* dp_out;
  void* dacc_in;
  void* dacc_out;
  void* dacc_g;
} nlcore_memory_mlp_grads_t;

/* Which kernel path the forward takes for a problem (nlcore_memory_mlp_forward_path). */
typedef struct nlcore_memory_mlp_path_t {
  int32_t path;         /* NLCORE_MEMORY_MLP_PATH_* */
  int32_t cluster_size; /* PERSISTENT: CTAs per (sequence, head); else 0 */
  int64_t smem_bytes;   /* PERSISTENT: dynamic shared memory per CTA; else 0 */
  const char* reason;   /* static text: why STEP was taken ("" for PERSISTENT); never NULL */
} nlcore_memory_mlp_path_t;

/* The path nlcore_memory_mlp_forward takes for `problem` on the current device. Validates the
 * problem like the forward. Without NLCORE_MEMORY_MLP_FLAG_PERSISTENT the answer is STEP and
 * no CUDA call is made; with it, the current device and the loaded kernel image are queried
 * (no stream work, no synchronization); a failing query means STEP (the reason says so). */
NLCORE_API nlcore_status_t nlcore_memory_mlp_forward_path(
    const nlcore_memory_mlp_problem_t* problem, nlcore_memory_mlp_path_t* path);

/* Device workspace bytes for forward (backward = 0) or backward (backward = 1). With
 * NLCORE_MEMORY_MLP_FLAG_PERSISTENT the forward's size is that of the path taken on the
 * current device (0 for PERSISTENT): query it with the device current that will run it. */
NLCORE_API nlcore_status_t nlcore_memory_mlp_workspace_size(
    const nlcore_memory_mlp_problem_t* problem, int32_t backward, size_t* workspace_bytes);

/* y and the final state from the inputs. */
NLCORE_API nlcore_status_t nlcore_memory_mlp_forward(const nlcore_memory_mlp_problem_t* problem,
                                                     const nlcore_memory_mlp_tensors_t* tensors,
                                                     void* workspace, size_t workspace_bytes,
                                                     cudaStream_t stream);

/* Gradients of every input (recomputes the forward from checkpoints). The forward outputs in
 * `tensors` are ignored. */
NLCORE_API nlcore_status_t nlcore_memory_mlp_backward(const nlcore_memory_mlp_problem_t* problem,
                                                      const nlcore_memory_mlp_tensors_t* tensors,
                                                      const nlcore_memory_mlp_grads_t* grads,
                                                      void* workspace, size_t workspace_bytes,
                                                      cudaStream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* NLCORE_MEMORY_MLP_H_ */
