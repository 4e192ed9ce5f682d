// nlcore C API for M3 (nlcore/m3.h): validation of the multi-tensor arguments and the packing of
// the host pointer arrays into per-launch chunks. Plain C++ (no kernels here). Every validation
// failure returns before any CUDA runtime call.
#include <cmath>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/error.h"
#include "m3/launchers.h"
#include "nlcore/m3.h"

namespace nlcore::m3 {
namespace {

using detail::fail;

using detail::dtype_name;

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

nlcore_status_t check_common(const char* op, int64_t num_tensors, const int64_t* numel,
                             nlcore_dtype_t dtype) {
  if (num_tensors < 0)
    return fail(NLCORE_STATUS_INVALID_VALUE, "%s: num_tensors must be >= 0, got %lld", op,
                (long long)num_tensors);
  if (dtype != NLCORE_DTYPE_FLOAT32 && dtype != NLCORE_DTYPE_BFLOAT16 &&
      dtype != NLCORE_DTYPE_FLOAT16)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "%s: dtype must be NLCORE_DTYPE_FLOAT32, BFLOAT16 or FLOAT16, got %s (%d)", op,
                dtype_name(dtype), (int)dtype);
  if (num_tensors > 0 && numel == nullptr)
    return fail(NLCORE_STATUS_INVALID_VALUE, "%s: numel is NULL with num_tensors = %lld", op,
                (long long)num_tensors);
  for (int64_t i = 0; i < num_tensors; ++i)
    if (numel[i] < 0)
      return fail(NLCORE_STATUS_INVALID_VALUE, "%s: numel[%lld] must be >= 0, got %lld", op,
                  (long long)i, (long long)numel[i]);
  return NLCORE_STATUS_SUCCESS;
}

// The host array itself must exist; its entries may be NULL only for empty tensors.
template <typename Ptr>
nlcore_status_t check_list(const char* op, const char* name, Ptr const* list, int64_t num_tensors,
                           const int64_t* numel) {
  if (num_tensors == 0) return NLCORE_STATUS_SUCCESS;
  if (list == nullptr)
    return fail(NLCORE_STATUS_INVALID_VALUE, "%s: %s is NULL with num_tensors = %lld", op, name,
                (long long)num_tensors);
  for (int64_t i = 0; i < num_tensors; ++i)
    if (numel[i] > 0 && list[i] == nullptr)
      return fail(NLCORE_STATUS_INVALID_VALUE, "%s: %s[%lld] is NULL (numel %lld)", op, name,
                  (long long)i, (long long)numel[i]);
  return NLCORE_STATUS_SUCCESS;
}

}  // namespace
}  // namespace nlcore::m3

using namespace nlcore::m3;

