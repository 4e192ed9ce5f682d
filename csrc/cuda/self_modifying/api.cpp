// nlcore C API for the self-modifying memories (nlcore/self_modifying.h): validation, the
// workspace layout (one function shared by the size query, the forward and the backward) and
// the dispatch to the host drivers with the per-dtype kernels. Plain C++ (no kernels here).
// Every validation failure returns before any CUDA runtime call.
#include <cmath>
#include <cstdint>
#include <cstring>

#include <cuda_runtime_api.h>

#include "common/error.h"
#include "memory_mlp/kernel_set.h"
#include "nlcore/self_modifying.h"
#include "self_modifying/launchers.h"
#include "self_modifying/layout.h"

namespace nlcore::self_modifying {
namespace {

namespace mm = memory_mlp;
using detail::dtype_name;
using detail::fail;

size_t dtype_bytes(int d) { return d == NLCORE_DTYPE_FLOAT32 ? 4 : 2; }

struct Plan {
  Dims dims;
  Layout fwd, bwd;
  int dtype;
};

#define NLCORE_TRY(expr)                          \
  do {                                            \
    const nlcore_status_t _st = (expr);           \
    if (_st != NLCORE_STATUS_SUCCESS) return _st; \
  } while (0)

nlcore_status_t check_flag(const char* field, int32_t v) {
  if (v != 0 && v != 1)
    return fail(NLCORE_STATUS_INVALID_VALUE, "self_modifying: problem->%s must be 0 or 1, got %d",
                field, (int)v);
  return NLCORE_STATUS_SUCCESS;
}

// Validates every problem field; no CUDA call.
nlcore_status_t make_plan(const nlcore_self_modifying_problem_t* p, Plan* out) {
  if (p == nullptr) return fail(NLCORE_STATUS_INVALID_VALUE, "self_modifying: problem is NULL");
  if (p->batch < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "self_modifying: problem->batch must be >= 1, got %lld", (long long)p->batch);
  if (p->seqlen < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "self_modifying: problem->seqlen must be >= 1, got %lld", (long long)p->seqlen);
  if (p->num_sequences < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "self_modifying: problem->num_sequences must be >= 1, got %lld",
                (long long)p->num_sequences);
  const bool varlen = p->cu_seqlens != nullptr;
  if (varlen) {
    if (p->batch != 1)
      return fail(NLCORE_STATUS_INVALID_VALUE,
                  "self_modifying: problem->batch must be 1 with cu_seqlens, got %lld",
                  (long long)p->batch);
    if (p->cu_seqlens_dtype != NLCORE_DTYPE_INT32 && p->cu_seqlens_dtype != NLCORE_DTYPE_INT64)
      return fail(NLCORE_STATUS_INVALID_VALUE,
                  "self_modifying: problem->cu_seqlens_dtype must be NLCORE_DTYPE_INT32 or "
                  "INT64, got %s (%d)", dtype_name(p->cu_seqlens_dtype),
                  (int)p->cu_seqlens_dtype);
  } else if (p->num_sequences != p->batch) {
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "self_modifying: problem->num_sequences (%lld) must equal batch (%lld) without "
                "cu_seqlens", (long long)p->num_sequences, (long long)p->batch);
  }
  if (p->heads < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "self_modifying: problem->heads must be >= 1, got %d", (int)p->heads);
  if (p->head_dim < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "self_modifying: problem->head_dim must be >= 1, got %d", (int)p->head_dim);
  if (!mm::head_dim_ok(p->head_dim))
    return fail(NLCORE_STATUS_NOT_SUPPORTED,
                "self_modifying: problem->head_dim = %d is not supported by the CUDA kernels "
                "(32, 64 or 128)", (int)p->head_dim);
  if (p->hidden_dim < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "self_modifying: problem->hidden_dim must be >= 1, got %d", (int)p->hidden_dim);
  if (!mm::hidden_dim_ok(p->head_dim, p->hidden_dim))
    return fail(NLCORE_STATUS_NOT_SUPPORTED,
                "self_modifying: problem->hidden_dim = %d is not supported by the CUDA kernels "
                "(head_dim, 2 head_dim or 4 head_dim = %d, %d or %d)", (int)p->hidden_dim,
                (int)p->head_dim, 2 * (int)p->head_dim, 4 * (int)p->head_dim);
  const int dt = static_cast<int>(p->dtype);
  if (dt == NLCORE_DTYPE_FLOAT64)
    return fail(NLCORE_STATUS_NOT_SUPPORTED,
                "self_modifying: problem->dtype = FLOAT64 (%d) is not supported by the CUDA "
                "kernels (use FLOAT32, BFLOAT16 or FLOAT16)", dt);
  if (dt != NLCORE_DTYPE_FLOAT32 && dt != NLCORE_DTYPE_BFLOAT16 && dt != NLCORE_DTYPE_FLOAT16)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "self_modifying: problem->dtype must be NLCORE_DTYPE_FLOAT32, BFLOAT16 or "
                "FLOAT16, got %s (%d)", dtype_name(dt), dt);
  if (p->chunk_size < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "self_modifying: problem->chunk_size must be >= 1, got %lld",
                (long long)p->chunk_size);
  if (p->chunk_size > mm::kMaxChunk)
    return fail(NLCORE_STATUS_NOT_SUPPORTED,
                "self_modifying: problem->chunk_size = %lld exceeds 2^62",
                (long long)p->chunk_size);
  if (!std::isfinite(p->eta_max) || !(p->eta_max > 0.0f))
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "self_modifying: problem->eta_max must be finite and > 0, got %g",
                (double)p->eta_max);
  if (!std::isfinite(p->momentum))
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "self_modifying: problem->momentum must be finite, got %g", (double)p->momentum);
  if (p->activation != NLCORE_SELF_MODIFYING_ACT_SILU &&
      p->activation != NLCORE_SELF_MODIFYING_ACT_GELU)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "self_modifying: problem->activation must be NLCORE_SELF_MODIFYING_ACT_SILU (0) "
                "or NLCORE_SELF_MODIFYING_ACT_GELU (1), got %d", (int)p->activation);
  NLCORE_TRY(check_flag("dgd_erase", p->dgd_erase));
  NLCORE_TRY(check_flag("weights_shared", p->weights_shared));
  NLCORE_TRY(check_flag("has_initial_state", p->has_initial_state));
  if (p->has_initial_state && p->weights_shared)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "self_modifying: problem->has_initial_state = 1 requires per-sequence weights "
                "(weights_shared = 0)");
  if (p->checkpoint_every < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "self_modifying: problem->checkpoint_every must be >= 1, got %lld",
                (long long)p->checkpoint_every);
  if (p->flags != 0)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "self_modifying: problem->flags has unknown bits 0x%x (no flags are defined)",
                p->flags);
  if (!mm::dtype_built(dt))
    return fail(NLCORE_STATUS_NOT_SUPPORTED,
                "self_modifying: problem->dtype = %s is not built in this kernel set ('%s'); "
                "rebuild with NLCORE_KERNEL_SET=full", dtype_name(dt), mm::kKernelSetName);
  // 4·N·H CTAs in grid.x of the scan GEMMs (and int "heads" of the a_g sum over memories).
  if ((long double)p->batch * p->seqlen * p->heads * 128 > (long double)(INT64_MAX / 8) ||
      (long double)kMem * p->num_sequences * p->heads > (long double)INT32_MAX)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "self_modifying: problem too large (batch %lld, seqlen %lld, num_sequences %lld, "
                "heads %d)", (long long)p->batch, (long long)p->seqlen,
                (long long)p->num_sequences, (int)p->heads);

  Plan P{};
  P.dtype = dt;
  P.dims.B = p->batch;
  P.dims.T = p->seqlen;
  P.dims.N = p->num_sequences;
  P.dims.H = p->heads;
  P.dims.D = p->head_dim;
  P.dims.F = p->hidden_dim;
  P.dims.C = p->chunk_size;
  P.dims.ckpt_every = p->checkpoint_every;
  P.dims.has_initial_state = p->has_initial_state != 0;
  P.dims.elem_bytes = static_cast<int>(dtype_bytes(dt));
  const int64_t rows = chunk_rows(p->seqlen, p->chunk_size);
  if (ceil_div(rows, mm::kTileM) > mm::kMaxGridY)
    return fail(NLCORE_STATUS_NOT_SUPPORTED,
                "self_modifying: chunks of up to %lld tokens exceed the kernels' limit of %lld "
                "(chunk_size %lld, seqlen %lld)", (long long)rows,
                (long long)mm::kMaxGridY * mm::kTileM, (long long)p->chunk_size,
                (long long)p->seqlen);
  P.fwd = make_layout(P.dims, false);
  P.bwd = make_layout(P.dims, true);
  if (!P.fwd.ok || !P.bwd.ok)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "self_modifying: problem too large: the workspace size overflows (batch %lld, "
                "seqlen %lld, heads %d, head_dim %d, hidden_dim %d, chunk_size %lld)",
                (long long)p->batch, (long long)p->seqlen, (int)p->heads, (int)p->head_dim,
                (int)p->hidden_dim, (long long)p->chunk_size);
  *out = P;
  return NLCORE_STATUS_SUCCESS;
}

