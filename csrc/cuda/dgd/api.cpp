// nlcore C API for DGD (nlcore/dgd.h): validation, the workspace layout (one function shared by
// the size query, the forward and the backward) and the dispatch to the per-dtype drivers.
// Plain C++ (no kernels here). Every validation failure returns before any CUDA runtime call.
#include <cmath>
#include <cstdint>
#include <cstring>

#include <cuda_runtime_api.h>

#include "common/error.h"
#include "dgd/kernel_set.h"
#include "dgd/launchers.h"
#include "dgd/tiling.h"
#include "nlcore/dgd.h"

namespace nlcore::dgd {
namespace {

using detail::fail;

using detail::dtype_name;
size_t dtype_bytes(int d) { return d == NLCORE_DTYPE_FLOAT32 ? 4 : 2; }

struct Plan {
  Dims dims;
  Layout fwd, bwd;
  int dtype;
};

nlcore_status_t check_flag(const char* field, int32_t v) {
  if (v != 0 && v != 1)
    return fail(NLCORE_STATUS_INVALID_VALUE, "dgd: problem->%s must be 0 or 1, got %d", field,
                (int)v);
  return NLCORE_STATUS_SUCCESS;
}

nlcore_status_t check_head_dim(const char* field, int32_t d) {
  if (d < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE, "dgd: problem->%s must be >= 1, got %d", field,
                (int)d);
  if (!head_dim_ok(d))
    return fail(NLCORE_STATUS_NOT_SUPPORTED,
                "dgd: problem->%s = %d is not supported by the CUDA kernels (32, 64, 128 or 256)",
                field, (int)d);
  return NLCORE_STATUS_SUCCESS;
}

// Validates every problem field; no CUDA call.
nlcore_status_t make_plan(const nlcore_dgd_problem_t* p, Plan* out) {
  if (p == nullptr) return fail(NLCORE_STATUS_INVALID_VALUE, "dgd: problem is NULL");
  if (p->batch < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE, "dgd: problem->batch must be >= 1, got %lld",
                (long long)p->batch);
  if (p->seqlen < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE, "dgd: problem->seqlen must be >= 1, got %lld",
                (long long)p->seqlen);
  if (p->num_sequences < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE, "dgd: problem->num_sequences must be >= 1, got %lld",
                (long long)p->num_sequences);
  const bool varlen = p->cu_seqlens != nullptr;
  if (varlen) {
    if (p->batch != 1)
      return fail(NLCORE_STATUS_INVALID_VALUE,
                  "dgd: problem->batch must be 1 with cu_seqlens, got %lld", (long long)p->batch);
    if (p->cu_seqlens_dtype != NLCORE_DTYPE_INT32 && p->cu_seqlens_dtype != NLCORE_DTYPE_INT64)
      return fail(NLCORE_STATUS_INVALID_VALUE,
                  "dgd: problem->cu_seqlens_dtype must be NLCORE_DTYPE_INT32 or INT64, got %s (%d)",
                  dtype_name(p->cu_seqlens_dtype), (int)p->cu_seqlens_dtype);
  } else if (p->num_sequences != p->batch) {
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "dgd: problem->num_sequences (%lld) must equal batch (%lld) without cu_seqlens",
                (long long)p->num_sequences, (long long)p->batch);
  }
  if (p->heads_qk < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE, "dgd: problem->heads_qk must be >= 1, got %d",
                (int)p->heads_qk);
  if (p->heads_v < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE, "dgd: problem->heads_v must be >= 1, got %d",
                (int)p->heads_v);
  if (p->heads_v % p->heads_qk != 0)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "dgd: problem->heads_v (%d) must be a multiple of heads_qk (%d)", (int)p->heads_v,
                (int)p->heads_qk);
  if (p->heads_v > 65535)
    return fail(NLCORE_STATUS_NOT_SUPPORTED, "dgd: problem->heads_v = %d exceeds 65535",
                (int)p->heads_v);
  nlcore_status_t st = check_head_dim("head_dim_k", p->head_dim_k);
  if (st != NLCORE_STATUS_SUCCESS) return st;
  if ((st = check_head_dim("head_dim_v", p->head_dim_v)) != NLCORE_STATUS_SUCCESS) return st;
  const int dt = static_cast<int>(p->dtype);
  if (dt == NLCORE_DTYPE_FLOAT64)
    return fail(NLCORE_STATUS_NOT_SUPPORTED,
                "dgd: problem->dtype = FLOAT64 (%d) is not supported by the CUDA kernels "
                "(use FLOAT32, BFLOAT16 or FLOAT16)", dt);
  if (dt != NLCORE_DTYPE_FLOAT32 && dt != NLCORE_DTYPE_BFLOAT16 && dt != NLCORE_DTYPE_FLOAT16)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "dgd: problem->dtype must be NLCORE_DTYPE_FLOAT32, BFLOAT16 or FLOAT16, got %s (%d)",
                dtype_name(dt), dt);
  const int gt = static_cast<int>(p->gate_dtype);
  if (gt != NLCORE_DTYPE_FLOAT32) {
    if (gt == dt)
      return fail(NLCORE_STATUS_NOT_SUPPORTED,
                  "dgd: problem->gate_dtype = %s (%d) is not supported by the CUDA kernels: pass "
                  "beta, g and erase as FLOAT32", dtype_name(gt), gt);
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "dgd: problem->gate_dtype must be NLCORE_DTYPE_FLOAT32 (or == dtype), got %s (%d)",
                dtype_name(gt), gt);
  }
  if ((st = check_flag("has_g", p->has_g)) != NLCORE_STATUS_SUCCESS) return st;
  if ((st = check_flag("has_erase", p->has_erase)) != NLCORE_STATUS_SUCCESS) return st;
  if ((st = check_flag("has_initial_state", p->has_initial_state)) != NLCORE_STATUS_SUCCESS)
    return st;
  if ((st = check_flag("read_before", p->read_before)) != NLCORE_STATUS_SUCCESS) return st;
  if (!std::isfinite(p->scale))
    return fail(NLCORE_STATUS_INVALID_VALUE, "dgd: problem->scale must be finite, got %g",
                (double)p->scale);
  if (p->chunk_size == 16 || p->chunk_size == 32)
    return fail(NLCORE_STATUS_NOT_SUPPORTED,
                "dgd: problem->chunk_size = %d is not built (the CUDA kernels use 64)",
                (int)p->chunk_size);
  if (p->chunk_size != kChunk)
    return fail(NLCORE_STATUS_INVALID_VALUE, "dgd: problem->chunk_size must be 16, 32 or 64, got %d",
                (int)p->chunk_size);
  const uint32_t known = NLCORE_DGD_FLAG_FAST;
  if (p->flags & ~known)
    return fail(NLCORE_STATUS_INVALID_VALUE, "dgd: problem->flags has unknown bits 0x%x (flags = 0x%x)",
                p->flags & ~known, p->flags);
  if (p->flags & NLCORE_DGD_FLAG_FAST)
    return fail(NLCORE_STATUS_NOT_SUPPORTED,
                "dgd: problem->flags = 0x%x: NLCORE_DGD_FLAG_FAST (wgmma/TMA forms) is not "
                "implemented in this version of nlcore", p->flags);
  if (!dtype_built(dt))
    return fail(NLCORE_STATUS_NOT_SUPPORTED,
                "dgd: problem->dtype = %s is not built in this kernel set ('%s'); rebuild with "
                "NLCORE_KERNEL_SET=full", dtype_name(dt), kKernelSetName);

  Plan P{};
  P.dtype = dt;
  P.dims.B = p->batch;
  P.dims.T = p->seqlen;
  P.dims.N = p->num_sequences;
  P.dims.H = p->heads_qk;
  P.dims.HV = p->heads_v;
  P.dims.K = p->head_dim_k;
  P.dims.V = p->head_dim_v;
  P.dims.varlen = varlen;
  if ((long double)p->batch * p->seqlen * p->heads_v * 256 > (long double)(INT64_MAX / 8) ||
      p->num_sequences > INT32_MAX)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "dgd: problem too large (batch %lld, seqlen %lld, num_sequences %lld, heads_v %d)",
                (long long)p->batch, (long long)p->seqlen, (long long)p->num_sequences,
                (int)p->heads_v);
  P.fwd = make_layout(P.dims, false);
  P.bwd = make_layout(P.dims, true);
  if (!P.fwd.ok || !P.bwd.ok)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "dgd: problem too large: the workspace size overflows (batch %lld, seqlen %lld, "
                "heads_v %d, head_dim_k %d, head_dim_v %d)", (long long)p->batch,
                (long long)p->seqlen, (int)p->heads_v, (int)p->head_dim_k, (int)p->head_dim_v);
  if (P.fwd.nc_bound > INT32_MAX)
    return fail(NLCORE_STATUS_NOT_SUPPORTED, "dgd: %lld chunks exceed the grid limit 2^31 - 1",
                (long long)P.fwd.nc_bound);
  *out = P;
  return NLCORE_STATUS_SUCCESS;
}

