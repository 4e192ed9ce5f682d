/*
 * nlcore C API — the fused elementwise step of the M3 optimizer's muon variant (DESIGN §4).
 *
 * Multi-tensor launchers: one call handles every matrix parameter of an optimizer group. The
 * caller passes HOST arrays of DEVICE pointers and HOST element counts; the launcher packs them
 * into kernel parameters in chunks of at most NLCORE_M3_MAX_TENSORS_PER_LAUNCH tensors (one
 * launch per chunk), so there is no allocation, no workspace and no host synchronization. The
 * host arrays may be freed as soon as the call returns.
 *
 * All tensors of one call share `dtype` (FLOAT32, BFLOAT16 or FLOAT16): parameters, gradients,
 * the momentum / slow-sum buffers, `fast`, the orthogonalized updates. Each tensor is a
 * contiguous run of numel[i] elements; the tensors with the same index in the different lists
 * have the same numel. Arithmetic is fp32; every result is rounded once to `dtype`.
 *
 * nlcore_m3_muon_pre, for each tensor i and element e (lerp as torch.lerp computes it,
 * lerp(a, b, w) = |w| < 0.5 ? a + w (b - a) : b - (b - a)(1 - w)):
 *   m1   = lerp(m1, g, 1 - beta1)
 *   s    = s + g
 *   fast = nesterov ? lerp(g, m1, beta1) : m1         (m1 the new value)
 * nlcore_m3_muon_post, for each tensor i and element e:
 *   p = p * decay
 *   p = p - lr[i] * (u + alpha * o2)
 *
 * Invalid arguments are reported (NLCORE_STATUS_INVALID_VALUE, see nlcore_last_error_message)
 * before any CUDA call.
 */
#ifndef NLCORE_M3_H_
#define NLCORE_M3_H_

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#include "nlcore/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Tensors handled by one kernel launch (the kernel-parameter chunk). */
#define NLCORE_M3_MAX_TENSORS_PER_LAUNCH 48

typedef struct nlcore_m3_muon_pre_t {
  int64_t num_tensors;       /* >= 0 (0: nothing to do) */
  const int64_t* numel;      /* host [num_tensors], each >= 0 */
  nlcore_dtype_t dtype;      /* FLOAT32, BFLOAT16 or FLOAT16 */
  double beta1;              /* fast momentum coefficient, finite */
  int32_t nesterov;          /* 0 or 1 */
  void* const* momentum;     /* host [num_tensors] of device pointers: m1, updated in place */
  void* const* slow_sum;     /* host [num_tensors]: s, updated in place */
  void* const* fast;         /* host [num_tensors]: written (the NS input) */
  const void* const* grads;  /* host [num_tensors]: g, read */
} nlcore_m3_muon_pre_t;

typedef struct nlcore_m3_muon_post_t {
  int64_t num_tensors;             /* >= 0 (0: nothing to do) */
  const int64_t* numel;            /* host [num_tensors], each >= 0 */
  nlcore_dtype_t dtype;            /* FLOAT32, BFLOAT16 or FLOAT16 */
  const float* lr;                 /* host [num_tensors]: per-tensor (adjusted) learning rate,
                                      each finite */
  float decay;                     /* weight-decay factor 1 - lr * wd, finite */
  float alpha;                     /* weight of the slow update, finite */
  void* const* params;             /* host [num_tensors] of device pointers: p, updated */
  const void* const* updates;      /* host [num_tensors]: u = NS(fast), read */
  const void* const* slow_update;  /* host [num_tensors]: o2, read */
} nlcore_m3_muon_post_t;

/* Momentum, slow-sum and the NS input of every tensor. */
NLCORE_API nlcore_status_t nlcore_m3_muon_pre(const nlcore_m3_muon_pre_t* args,
                                              cudaStream_t stream);

/* Decoupled weight decay and the parameter update of every tensor. */
NLCORE_API nlcore_status_t nlcore_m3_muon_post(const nlcore_m3_muon_post_t* args,
                                               cudaStream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* NLCORE_M3_H_ */