nlcore_status_t need(const void* ptr, const char* name) {
  if (ptr == nullptr) return fail(NLCORE_STATUS_INVALID_VALUE, "self_modifying: %s is NULL", name);
  return NLCORE_STATUS_SUCCESS;
}
nlcore_status_t need_iff(const void* ptr, bool flag, const char* name, const char* flag_name) {
  if (flag && ptr == nullptr)
    return fail(NLCORE_STATUS_INVALID_VALUE, "self_modifying: %s is NULL but problem->%s = 1",
                name, flag_name);
  if (!flag && ptr != nullptr)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "self_modifying: %s is non-NULL but problem->%s = 0", name, flag_name);
  return NLCORE_STATUS_SUCCESS;
}
nlcore_status_t aligned(const void* ptr, size_t a, const char* name) {
  if (ptr != nullptr && reinterpret_cast<uintptr_t>(ptr) % a != 0)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "self_modifying: %s (%p) must be aligned to %zu bytes", name, ptr, a);
  return NLCORE_STATUS_SUCCESS;
}

nlcore_status_t check_tensors(const Plan& P, const nlcore_self_modifying_problem_t* p,
                              const nlcore_self_modifying_tensors_t* t, bool backward) {
  if (t == nullptr) return fail(NLCORE_STATUS_INVALID_VALUE, "self_modifying: tensors is NULL");
  const size_t eb = dtype_bytes(P.dtype);
  const bool init = p->has_initial_state != 0;
  NLCORE_TRY(need(t->x, "tensors->x"));
  NLCORE_TRY(need(t->w_in, "tensors->w_in"));
  NLCORE_TRY(need(t->w_out, "tensors->w_out"));
  NLCORE_TRY(need(t->w_eta, "tensors->w_eta"));
  NLCORE_TRY(need(t->w_alpha, "tensors->w_alpha"));
  NLCORE_TRY(need_iff(t->p_in, init, "tensors->p_in", "has_initial_state"));
  NLCORE_TRY(need_iff(t->p_out, init, "tensors->p_out", "has_initial_state"));
  NLCORE_TRY(need_iff(t->acc_in, init, "tensors->acc_in", "has_initial_state"));
  NLCORE_TRY(need_iff(t->acc_out, init, "tensors->acc_out", "has_initial_state"));
  NLCORE_TRY(need_iff(t->acc_g, init, "tensors->acc_g", "has_initial_state"));
  NLCORE_TRY(need_iff(t->n, init, "tensors->n", "has_initial_state"));
  if (!backward) {
    NLCORE_TRY(need(t->k, "tensors->k"));
    NLCORE_TRY(need(t->v, "tensors->v"));
    NLCORE_TRY(need(t->eta, "tensors->eta"));
    NLCORE_TRY(need(t->g, "tensors->g"));
    NLCORE_TRY(need(t->w_in_final, "tensors->w_in_final"));
    NLCORE_TRY(need(t->w_out_final, "tensors->w_out_final"));
    NLCORE_TRY(need(t->p_in_final, "tensors->p_in_final"));
    NLCORE_TRY(need(t->p_out_final, "tensors->p_out_final"));
    NLCORE_TRY(need(t->acc_in_final, "tensors->acc_in_final"));
    NLCORE_TRY(need(t->acc_out_final, "tensors->acc_out_final"));
    NLCORE_TRY(need(t->acc_g_final, "tensors->acc_g_final"));
    NLCORE_TRY(need(t->n_final, "tensors->n_final"));
  }
  NLCORE_TRY(aligned(t->x, eb, "tensors->x"));
  const void* f32[] = {t->w_in,  t->w_out,  t->w_eta,  t->w_alpha, t->b_eta,  t->b_alpha,
                       t->p_in,  t->p_out,  t->acc_in, t->acc_out, t->acc_g};
  const char* f32_names[] = {"tensors->w_in",    "tensors->w_out",  "tensors->w_eta",
                             "tensors->w_alpha", "tensors->b_eta",  "tensors->b_alpha",
                             "tensors->p_in",    "tensors->p_out",  "tensors->acc_in",
                             "tensors->acc_out", "tensors->acc_g"};
  for (int i = 0; i < 11; ++i) NLCORE_TRY(aligned(f32[i], 4, f32_names[i]));
  NLCORE_TRY(aligned(t->n, 8, "tensors->n"));
  if (!backward) {
    NLCORE_TRY(aligned(t->k, eb, "tensors->k"));
    NLCORE_TRY(aligned(t->v, eb, "tensors->v"));
    const void* outs[] = {t->eta,          t->g,            t->w_in_final,   t->w_out_final,
                          t->p_in_final,   t->p_out_final,  t->acc_in_final, t->acc_out_final,
                          t->acc_g_final};
    const char* out_names[] = {"tensors->eta",          "tensors->g",
                               "tensors->w_in_final",   "tensors->w_out_final",
                               "tensors->p_in_final",   "tensors->p_out_final",
                               "tensors->acc_in_final", "tensors->acc_out_final",
                               "tensors->acc_g_final"};
    for (int i = 0; i < 9; ++i) NLCORE_TRY(aligned(outs[i], 4, out_names[i]));
    NLCORE_TRY(aligned(t->n_final, 8, "tensors->n_final"));
  }
  if (p->cu_seqlens != nullptr)
    NLCORE_TRY(aligned(p->cu_seqlens, p->cu_seqlens_dtype == NLCORE_DTYPE_INT64 ? 8 : 4,
                       "problem->cu_seqlens"));
  return NLCORE_STATUS_SUCCESS;
}