nlcore_status_t need(const void* ptr, const char* name) {
  if (ptr == nullptr) return fail(NLCORE_STATUS_INVALID_VALUE, "dgd: %s is NULL", name);
  return NLCORE_STATUS_SUCCESS;
}
nlcore_status_t need_iff(const void* ptr, bool flag, const char* name, const char* flag_name) {
  if (flag && ptr == nullptr)
    return fail(NLCORE_STATUS_INVALID_VALUE, "dgd: %s is NULL but problem->%s = 1", name,
                flag_name);
  if (!flag && ptr != nullptr)
    return fail(NLCORE_STATUS_INVALID_VALUE, "dgd: %s is non-NULL but problem->%s = 0", name,
                flag_name);
  return NLCORE_STATUS_SUCCESS;
}
nlcore_status_t aligned(const void* ptr, size_t a, const char* name) {
  if (ptr != nullptr && reinterpret_cast<uintptr_t>(ptr) % a != 0)
    return fail(NLCORE_STATUS_INVALID_VALUE, "dgd: %s (%p) must be aligned to %zu bytes", name,
                ptr, a);
  return NLCORE_STATUS_SUCCESS;
}

#define NLCORE_TRY(expr)                                   \
  do {                                                     \
    const nlcore_status_t _st = (expr);                    \
    if (_st != NLCORE_STATUS_SUCCESS) return _st;          \
  } while (0)