extern "C" NLCORE_API nlcore_status_t nlcore_m3_muon_pre(const nlcore_m3_muon_pre_t* a,
                                                         cudaStream_t stream) {
  const char* op = "m3_muon_pre";
  if (a == nullptr) return fail(NLCORE_STATUS_INVALID_VALUE, "%s: args is NULL", op);
  nlcore_status_t st = check_common(op, a->num_tensors, a->numel, a->dtype);
  if (st != NLCORE_STATUS_SUCCESS) return st;
  if (!std::isfinite(a->beta1))
    return fail(NLCORE_STATUS_INVALID_VALUE, "%s: beta1 must be finite, got %g", op, a->beta1);
  if (a->nesterov != 0 && a->nesterov != 1)
    return fail(NLCORE_STATUS_INVALID_VALUE, "%s: nesterov must be 0 or 1, got %d", op,
                (int)a->nesterov);
  if ((st = check_list(op, "momentum", a->momentum, a->num_tensors, a->numel)) ||
      (st = check_list(op, "slow_sum", a->slow_sum, a->num_tensors, a->numel)) ||
      (st = check_list(op, "fast", a->fast, a->num_tensors, a->numel)) ||
      (st = check_list(op, "grads", a->grads, a->num_tensors, a->numel)))
    return st;

  PreChunk c{};
  c.w_m1 = static_cast<float>(1.0 - a->beta1);
  c.w_fast = static_cast<float>(a->beta1);
  c.nesterov = a->nesterov;
  int64_t max_n = 0;
  for (int64_t i = 0; i < a->num_tensors; ++i) {
    const int64_t n = a->numel[i];
    if (n == 0) continue;
    const int k = c.count++;
    c.m1[k] = a->momentum[i];
    c.s[k] = a->slow_sum[i];
    c.fast[k] = a->fast[i];
    c.g[k] = a->grads[i];
    c.n[k] = n;
    c.vec[k] = aligned16(c.m1[k]) && aligned16(c.s[k]) && aligned16(c.fast[k]) &&
               aligned16(c.g[k]);
    if (n > max_n) max_n = n;
    if (c.count == kMaxTensors) {
      if ((st = launch_pre(c, max_n, a->dtype, stream))) return st;
      c.count = 0;
      max_n = 0;
    }
  }
  if (c.count > 0) return launch_pre(c, max_n, a->dtype, stream);
  return NLCORE_STATUS_SUCCESS;
}

extern "C" NLCORE_API nlcore_status_t nlcore_m3_muon_post(const nlcore_m3_muon_post_t* a,
                                                          cudaStream_t stream) {
  const char* op = "m3_muon_post";
  if (a == nullptr) return fail(NLCORE_STATUS_INVALID_VALUE, "%s: args is NULL", op);
  nlcore_status_t st = check_common(op, a->num_tensors, a->numel, a->dtype);
  if (st != NLCORE_STATUS_SUCCESS) return st;
  if (a->num_tensors > 0 && a->lr == nullptr)
    return fail(NLCORE_STATUS_INVALID_VALUE, "%s: lr is NULL with num_tensors = %lld", op,
                (long long)a->num_tensors);
  if (!std::isfinite(a->decay))
    return fail(NLCORE_STATUS_INVALID_VALUE, "%s: decay must be finite, got %g", op,
                (double)a->decay);
  if (!std::isfinite(a->alpha))
    return fail(NLCORE_STATUS_INVALID_VALUE, "%s: alpha must be finite, got %g", op,
                (double)a->alpha);
  for (int64_t i = 0; i < a->num_tensors; ++i)
    if (!std::isfinite(a->lr[i]))
      return fail(NLCORE_STATUS_INVALID_VALUE, "%s: lr[%lld] must be finite, got %g", op,
                  (long long)i, (double)a->lr[i]);
  if ((st = check_list(op, "params", a->params, a->num_tensors, a->numel)) ||
      (st = check_list(op, "updates", a->updates, a->num_tensors, a->numel)) ||
      (st = check_list(op, "slow_update", a->slow_update, a->num_tensors, a->numel)))
    return st;

  PostChunk c{};
  c.decay = a->decay;
  c.alpha = a->alpha;
  int64_t max_n = 0;
  for (int64_t i = 0; i < a->num_tensors; ++i) {
    const int64_t n = a->numel[i];
    if (n == 0) continue;
    const int k = c.count++;
    c.p[k] = a->params[i];
    c.u[k] = a->updates[i];
    c.o2[k] = a->slow_update[i];
    c.n[k] = n;
    c.lr[k] = a->lr[i];
    c.vec[k] = aligned16(c.p[k]) && aligned16(c.u[k]) && aligned16(c.o2[k]);
    if (n > max_n) max_n = n;
    if (c.count == kMaxTensors) {
      if ((st = launch_post(c, max_n, a->dtype, stream))) return st;
      c.count = 0;
      max_n = 0;
    }
  }
  if (c.count > 0) return launch_post(c, max_n, a->dtype, stream);
  return NLCORE_STATUS_SUCCESS;
}