nlcore_status_t check_grads(const Plan& P, const nlcore_self_modifying_problem_t* p,
                            const nlcore_self_modifying_tensors_t* t,
                            const nlcore_self_modifying_grads_t* g) {
  if (g == nullptr) return fail(NLCORE_STATUS_INVALID_VALUE, "self_modifying: grads is NULL");
  const size_t eb = dtype_bytes(P.dtype);
  NLCORE_TRY(need(g->dx, "grads->dx"));
  NLCORE_TRY(need(g->dw_in, "grads->dw_in"));
  NLCORE_TRY(need(g->dw_out, "grads->dw_out"));
  NLCORE_TRY(need(g->dw_eta, "grads->dw_eta"));
  NLCORE_TRY(need(g->dw_alpha, "grads->dw_alpha"));
  if (t->b_eta != nullptr) NLCORE_TRY(need(g->db_eta, "grads->db_eta (tensors->b_eta given)"));
  if (t->b_alpha != nullptr)
    NLCORE_TRY(need(g->db_alpha, "grads->db_alpha (tensors->b_alpha given)"));
  if (p->has_initial_state) {
    NLCORE_TRY(need(g->dp_in, "grads->dp_in (has_initial_state = 1)"));
    NLCORE_TRY(need(g->dp_out, "grads->dp_out (has_initial_state = 1)"));
    NLCORE_TRY(need(g->dacc_in, "grads->dacc_in (has_initial_state = 1)"));
    NLCORE_TRY(need(g->dacc_out, "grads->dacc_out (has_initial_state = 1)"));
    NLCORE_TRY(need(g->dacc_g, "grads->dacc_g (has_initial_state = 1)"));
  }
  NLCORE_TRY(aligned(g->grad_k, eb, "grads->grad_k"));
  NLCORE_TRY(aligned(g->grad_v, eb, "grads->grad_v"));
  NLCORE_TRY(aligned(g->dx, eb, "grads->dx"));
  const void* f32[] = {g->grad_eta,   g->grad_g,      g->grad_w_in,   g->grad_w_out,
                       g->grad_p_in,  g->grad_p_out,  g->grad_acc_in, g->grad_acc_out,
                       g->grad_acc_g, g->dw_in,       g->dw_out,      g->dw_eta,
                       g->dw_alpha,   g->db_eta,      g->db_alpha,    g->dp_in,
                       g->dp_out,     g->dacc_in,     g->dacc_out,    g->dacc_g};
  const char* names[] = {"grads->grad_eta",   "grads->grad_g",      "grads->grad_w_in",
                         "grads->grad_w_out", "grads->grad_p_in",   "grads->grad_p_out",
                         "grads->grad_acc_in", "grads->grad_acc_out", "grads->grad_acc_g",
                         "grads->dw_in",      "grads->dw_out",      "grads->dw_eta",
                         "grads->dw_alpha",   "grads->db_eta",      "grads->db_alpha",
                         "grads->dp_in",      "grads->dp_out",      "grads->dacc_in",
                         "grads->dacc_out",   "grads->dacc_g"};
  for (int i = 0; i < 20; ++i) NLCORE_TRY(aligned(f32[i], 4, names[i]));
  return NLCORE_STATUS_SUCCESS;
}