nlcore_status_t check_tensors(const Plan& P, const nlcore_dgd_problem_t* p,
                              const nlcore_dgd_tensors_t* t, bool backward) {
  if (t == nullptr) return fail(NLCORE_STATUS_INVALID_VALUE, "dgd: tensors is NULL");
  const size_t eb = dtype_bytes(P.dtype);
  NLCORE_TRY(need(t->q, "tensors->q"));
  NLCORE_TRY(need(t->k, "tensors->k"));
  NLCORE_TRY(need(t->v, "tensors->v"));
  NLCORE_TRY(need(t->beta, "tensors->beta"));
  NLCORE_TRY(need_iff(t->g, p->has_g, "tensors->g", "has_g"));
  NLCORE_TRY(need_iff(t->erase, p->has_erase, "tensors->erase", "has_erase"));
  NLCORE_TRY(need_iff(t->initial_state, p->has_initial_state, "tensors->initial_state",
                      "has_initial_state"));
  if (!backward) NLCORE_TRY(need(t->o, "tensors->o"));
  NLCORE_TRY(aligned(t->q, eb, "tensors->q"));
  NLCORE_TRY(aligned(t->k, eb, "tensors->k"));
  NLCORE_TRY(aligned(t->v, eb, "tensors->v"));
  NLCORE_TRY(aligned(t->beta, 4, "tensors->beta"));
  NLCORE_TRY(aligned(t->g, 4, "tensors->g"));
  NLCORE_TRY(aligned(t->erase, 4, "tensors->erase"));
  NLCORE_TRY(aligned(t->initial_state, 4, "tensors->initial_state"));
  if (!backward) {
    NLCORE_TRY(aligned(t->o, eb, "tensors->o"));
    NLCORE_TRY(aligned(t->final_state, 4, "tensors->final_state"));
  }
  if (p->cu_seqlens != nullptr)
    NLCORE_TRY(aligned(p->cu_seqlens, p->cu_seqlens_dtype == NLCORE_DTYPE_INT64 ? 8 : 4,
                       "problem->cu_seqlens"));
  return NLCORE_STATUS_SUCCESS;
}

nlcore_status_t check_grads(const Plan& P, const nlcore_dgd_problem_t* p,
                            const nlcore_dgd_grads_t* g) {
  if (g == nullptr) return fail(NLCORE_STATUS_INVALID_VALUE, "dgd: grads is NULL");
  const size_t eb = dtype_bytes(P.dtype);
  NLCORE_TRY(need(g->grad_o, "grads->grad_o"));
  NLCORE_TRY(need(g->dq, "grads->dq"));
  NLCORE_TRY(need(g->dk, "grads->dk"));
  NLCORE_TRY(need(g->dv, "grads->dv"));
  NLCORE_TRY(need(g->dbeta, "grads->dbeta"));
  if (p->has_g) NLCORE_TRY(need(g->dg, "grads->dg (has_g = 1)"));
  if (p->has_erase) NLCORE_TRY(need(g->derase, "grads->derase (has_erase = 1)"));
  if (p->has_initial_state)
    NLCORE_TRY(need(g->dinitial_state, "grads->dinitial_state (has_initial_state = 1)"));
  NLCORE_TRY(aligned(g->grad_o, eb, "grads->grad_o"));
  NLCORE_TRY(aligned(g->grad_final_state, 4, "grads->grad_final_state"));
  NLCORE_TRY(aligned(g->dq, eb, "grads->dq"));
  NLCORE_TRY(aligned(g->dk, eb, "grads->dk"));
  NLCORE_TRY(aligned(g->dv, eb, "grads->dv"));
  NLCORE_TRY(aligned(g->dbeta, 4, "grads->dbeta"));
  NLCORE_TRY(aligned(g->dg, 4, "grads->dg"));
  NLCORE_TRY(aligned(g->derase, 4, "grads->derase"));
  NLCORE_TRY(aligned(g->dinitial_state, 4, "grads->dinitial_state"));
  return NLCORE_STATUS_SUCCESS;
}