nlcore_status_t check_workspace(const Layout& L, void* workspace, size_t workspace_bytes) {
  if (L.total == 0) return NLCORE_STATUS_SUCCESS;
  if (workspace == nullptr)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "self_modifying: workspace is NULL but %zu bytes are required", L.total);
  if (reinterpret_cast<uintptr_t>(workspace) % kWorkspaceAlign != 0)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "self_modifying: workspace (%p) must be %zu-byte aligned", workspace,
                kWorkspaceAlign);
  if (workspace_bytes < L.total)
    return fail(NLCORE_STATUS_INSUFFICIENT_WORKSPACE,
                "self_modifying: workspace_bytes = %zu is smaller than the %zu bytes required",
                workspace_bytes, L.total);
  return NLCORE_STATUS_SUCCESS;
}

// The MLP scan's parameters over 4·N sequences (state pointers set by the caller) and the token
// kernels' parameters, both carved from the workspace with layout L.
void make_params(const Plan& P, const Layout& L, const nlcore_self_modifying_problem_t* p,
                 const nlcore_self_modifying_tensors_t* t, void* workspace, mm::Params* mp_out,
                 TokParams* tp_out, Outputs* out) {
  mm::Params q{};
  q.B = P.dims.B;
  q.T = P.dims.T;
  q.N = kMem * P.dims.N;
  q.C = P.dims.C;
  q.nc_bound = L.nc_bound;
  q.H = P.dims.H;
  q.D = P.dims.D;
  q.F = P.dims.F;
  q.rows = static_cast<int>(L.rows);
  q.elem_bytes = P.dims.elem_bytes;
  q.gelu = p->activation == NLCORE_SELF_MODIFYING_ACT_GELU;
  q.residual = 1;
  q.l2 = 1;
  q.self_target = 1;
  q.erase = p->dgd_erase;
  q.has_g = 1;
  q.has_init = p->has_initial_state;
  q.w_shared = p->weights_shared;
  q.momentum = p->momentum;
  q.cu = p->cu_seqlens;
  q.cu_is64 = p->cu_seqlens_dtype == NLCORE_DTYPE_INT64 ? 1 : 0;
  q.x = t->x;
  q.w1_init = static_cast<const float*>(t->w_in);
  q.w2_init = static_cast<const float*>(t->w_out);
  q.p1_init = static_cast<const float*>(t->p_in);
  q.p2_init = static_cast<const float*>(t->p_out);
  q.a1_init = static_cast<const float*>(t->acc_in);
  q.a2_init = static_cast<const float*>(t->acc_out);
  q.ag_init = static_cast<const float*>(t->acc_g);
  q.n_init = static_cast<const int64_t*>(t->n);
  char* ws = static_cast<char*>(workspace);
  auto f = [&](size_t off) { return reinterpret_cast<float*>(ws + off); };
  q.seq = reinterpret_cast<int64_t*>(ws + L.seq);
  q.alpha = f(L.alpha);
  q.ag = f(L.ag);
  q.Zx = f(L.Zx);
  q.Z = f(L.Z);
  q.Zv = f(L.Zv);
  q.Tg = f(L.Tg);
  q.E = f(L.E);
  q.Q1 = f(L.Q1);

  TokParams r{};
  r.N = P.dims.N;
  r.C = P.dims.C;
  r.H = P.dims.H;
  r.D = P.dims.D;
  r.F = P.dims.F;
  r.rows = static_cast<int>(L.rows);
  r.erase = p->dgd_erase;
  r.eta_max = p->eta_max;
  r.seq = q.seq;
  r.x = t->x;
  r.Ox = f(L.Ox);
  r.w_eta = static_cast<const float*>(t->w_eta);
  r.w_alpha = static_cast<const float*>(t->w_alpha);
  r.b_eta = static_cast<const float*>(t->b_eta);
  r.b_alpha = static_cast<const float*>(t->b_alpha);
  r.E = q.E;
  r.Z = q.Z;

  Outputs o{};
  o.N = P.dims.N;
  o.w_in = t->w_in;
  o.w_out = t->w_out;
  o.acc_g = static_cast<const float*>(t->acc_g);

  *mp_out = q;
  *tp_out = r;
  *out = o;
}