nlcore_status_t check_workspace(const Layout& L, void* workspace, size_t workspace_bytes) {
  if (L.total == 0) return NLCORE_STATUS_SUCCESS;
  if (workspace == nullptr)
    return fail(NLCORE_STATUS_INVALID_VALUE, "dgd: workspace is NULL but %zu bytes are required",
                L.total);
  if (reinterpret_cast<uintptr_t>(workspace) % kWorkspaceAlign != 0)
    return fail(NLCORE_STATUS_INVALID_VALUE, "dgd: workspace (%p) must be %zu-byte aligned",
                workspace, kWorkspaceAlign);
  if (workspace_bytes < L.total)
    return fail(NLCORE_STATUS_INSUFFICIENT_WORKSPACE,
                "dgd: workspace_bytes = %zu is smaller than the %zu bytes required",
                workspace_bytes, L.total);
  return NLCORE_STATUS_SUCCESS;
}

Params make_params(const Plan& P, const Layout& L, const nlcore_dgd_problem_t* p,
                   const nlcore_dgd_tensors_t* t, void* workspace) {
  Params q{};
  q.B = P.dims.B;
  q.T = P.dims.T;
  q.N = P.dims.N;
  q.H = P.dims.H;
  q.HV = P.dims.HV;
  q.K = P.dims.K;
  q.V = P.dims.V;
  q.group = P.dims.HV / P.dims.H;
  q.has_g = p->has_g;
  q.has_erase = p->has_erase;
  q.has_init = p->has_initial_state;
  q.read_before = p->read_before;
  q.scale = p->scale;
  q.nc_bound = L.nc_bound;
  q.vtile = L.vtile;
  q.ntiles = L.ntiles;
  q.cu = p->cu_seqlens;
  q.cu_is64 = p->cu_seqlens_dtype == NLCORE_DTYPE_INT64 ? 1 : 0;
  q.q = t->q;
  q.k = t->k;
  q.v = t->v;
  q.beta = static_cast<const float*>(t->beta);
  q.g = static_cast<const float*>(t->g);
  q.erase = static_cast<const float*>(t->erase);
  q.h0 = static_cast<const float*>(t->initial_state);
  char* ws = static_cast<char*>(workspace);
  auto f = [&](size_t off) { return reinterpret_cast<float*>(ws + off); };
  q.chunks = reinterpret_cast<int64_t*>(ws + L.chunks);
  q.seqs = reinterpret_cast<int64_t*>(ws + L.seqs);
  q.meta = reinterpret_cast<int64_t*>(ws + L.meta);
  q.wv = f(L.wv);
  q.wk = f(L.wk);
  q.s0 = f(L.s0);
  if (L.dw != 0) {
    q.dw = f(L.dw);
    q.ds = f(L.ds);
    q.ddp = f(L.ddp);
    q.decp = f(L.decp);
    q.dqp = f(L.dqp);
    q.dkp = f(L.dkp);
  }
  return q;
}

DgdFn find_forward(int dt) {
  switch (dt) {
    case NLCORE_DTYPE_BFLOAT16: return &forward_bf16;
#if !defined(NLCORE_KERNEL_SET_CI)
    case NLCORE_DTYPE_FLOAT16: return &forward_f16;
    case NLCORE_DTYPE_FLOAT32: return &forward_f32;
#endif
  }
  return nullptr;
}
DgdFn find_backward(int dt) {
  switch (dt) {
    case NLCORE_DTYPE_BFLOAT16: return &backward_bf16;
#if !defined(NLCORE_KERNEL_SET_CI)
    case NLCORE_DTYPE_FLOAT16: return &backward_f16;
    case NLCORE_DTYPE_FLOAT32: return &backward_f32;
#endif
  }
  return nullptr;
}

}  // namespace
}  // namespace nlcore::dgd

extern "C" {

NLCORE_API nlcore_status_t nlcore_dgd_workspace_size(const nlcore_dgd_problem_t* problem,
                                                     int32_t backward, size_t* workspace_bytes) {
  using namespace nlcore::dgd;
  if (workspace_bytes == nullptr)
    return nlcore::detail::fail(NLCORE_STATUS_INVALID_VALUE,
                                "dgd_workspace_size: workspace_bytes is NULL");
  if (backward != 0 && backward != 1)
    return nlcore::detail::fail(NLCORE_STATUS_INVALID_VALUE,
                                "dgd_workspace_size: backward must be 0 or 1, got %d",
                                (int)backward);
  Plan P;
  const nlcore_status_t st = make_plan(problem, &P);
  if (st != NLCORE_STATUS_SUCCESS) return st;
  *workspace_bytes = backward ? P.bwd.total : P.fwd.total;
  return NLCORE_STATUS_SUCCESS;
}

NLCORE_API nlcore_status_t nlcore_dgd_forward(const nlcore_dgd_problem_t* problem,
                                              const nlcore_dgd_tensors_t* tensors,
                                              void* workspace, size_t workspace_bytes,
                                              cudaStream_t stream) {
  using namespace nlcore::dgd;
  try {
    Plan P;
    nlcore_status_t st = make_plan(problem, &P);
    if (st != NLCORE_STATUS_SUCCESS) return st;
    if ((st = check_tensors(P, problem, tensors, false)) != NLCORE_STATUS_SUCCESS) return st;
    if ((st = check_workspace(P.fwd, workspace, workspace_bytes)) != NLCORE_STATUS_SUCCESS)
      return st;
    DgdFn fn = find_forward(P.dtype);
    if (fn == nullptr)
      return nlcore::detail::fail(NLCORE_STATUS_INTERNAL_ERROR, "dgd: forward driver missing");
    Params prm = make_params(P, P.fwd, problem, tensors, workspace);
    prm.o = tensors->o;
    prm.hT = static_cast<float*>(tensors->final_state);
    // ---- from here on: CUDA runtime calls ----
    return fn(prm, stream);
  } catch (...) {
    return nlcore::detail::fail(NLCORE_STATUS_INTERNAL_ERROR, "dgd: unexpected C++ exception");
  }
}

NLCORE_API nlcore_status_t nlcore_dgd_backward(const nlcore_dgd_problem_t* problem,
                                               const nlcore_dgd_tensors_t* tensors,
                                               const nlcore_dgd_grads_t* grads, void* workspace,
                                               size_t workspace_bytes, cudaStream_t stream) {
  using namespace nlcore::dgd;
  try {
    Plan P;
    nlcore_status_t st = make_plan(problem, &P);
    if (st != NLCORE_STATUS_SUCCESS) return st;
    if ((st = check_tensors(P, problem, tensors, true)) != NLCORE_STATUS_SUCCESS) return st;
    if ((st = check_grads(P, problem, grads)) != NLCORE_STATUS_SUCCESS) return st;
    if ((st = check_workspace(P.bwd, workspace, workspace_bytes)) != NLCORE_STATUS_SUCCESS)
      return st;
    DgdFn fn = find_backward(P.dtype);
    if (fn == nullptr)
      return nlcore::detail::fail(NLCORE_STATUS_INTERNAL_ERROR, "dgd: backward driver missing");
    Params prm = make_params(P, P.bwd, problem, tensors, workspace);
    prm.o = nullptr;
    prm.hT = nullptr;
    prm.dO = grads->grad_o;
    prm.dhT = static_cast<const float*>(grads->grad_final_state);
    prm.dq = grads->dq;
    prm.dk = grads->dk;
    prm.dv = grads->dv;
    prm.dbeta = static_cast<float*>(grads->dbeta);
    prm.dg = problem->has_g ? static_cast<float*>(grads->dg) : nullptr;
    prm.derase = problem->has_erase ? static_cast<float*>(grads->derase) : nullptr;
    prm.dh0 = problem->has_initial_state ? static_cast<float*>(grads->dinitial_state) : nullptr;
    // ---- from here on: CUDA runtime calls ----
    return fn(prm, stream);
  } catch (...) {
    return nlcore::detail::fail(NLCORE_STATUS_INTERNAL_ERROR, "dgd: unexpected C++ exception");
  }
}

}  // extern "C"