TokenKernels find_kernels(int dt) {
  switch (dt) {
    case NLCORE_DTYPE_BFLOAT16: return kernels_bf16();
#if !defined(NLCORE_KERNEL_SET_CI)
    case NLCORE_DTYPE_FLOAT16: return kernels_f16();
    case NLCORE_DTYPE_FLOAT32: return kernels_f32();
#endif
  }
  return TokenKernels{};
}

}  // namespace
}  // namespace nlcore::self_modifying

extern "C" {

NLCORE_API nlcore_status_t nlcore_self_modifying_workspace_size(
    const nlcore_self_modifying_problem_t* problem, int32_t backward, size_t* workspace_bytes) {
  using namespace nlcore::self_modifying;
  if (workspace_bytes == nullptr)
    return nlcore::detail::fail(NLCORE_STATUS_INVALID_VALUE,
                                "self_modifying_workspace_size: workspace_bytes is NULL");
  if (backward != 0 && backward != 1)
    return nlcore::detail::fail(NLCORE_STATUS_INVALID_VALUE,
                                "self_modifying_workspace_size: backward must be 0 or 1, got %d",
                                (int)backward);
  try {
    Plan P;
    const nlcore_status_t st = make_plan(problem, &P);
    if (st != NLCORE_STATUS_SUCCESS) return st;
    *workspace_bytes = backward ? P.bwd.total : P.fwd.total;
    return NLCORE_STATUS_SUCCESS;
  } catch (...) {
    return nlcore::detail::fail(NLCORE_STATUS_INTERNAL_ERROR,
                                "self_modifying: unexpected C++ exception");
  }
}

NLCORE_API nlcore_status_t nlcore_self_modifying_forward(
    const nlcore_self_modifying_problem_t* problem,
    const nlcore_self_modifying_tensors_t* tensors, void* workspace, size_t workspace_bytes,
    cudaStream_t stream) {
  using namespace nlcore::self_modifying;
  try {
    Plan P;
    nlcore_status_t st = make_plan(problem, &P);
    if (st != NLCORE_STATUS_SUCCESS) return st;
    if ((st = check_tensors(P, problem, tensors, false)) != NLCORE_STATUS_SUCCESS) return st;
    if ((st = check_workspace(P.fwd, workspace, workspace_bytes)) != NLCORE_STATUS_SUCCESS)
      return st;
    const TokenKernels kern = find_kernels(P.dtype);
    if (kern.gemm == nullptr || kern.derive == nullptr)
      return nlcore::detail::fail(NLCORE_STATUS_INTERNAL_ERROR,
                                  "self_modifying: kernels missing");
    nlcore::memory_mlp::Params mp;
    TokParams tp;
    Outputs out;
    make_params(P, P.fwd, problem, tensors, workspace, &mp, &tp, &out);
    // The state is stepped in place in the final-state outputs ([4, N, H, ...] = the slabs);
    // a_g in the workspace (one copy per memory), copied out at the end.
    mp.w1 = static_cast<float*>(tensors->w_in_final);
    mp.w2 = static_cast<float*>(tensors->w_out_final);
    mp.p1 = static_cast<float*>(tensors->p_in_final);
    mp.p2 = static_cast<float*>(tensors->p_out_final);
    mp.a1 = static_cast<float*>(tensors->acc_in_final);
    mp.a2 = static_cast<float*>(tensors->acc_out_final);
    mp.k = tensors->k;
    mp.v = tensors->v;
    mp.eta = static_cast<const float*>(tensors->eta);
    mp.g = static_cast<const float*>(tensors->g);
    tp.k = tensors->k;
    tp.v = tensors->v;
    tp.eta = static_cast<float*>(tensors->eta);
    tp.g = static_cast<float*>(tensors->g);
    out.n_final = static_cast<int64_t*>(tensors->n_final);
    out.acc_g_final = static_cast<float*>(tensors->acc_g_final);
    // ---- from here on: CUDA runtime calls ----
    return run_forward(mp, tp, out, kern, stream);
  } catch (...) {
    return nlcore::detail::fail(NLCORE_STATUS_INTERNAL_ERROR,
                                "self_modifying: unexpected C++ exception");
  }
}

NLCORE_API nlcore_status_t nlcore_self_modifying_backward(
    const nlcore_self_modifying_problem_t* problem,
    const nlcore_self_modifying_tensors_t* tensors, const nlcore_self_modifying_grads_t* grads,
    void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  using namespace nlcore::self_modifying;
  try {
    Plan P;
    nlcore_status_t st = make_plan(problem, &P);
    if (st != NLCORE_STATUS_SUCCESS) return st;
    if ((st = check_tensors(P, problem, tensors, true)) != NLCORE_STATUS_SUCCESS) return st;
    if ((st = check_grads(P, problem, tensors, grads)) != NLCORE_STATUS_SUCCESS) return st;
    if ((st = check_workspace(P.bwd, workspace, workspace_bytes)) != NLCORE_STATUS_SUCCESS)
      return st;
    const TokenKernels kern = find_kernels(P.dtype);
    if (kern.gemm == nullptr || kern.token_bwd == nullptr)
      return nlcore::detail::fail(NLCORE_STATUS_INTERNAL_ERROR,
                                  "self_modifying: kernels missing");
    const Layout& L = P.bwd;
    nlcore::memory_mlp::Params mp;
    TokParams tp;
    Outputs out;
    make_params(P, L, problem, tensors, workspace, &mp, &tp, &out);
    char* ws = static_cast<char*>(workspace);
    auto f = [&](size_t off) { return reinterpret_cast<float*>(ws + off); };
    const size_t slab = size_t(kMem) * size_t(P.dims.N) * P.dims.H * size_t(P.dims.F) *
                        P.dims.D;
    float* work = f(L.work);  // W1, W2, P1, P2, A1, A2: consecutive slabs
    mp.w1 = work;
    mp.w2 = work + slab;
    mp.p1 = work + 2 * slab;
    mp.p2 = work + 3 * slab;
    mp.a1 = work + 4 * slab;
    mp.a2 = work + 5 * slab;
    float* grad = f(L.grad);  // dW1, dW2, dP1, dP2, dA1, dA2
    mp.dw1 = grad;
    mp.dw2 = grad + slab;
    mp.dp1 = grad + 2 * slab;
    mp.dp2 = grad + 3 * slab;
    mp.da1 = grad + 4 * slab;
    mp.da2 = grad + 5 * slab;
    mp.dag = f(L.dag);
    mp.dsg = f(L.dsg);
    mp.ag_init = problem->has_initial_state ? f(L.ag0) : nullptr;  // one copy per memory
    mp.R = f(L.R);
    mp.dQ1 = f(L.dQ1);
    mp.dR = f(L.dR);
    mp.dZ = f(L.dZ);
    mp.dZv = f(L.dZv);
    mp.dZx = f(L.dZx);
    mp.dEeta = f(L.dEeta);
    mp.dE = f(L.dE);
    // the derived token tensors, recomputed chunk by chunk
    mp.k = ws + L.ktok;
    mp.v = ws + L.vtok;
    mp.eta = f(L.etatok);
    mp.g = f(L.gtok);
    tp.k = ws + L.ktok;
    tp.v = ws + L.vtok;
    tp.eta = f(L.etatok);
    tp.g = f(L.gtok);
    tp.grad_k = grads->grad_k;
    tp.grad_v = grads->grad_v;
    tp.grad_eta = static_cast<const float*>(grads->grad_eta);
    tp.grad_g = static_cast<const float*>(grads->grad_g);
    tp.dEeta = mp.dEeta;
    tp.dE = mp.dE;
    tp.dK = f(L.dK);
    tp.dV = f(L.dV);
    tp.dQ1 = mp.dQ1;
    tp.dsg = mp.dsg;
    tp.dRx = f(L.dRx);
    tp.dX = f(L.dX);
    tp.dx = grads->dx;
    tp.dwe = f(L.dwe);
    tp.dwa = f(L.dwa);
    tp.dbe = f(L.dbe);
    tp.dba = f(L.dba);
    out.n_final = nullptr;
    out.acc_g_final = nullptr;
    BackwardBuffers bb{};
    bb.ckpt = f(L.ckpt);
    bb.seg = f(L.seg);
    bb.ckpt_every = L.ckpt_every;
    bb.n_ckpt = L.n_ckpt;
    const void* gf[7] = {grads->grad_w_in,   grads->grad_w_out,   grads->grad_p_in,
                         grads->grad_p_out,  grads->grad_acc_in,  grads->grad_acc_out,
                         grads->grad_acc_g};
    for (int i = 0; i < 7; ++i) bb.grad_final[i] = static_cast<const float*>(gf[i]);
    bb.dX = f(L.dX);
    bb.dK = f(L.dK);
    bb.dV = f(L.dV);
    bb.dRx = f(L.dRx);
    bb.dw_in = static_cast<float*>(grads->dw_in);
    bb.dw_out = static_cast<float*>(grads->dw_out);
    bb.dw_eta = static_cast<float*>(grads->dw_eta);
    bb.dw_alpha = static_cast<float*>(grads->dw_alpha);
    bb.db_eta = tensors->b_eta != nullptr ? static_cast<float*>(grads->db_eta) : nullptr;
    bb.db_alpha = tensors->b_alpha != nullptr ? static_cast<float*>(grads->db_alpha) : nullptr;
    if (problem->has_initial_state) {
      void* di[5] = {grads->dp_in, grads->dp_out, grads->dacc_in, grads->dacc_out,
                     grads->dacc_g};
      for (int i = 0; i < 5; ++i) bb.d_init[i] = static_cast<float*>(di[i]);
    }
    // ---- from here on: CUDA runtime calls ----
    return run_backward(mp, tp, out, bb, kern, stream);
  } catch (...) {
    return nlcore::detail::fail(NLCORE_STATUS_INTERNAL_ERROR,
                                "self_modifying: unexpected C++ exception");
  }
}

}  // extern "C"
