// nlcore C API for the MLP memory scan (nlcore/memory_mlp.h): validation, the workspace layout
// (one function shared by the size query, the forward and the backward), the choice between the
// step-one and the persistent forward (choose_path: one function shared by the path query, the
// size query and the forward) and the dispatch to the host drivers. Plain C++ (no kernels
// here). Every validation failure returns before any CUDA runtime call.
#include <cmath>
#include <cstdint>
#include <cstring>

#include <cuda_runtime_api.h>

#include "common/error.h"
#include "memory_mlp/kernel_set.h"
#include "memory_mlp/launchers.h"
#include "memory_mlp/layout.h"
#include "memory_mlp/persistent.h"
#include "nlcore/memory_mlp.h"

namespace nlcore::memory_mlp {
namespace {

using detail::dtype_name;
using detail::fail;

size_t dtype_bytes(int d) { return d == NLCORE_DTYPE_FLOAT32 ? 4 : 2; }

struct Plan {
  Dims dims;
  Layout fwd, bwd;
  int dtype;
  bool varlen;
};

#define NLCORE_TRY(expr)                          \
  do {                                            \
    const nlcore_status_t _st = (expr);           \
    if (_st != NLCORE_STATUS_SUCCESS) return _st; \
  } while (0)

nlcore_status_t check_flag(const char* field, int32_t v) {
  if (v != 0 && v != 1)
    return fail(NLCORE_STATUS_INVALID_VALUE, "memory_mlp: problem->%s must be 0 or 1, got %d",
                field, (int)v);
  return NLCORE_STATUS_SUCCESS;
}

// Validates every problem field; no CUDA call.
nlcore_status_t make_plan(const nlcore_memory_mlp_problem_t* p, Plan* out) {
  if (p == nullptr) return fail(NLCORE_STATUS_INVALID_VALUE, "memory_mlp: problem is NULL");
  if (p->batch < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE, "memory_mlp: problem->batch must be >= 1, got %lld",
                (long long)p->batch);
  if (p->seqlen < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "memory_mlp: problem->seqlen must be >= 1, got %lld", (long long)p->seqlen);
  if (p->num_sequences < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "memory_mlp: problem->num_sequences must be >= 1, got %lld",
                (long long)p->num_sequences);
  const bool varlen = p->cu_seqlens != nullptr;
  if (varlen) {
    if (p->batch != 1)
      return fail(NLCORE_STATUS_INVALID_VALUE,
                  "memory_mlp: problem->batch must be 1 with cu_seqlens, got %lld",
                  (long long)p->batch);
    if (p->cu_seqlens_dtype != NLCORE_DTYPE_INT32 && p->cu_seqlens_dtype != NLCORE_DTYPE_INT64)
      return fail(NLCORE_STATUS_INVALID_VALUE,
                  "memory_mlp: problem->cu_seqlens_dtype must be NLCORE_DTYPE_INT32 or INT64, "
                  "got %s (%d)", dtype_name(p->cu_seqlens_dtype), (int)p->cu_seqlens_dtype);
  } else if (p->num_sequences != p->batch) {
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "memory_mlp: problem->num_sequences (%lld) must equal batch (%lld) without "
                "cu_seqlens", (long long)p->num_sequences, (long long)p->batch);
  }
  if (p->heads < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE, "memory_mlp: problem->heads must be >= 1, got %d",
                (int)p->heads);
  if (p->head_dim < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "memory_mlp: problem->head_dim must be >= 1, got %d", (int)p->head_dim);
  if (!head_dim_ok(p->head_dim))
    return fail(NLCORE_STATUS_NOT_SUPPORTED,
                "memory_mlp: problem->head_dim = %d is not supported by the CUDA kernels "
                "(32, 64 or 128)", (int)p->head_dim);
  if (p->hidden_dim < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "memory_mlp: problem->hidden_dim must be >= 1, got %d", (int)p->hidden_dim);
  if (!hidden_dim_ok(p->head_dim, p->hidden_dim))
    return fail(NLCORE_STATUS_NOT_SUPPORTED,
                "memory_mlp: problem->hidden_dim = %d is not supported by the CUDA kernels "
                "(head_dim, 2 head_dim or 4 head_dim = %d, %d or %d)", (int)p->hidden_dim,
                (int)p->head_dim, 2 * (int)p->head_dim, 4 * (int)p->head_dim);
  const int dt = static_cast<int>(p->dtype);
  if (dt == NLCORE_DTYPE_FLOAT64)
    return fail(NLCORE_STATUS_NOT_SUPPORTED,
                "memory_mlp: problem->dtype = FLOAT64 (%d) is not supported by the CUDA kernels "
                "(use FLOAT32, BFLOAT16 or FLOAT16)", dt);
  if (dt != NLCORE_DTYPE_FLOAT32 && dt != NLCORE_DTYPE_BFLOAT16 && dt != NLCORE_DTYPE_FLOAT16)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "memory_mlp: problem->dtype must be NLCORE_DTYPE_FLOAT32, BFLOAT16 or FLOAT16, "
                "got %s (%d)", dtype_name(dt), dt);
  const int gt = static_cast<int>(p->gate_dtype);
  if (gt != NLCORE_DTYPE_FLOAT32) {
    if (gt == dt)
      return fail(NLCORE_STATUS_NOT_SUPPORTED,
                  "memory_mlp: problem->gate_dtype = %s (%d) is not supported by the CUDA "
                  "kernels: pass eta and g as FLOAT32", dtype_name(gt), gt);
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "memory_mlp: problem->gate_dtype must be NLCORE_DTYPE_FLOAT32, got %s (%d)",
                dtype_name(gt), gt);
  }
  if (p->chunk_size < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "memory_mlp: problem->chunk_size must be >= 1, got %lld",
                (long long)p->chunk_size);
  if (p->chunk_size > kMaxChunk)
    return fail(NLCORE_STATUS_NOT_SUPPORTED,
                "memory_mlp: problem->chunk_size = %lld exceeds 2^62", (long long)p->chunk_size);
  if (!std::isfinite(p->momentum))
    return fail(NLCORE_STATUS_INVALID_VALUE, "memory_mlp: problem->momentum must be finite, got %g",
                (double)p->momentum);
  if (p->activation != NLCORE_MEMORY_MLP_ACT_SILU && p->activation != NLCORE_MEMORY_MLP_ACT_GELU)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "memory_mlp: problem->activation must be NLCORE_MEMORY_MLP_ACT_SILU (0) or "
                "NLCORE_MEMORY_MLP_ACT_GELU (1), got %d", (int)p->activation);
  if (p->objective != NLCORE_MEMORY_MLP_OBJECTIVE_L2 &&
      p->objective != NLCORE_MEMORY_MLP_OBJECTIVE_DOT)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "memory_mlp: problem->objective must be NLCORE_MEMORY_MLP_OBJECTIVE_L2 (0) or "
                "NLCORE_MEMORY_MLP_OBJECTIVE_DOT (1), got %d", (int)p->objective);
  NLCORE_TRY(check_flag("residual", p->residual));
  NLCORE_TRY(check_flag("self_target", p->self_target));
  NLCORE_TRY(check_flag("dgd_erase", p->dgd_erase));
  NLCORE_TRY(check_flag("has_g", p->has_g));
  NLCORE_TRY(check_flag("weights_shared", p->weights_shared));
  NLCORE_TRY(check_flag("has_initial_state", p->has_initial_state));
  if (p->has_initial_state && p->weights_shared)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "memory_mlp: problem->has_initial_state = 1 requires per-sequence weights "
                "(weights_shared = 0)");
  if (p->checkpoint_every < 1)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "memory_mlp: problem->checkpoint_every must be >= 1, got %lld",
                (long long)p->checkpoint_every);
  if ((p->flags & ~uint32_t(NLCORE_MEMORY_MLP_FLAG_PERSISTENT)) != 0)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "memory_mlp: problem->flags has unknown bits 0x%x (known: "
                "NLCORE_MEMORY_MLP_FLAG_PERSISTENT = 0x%x)",
                p->flags & ~uint32_t(NLCORE_MEMORY_MLP_FLAG_PERSISTENT),
                (unsigned)NLCORE_MEMORY_MLP_FLAG_PERSISTENT);
  if (!dtype_built(dt))
    return fail(NLCORE_STATUS_NOT_SUPPORTED,
                "memory_mlp: problem->dtype = %s is not built in this kernel set ('%s'); rebuild "
                "with NLCORE_KERNEL_SET=full", dtype_name(dt), kKernelSetName);
  if ((long double)p->batch * p->seqlen * p->heads * 128 > (long double)(INT64_MAX / 8) ||
      (long double)p->num_sequences * p->heads > (long double)INT32_MAX)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "memory_mlp: problem too large (batch %lld, seqlen %lld, num_sequences %lld, "
                "heads %d)", (long long)p->batch, (long long)p->seqlen,
                (long long)p->num_sequences, (int)p->heads);

  Plan P{};
  P.dtype = dt;
  P.varlen = varlen;
  P.dims.B = p->batch;
  P.dims.T = p->seqlen;
  P.dims.N = p->num_sequences;
  P.dims.H = p->heads;
  P.dims.D = p->head_dim;
  P.dims.F = p->hidden_dim;
  P.dims.C = p->chunk_size;
  P.dims.ckpt_every = p->checkpoint_every;
  P.dims.has_initial_state = p->has_initial_state != 0;
  P.dims.self_target = p->self_target != 0;
  const int64_t rows = chunk_rows(p->seqlen, p->chunk_size);
  if (ceil_div(rows, kTileM) > kMaxGridY)
    return fail(NLCORE_STATUS_NOT_SUPPORTED,
                "memory_mlp: chunks of up to %lld tokens exceed the kernels' limit of %lld "
                "(chunk_size %lld, seqlen %lld)", (long long)rows,
                (long long)kMaxGridY * kTileM, (long long)p->chunk_size, (long long)p->seqlen);
  P.fwd = make_layout(P.dims, false);
  P.bwd = make_layout(P.dims, true);
  if (!P.fwd.ok || !P.bwd.ok)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "memory_mlp: problem too large: the workspace size overflows (batch %lld, "
                "seqlen %lld, heads %d, head_dim %d, hidden_dim %d, chunk_size %lld)",
                (long long)p->batch, (long long)p->seqlen, (int)p->heads, (int)p->head_dim,
                (int)p->hidden_dim, (long long)p->chunk_size);
  *out = P;
  return NLCORE_STATUS_SUCCESS;
}

nlcore_status_t need(const void* ptr, const char* name) {
  if (ptr == nullptr) return fail(NLCORE_STATUS_INVALID_VALUE, "memory_mlp: %s is NULL", name);
  return NLCORE_STATUS_SUCCESS;
}
nlcore_status_t need_iff(const void* ptr, bool flag, const char* name, const char* flag_name) {
  if (flag && ptr == nullptr)
    return fail(NLCORE_STATUS_INVALID_VALUE, "memory_mlp: %s is NULL but problem->%s = 1", name,
                flag_name);
  if (!flag && ptr != nullptr)
    return fail(NLCORE_STATUS_INVALID_VALUE, "memory_mlp: %s is non-NULL but problem->%s = 0",
                name, flag_name);
  return NLCORE_STATUS_SUCCESS;
}
nlcore_status_t aligned(const void* ptr, size_t a, const char* name) {
  if (ptr != nullptr && reinterpret_cast<uintptr_t>(ptr) % a != 0)
    return fail(NLCORE_STATUS_INVALID_VALUE, "memory_mlp: %s (%p) must be aligned to %zu bytes",
                name, ptr, a);
  return NLCORE_STATUS_SUCCESS;
}

nlcore_status_t check_tensors(const Plan& P, const nlcore_memory_mlp_problem_t* p,
                              const nlcore_memory_mlp_tensors_t* t, bool backward) {
  if (t == nullptr) return fail(NLCORE_STATUS_INVALID_VALUE, "memory_mlp: tensors is NULL");
  const size_t eb = dtype_bytes(P.dtype);
  const bool init = p->has_initial_state != 0;
  NLCORE_TRY(need(t->x, "tensors->x"));
  NLCORE_TRY(need(t->k, "tensors->k"));
  NLCORE_TRY(need(t->v, "tensors->v"));
  NLCORE_TRY(need(t->eta, "tensors->eta"));
  NLCORE_TRY(need_iff(t->g, p->has_g, "tensors->g", "has_g"));
  NLCORE_TRY(need(t->w_in, "tensors->w_in"));
  NLCORE_TRY(need(t->w_out, "tensors->w_out"));
  NLCORE_TRY(need_iff(t->p_in, init, "tensors->p_in", "has_initial_state"));
  NLCORE_TRY(need_iff(t->p_out, init, "tensors->p_out", "has_initial_state"));
  NLCORE_TRY(need_iff(t->acc_in, init, "tensors->acc_in", "has_initial_state"));
  NLCORE_TRY(need_iff(t->acc_out, init, "tensors->acc_out", "has_initial_state"));
  NLCORE_TRY(need_iff(t->acc_g, init, "tensors->acc_g", "has_initial_state"));
  NLCORE_TRY(need_iff(t->n, init, "tensors->n", "has_initial_state"));
  if (!backward) {
    NLCORE_TRY(need(t->y, "tensors->y"));
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
  NLCORE_TRY(aligned(t->k, eb, "tensors->k"));
  NLCORE_TRY(aligned(t->v, eb, "tensors->v"));
  const void* f32[] = {t->eta, t->g, t->w_in, t->w_out, t->p_in, t->p_out, t->acc_in,
                       t->acc_out, t->acc_g};
  const char* f32_names[] = {"tensors->eta", "tensors->g", "tensors->w_in", "tensors->w_out",
                             "tensors->p_in", "tensors->p_out", "tensors->acc_in",
                             "tensors->acc_out", "tensors->acc_g"};
  for (int i = 0; i < 9; ++i) NLCORE_TRY(aligned(f32[i], 4, f32_names[i]));
  NLCORE_TRY(aligned(t->n, 8, "tensors->n"));
  if (!backward) {
    NLCORE_TRY(aligned(t->y, eb, "tensors->y"));
    const void* outs[] = {t->w_in_final, t->w_out_final, t->p_in_final, t->p_out_final,
                          t->acc_in_final, t->acc_out_final, t->acc_g_final};
    const char* out_names[] = {"tensors->w_in_final", "tensors->w_out_final",
                               "tensors->p_in_final", "tensors->p_out_final",
                               "tensors->acc_in_final", "tensors->acc_out_final",
                               "tensors->acc_g_final"};
    for (int i = 0; i < 7; ++i) NLCORE_TRY(aligned(outs[i], 4, out_names[i]));
    NLCORE_TRY(aligned(t->n_final, 8, "tensors->n_final"));
  }
  if (p->cu_seqlens != nullptr)
    NLCORE_TRY(aligned(p->cu_seqlens, p->cu_seqlens_dtype == NLCORE_DTYPE_INT64 ? 8 : 4,
                       "problem->cu_seqlens"));
  return NLCORE_STATUS_SUCCESS;
}

nlcore_status_t check_grads(const Plan& P, const nlcore_memory_mlp_problem_t* p,
                            const nlcore_memory_mlp_grads_t* g) {
  if (g == nullptr) return fail(NLCORE_STATUS_INVALID_VALUE, "memory_mlp: grads is NULL");
  const size_t eb = dtype_bytes(P.dtype);
  NLCORE_TRY(need(g->grad_y, "grads->grad_y"));
  NLCORE_TRY(need(g->dx, "grads->dx"));
  NLCORE_TRY(need(g->dk, "grads->dk"));
  NLCORE_TRY(need(g->dv, "grads->dv"));
  NLCORE_TRY(need(g->deta, "grads->deta"));
  NLCORE_TRY(need(g->dw_in, "grads->dw_in"));
  NLCORE_TRY(need(g->dw_out, "grads->dw_out"));
  if (p->has_g) NLCORE_TRY(need(g->dg, "grads->dg (has_g = 1)"));
  if (p->has_initial_state) {
    NLCORE_TRY(need(g->dp_in, "grads->dp_in (has_initial_state = 1)"));
    NLCORE_TRY(need(g->dp_out, "grads->dp_out (has_initial_state = 1)"));
    NLCORE_TRY(need(g->dacc_in, "grads->dacc_in (has_initial_state = 1)"));
    NLCORE_TRY(need(g->dacc_out, "grads->dacc_out (has_initial_state = 1)"));
    NLCORE_TRY(need(g->dacc_g, "grads->dacc_g (has_initial_state = 1)"));
  }
  NLCORE_TRY(aligned(g->grad_y, eb, "grads->grad_y"));
  NLCORE_TRY(aligned(g->dx, eb, "grads->dx"));
  NLCORE_TRY(aligned(g->dk, eb, "grads->dk"));
  NLCORE_TRY(aligned(g->dv, eb, "grads->dv"));
  const void* f32[] = {g->grad_w_in, g->grad_w_out, g->grad_p_in, g->grad_p_out,
                       g->grad_acc_in, g->grad_acc_out, g->grad_acc_g, g->deta, g->dg,
                       g->dw_in, g->dw_out, g->dp_in, g->dp_out, g->dacc_in, g->dacc_out,
                       g->dacc_g};
  const char* names[] = {"grads->grad_w_in", "grads->grad_w_out", "grads->grad_p_in",
                         "grads->grad_p_out", "grads->grad_acc_in", "grads->grad_acc_out",
                         "grads->grad_acc_g", "grads->deta", "grads->dg", "grads->dw_in",
                         "grads->dw_out", "grads->dp_in", "grads->dp_out", "grads->dacc_in",
                         "grads->dacc_out", "grads->dacc_g"};
  for (int i = 0; i < 16; ++i) NLCORE_TRY(aligned(f32[i], 4, names[i]));
  return NLCORE_STATUS_SUCCESS;
}

nlcore_status_t check_workspace(size_t need, void* workspace, size_t workspace_bytes) {
  if (need == 0) return NLCORE_STATUS_SUCCESS;
  if (workspace == nullptr)
    return fail(NLCORE_STATUS_INVALID_VALUE,
                "memory_mlp: workspace is NULL but %zu bytes are required", need);
  if (reinterpret_cast<uintptr_t>(workspace) % kWorkspaceAlign != 0)
    return fail(NLCORE_STATUS_INVALID_VALUE, "memory_mlp: workspace (%p) must be %zu-byte aligned",
                workspace, kWorkspaceAlign);
  if (workspace_bytes < need)
    return fail(NLCORE_STATUS_INSUFFICIENT_WORKSPACE,
                "memory_mlp: workspace_bytes = %zu is smaller than the %zu bytes required",
                workspace_bytes, need);
  return NLCORE_STATUS_SUCCESS;
}

// workspace == NULL: no workspace pointers (the persistent forward uses none).
Params make_params(const Plan& P, const Layout& L, const nlcore_memory_mlp_problem_t* p,
                   const nlcore_memory_mlp_tensors_t* t, void* workspace) {
  Params q{};
  q.B = P.dims.B;
  q.T = P.dims.T;
  q.N = P.dims.N;
  q.C = P.dims.C;
  q.nc_bound = L.nc_bound;
  q.H = P.dims.H;
  q.D = P.dims.D;
  q.F = P.dims.F;
  q.rows = static_cast<int>(L.rows);
  q.elem_bytes = static_cast<int>(dtype_bytes(P.dtype));
  q.gelu = p->activation == NLCORE_MEMORY_MLP_ACT_GELU;
  q.residual = p->residual;
  q.l2 = p->objective == NLCORE_MEMORY_MLP_OBJECTIVE_L2;
  q.self_target = p->self_target;
  q.erase = p->dgd_erase;
  q.has_g = p->has_g;
  q.has_init = p->has_initial_state;
  q.w_shared = p->weights_shared;
  q.momentum = p->momentum;
  q.cu = p->cu_seqlens;
  q.cu_is64 = p->cu_seqlens_dtype == NLCORE_DTYPE_INT64 ? 1 : 0;
  q.x = t->x;
  q.k = t->k;
  q.v = t->v;
  q.eta = static_cast<const float*>(t->eta);
  q.g = static_cast<const float*>(t->g);
  q.w1_init = static_cast<const float*>(t->w_in);
  q.w2_init = static_cast<const float*>(t->w_out);
  q.p1_init = static_cast<const float*>(t->p_in);
  q.p2_init = static_cast<const float*>(t->p_out);
  q.a1_init = static_cast<const float*>(t->acc_in);
  q.a2_init = static_cast<const float*>(t->acc_out);
  q.ag_init = static_cast<const float*>(t->acc_g);
  q.n_init = static_cast<const int64_t*>(t->n);
  if (workspace == nullptr) return q;
  char* ws = static_cast<char*>(workspace);
  auto f = [&](size_t off) { return reinterpret_cast<float*>(ws + off); };
  q.seq = reinterpret_cast<int64_t*>(ws + L.seq);
  q.alpha = f(L.alpha);
  q.Z = f(L.Z);
  q.Zx = f(L.Zx);
  q.Zv = P.dims.self_target ? f(L.Zv) : nullptr;
  q.Tg = P.dims.self_target ? f(L.Tg) : nullptr;
  q.E = f(L.E);
  q.Q1 = f(L.Q1);
  return q;
}

PersistFn find_persist(int dt) {
  switch (dt) {
    case NLCORE_DTYPE_BFLOAT16: return &persist_bf16;
#if !defined(NLCORE_KERNEL_SET_CI)
    case NLCORE_DTYPE_FLOAT16: return &persist_f16;
    case NLCORE_DTYPE_FLOAT32: return &persist_f32;
#endif
  }
  return nullptr;
}

// ---- step one or persistent ----------------------------------------------------------------
struct Choice {
  bool persistent;
  PersistLaunch launch;
  PersistFn fn;
  const char* reason;  // static text; "" when persistent
};

// The forward's path for a validated problem: STEP unless the flag is set, the (D, F) slice
// fits (persist::config_for), the dtype's kernel is built, and the current device can run a
// cluster of that size with that much shared memory from a loaded sm_90 image. Runtime queries
// only (no stream work, no sync); a failing one means STEP (its error is cleared).
Choice choose_path(const Plan& P, const nlcore_memory_mlp_problem_t* p) {
  Choice c{};
  c.persistent = false;
  if ((p->flags & NLCORE_MEMORY_MLP_FLAG_PERSISTENT) == 0) {
    c.reason = "NLCORE_MEMORY_MLP_FLAG_PERSISTENT is not set";
    return c;
  }
  const persist::Config cfg = persist::config_for(P.dims.D, P.dims.F);
  if (cfg.cluster == 0) {
    c.reason = cfg.why;
    return c;
  }
  const int64_t pairs = P.dims.N * P.dims.H;
  if (pairs * cfg.cluster > int64_t(INT32_MAX)) {
    c.reason = "more CTAs (num_sequences x heads x cluster) than one launch takes";
    return c;
  }
  c.fn = find_persist(P.dtype);
  if (c.fn == nullptr) {
    c.reason = "no persistent kernel for this dtype in this build";
    return c;
  }
  c.launch.D = P.dims.D;
  c.launch.fc = cfg.fc;
  c.launch.cluster = cfg.cluster;
  c.launch.smem = cfg.smem;
  c.launch.pairs = pairs;
  int dev = 0, major = 0, cluster_ok = 0, optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    c.reason = "no current CUDA device (cudaGetDevice failed)";
    return c;
  }
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&cluster_ok, cudaDevAttrClusterLaunch, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) !=
          cudaSuccess) {
    (void)cudaGetLastError();
    c.reason = "cudaDeviceGetAttribute failed";
    return c;
  }
  if (major < 9 || !cluster_ok) {
    c.reason = "the device has no thread-block clusters (compute capability < 9.0)";
    return c;
  }
  if (size_t(optin) < cfg.smem) {
    c.reason = "the device's opt-in shared memory per block is smaller than the slice needs";
    return c;
  }
  int max_clusters = 0;
  if (c.fn(nullptr, c.launch, &max_clusters, nullptr) != NLCORE_STATUS_SUCCESS) {
    (void)cudaGetLastError();
    c.reason = "the persistent kernel cannot be loaded for this device (probe failed)";
    return c;
  }
  if (max_clusters < 0) {
    c.reason = "the loaded kernel image has no sm_90 body (build with 90a-real)";
    return c;
  }
  if (max_clusters == 0) {
    c.reason = "no cluster of this size and shared memory can be resident on the device";
    return c;
  }
  c.persistent = true;
  c.reason = "";
  return c;
}

GemmFn find_gemm(int dt) {
  switch (dt) {
    case NLCORE_DTYPE_BFLOAT16: return &gemm_bf16;
#if !defined(NLCORE_KERNEL_SET_CI)
    case NLCORE_DTYPE_FLOAT16: return &gemm_f16;
    case NLCORE_DTYPE_FLOAT32: return &gemm_f32;
#endif
  }
  return nullptr;
}

}  // namespace
}  // namespace nlcore::memory_mlp

extern "C" {

NLCORE_API nlcore_status_t nlcore_memory_mlp_workspace_size(
    const nlcore_memory_mlp_problem_t* problem, int32_t backward, size_t* workspace_bytes) {
  using namespace nlcore::memory_mlp;
  if (workspace_bytes == nullptr)
    return nlcore::detail::fail(NLCORE_STATUS_INVALID_VALUE,
                                "memory_mlp_workspace_size: workspace_bytes is NULL");
  if (backward != 0 && backward != 1)
    return nlcore::detail::fail(NLCORE_STATUS_INVALID_VALUE,
                                "memory_mlp_workspace_size: backward must be 0 or 1, got %d",
                                (int)backward);
  try {
    Plan P;
    const nlcore_status_t st = make_plan(problem, &P);
    if (st != NLCORE_STATUS_SUCCESS) return st;
    if (backward) {
      *workspace_bytes = P.bwd.total;
    } else {
      const bool persistent = (problem->flags & NLCORE_MEMORY_MLP_FLAG_PERSISTENT) != 0 &&
                              choose_path(P, problem).persistent;
      *workspace_bytes = persistent ? 0 : P.fwd.total;
    }
    return NLCORE_STATUS_SUCCESS;
  } catch (...) {
    return nlcore::detail::fail(NLCORE_STATUS_INTERNAL_ERROR,
                                "memory_mlp: unexpected C++ exception");
  }
}

NLCORE_API nlcore_status_t nlcore_memory_mlp_forward_path(
    const nlcore_memory_mlp_problem_t* problem, nlcore_memory_mlp_path_t* path) {
  using namespace nlcore::memory_mlp;
  if (path == nullptr)
    return nlcore::detail::fail(NLCORE_STATUS_INVALID_VALUE,
                                "memory_mlp_forward_path: path is NULL");
  try {
    Plan P;
    const nlcore_status_t st = make_plan(problem, &P);
    if (st != NLCORE_STATUS_SUCCESS) return st;
    const Choice ch = choose_path(P, problem);
    path->path = ch.persistent ? NLCORE_MEMORY_MLP_PATH_PERSISTENT : NLCORE_MEMORY_MLP_PATH_STEP;
    path->cluster_size = ch.persistent ? ch.launch.cluster : 0;
    path->smem_bytes = ch.persistent ? static_cast<int64_t>(ch.launch.smem) : 0;
    path->reason = ch.reason != nullptr ? ch.reason : "";
    return NLCORE_STATUS_SUCCESS;
  } catch (...) {
    return nlcore::detail::fail(NLCORE_STATUS_INTERNAL_ERROR,
                                "memory_mlp: unexpected C++ exception");
  }
}

NLCORE_API nlcore_status_t nlcore_memory_mlp_forward(const nlcore_memory_mlp_problem_t* problem,
                                                     const nlcore_memory_mlp_tensors_t* tensors,
                                                     void* workspace, size_t workspace_bytes,
                                                     cudaStream_t stream) {
  using namespace nlcore::memory_mlp;
  try {
    Plan P;
    nlcore_status_t st = make_plan(problem, &P);
    if (st != NLCORE_STATUS_SUCCESS) return st;
    if ((st = check_tensors(P, problem, tensors, false)) != NLCORE_STATUS_SUCCESS) return st;
    // ---- from here on: CUDA runtime queries (the path), then launches ----
    const Choice ch = choose_path(P, problem);
    if ((st = check_workspace(ch.persistent ? 0 : P.fwd.total, workspace, workspace_bytes)) !=
        NLCORE_STATUS_SUCCESS)
      return st;
    GemmFn gemm = find_gemm(P.dtype);
    if (gemm == nullptr)
      return nlcore::detail::fail(NLCORE_STATUS_INTERNAL_ERROR,
                                  "memory_mlp: GEMM launcher missing");
    Params prm = make_params(P, P.fwd, problem, tensors, ch.persistent ? nullptr : workspace);
    // The state is stepped in place in the final-state outputs.
    prm.w1 = static_cast<float*>(tensors->w_in_final);
    prm.w2 = static_cast<float*>(tensors->w_out_final);
    prm.p1 = static_cast<float*>(tensors->p_in_final);
    prm.p2 = static_cast<float*>(tensors->p_out_final);
    prm.a1 = static_cast<float*>(tensors->acc_in_final);
    prm.a2 = static_cast<float*>(tensors->acc_out_final);
    prm.ag = static_cast<float*>(tensors->acc_g_final);
    prm.y = tensors->y;
    prm.n_out = static_cast<int64_t*>(tensors->n_final);
    if (ch.persistent) return run_forward_persistent(prm, ch.launch, ch.fn, stream);
    return run_forward(prm, gemm, stream);
  } catch (...) {
    return nlcore::detail::fail(NLCORE_STATUS_INTERNAL_ERROR,
                                "memory_mlp: unexpected C++ exception");
  }
}

NLCORE_API nlcore_status_t nlcore_memory_mlp_backward(const nlcore_memory_mlp_problem_t* problem,
                                                      const nlcore_memory_mlp_tensors_t* tensors,
                                                      const nlcore_memory_mlp_grads_t* grads,
                                                      void* workspace, size_t workspace_bytes,
                                                      cudaStream_t stream) {
  using namespace nlcore::memory_mlp;
  try {
    Plan P;
    nlcore_status_t st = make_plan(problem, &P);
    if (st != NLCORE_STATUS_SUCCESS) return st;
    if ((st = check_tensors(P, problem, tensors, true)) != NLCORE_STATUS_SUCCESS) return st;
    if ((st = check_grads(P, problem, grads)) != NLCORE_STATUS_SUCCESS) return st;
    if ((st = check_workspace(P.bwd.total, workspace, workspace_bytes)) != NLCORE_STATUS_SUCCESS)
      return st;
    GemmFn gemm = find_gemm(P.dtype);
    if (gemm == nullptr)
      return nlcore::detail::fail(NLCORE_STATUS_INTERNAL_ERROR,
                                  "memory_mlp: GEMM launcher missing");
    const Layout& L = P.bwd;
    Params prm = make_params(P, L, problem, tensors, workspace);
    char* ws = static_cast<char*>(workspace);
    auto f = [&](size_t off) { return reinterpret_cast<float*>(ws + off); };
    const size_t slab = size_t(P.dims.N) * P.dims.H * size_t(P.dims.F) * P.dims.D;
    float* work = f(L.work);  // W1, W2, P1, P2, A1, A2: consecutive slabs
    prm.w1 = work;
    prm.w2 = work + slab;
    prm.p1 = work + 2 * slab;
    prm.p2 = work + 3 * slab;
    prm.a1 = work + 4 * slab;
    prm.a2 = work + 5 * slab;
    prm.ag = f(L.work_ag);
    float* grad = f(L.grad);  // dW1, dW2, dP1, dP2, dA1, dA2
    prm.dw1 = grad;
    prm.dw2 = grad + slab;
    prm.dp1 = grad + 2 * slab;
    prm.dp2 = grad + 3 * slab;
    prm.da1 = grad + 4 * slab;
    prm.da2 = grad + 5 * slab;
    prm.dag = f(L.dag);
    prm.dsg = f(L.dsg);
    prm.R = f(L.R);
    prm.dQ1 = f(L.dQ1);
    prm.dR = f(L.dR);
    prm.dZ = f(L.dZ);
    prm.dZv = P.dims.self_target ? f(L.dZv) : nullptr;
    prm.dZx = f(L.dZx);
    prm.dEeta = f(L.dEeta);
    prm.dE = f(L.dE);
    prm.dy = grads->grad_y;
    prm.dx = grads->dx;
    prm.dk = grads->dk;
    prm.dv = grads->dv;
    prm.deta = static_cast<float*>(grads->deta);
    prm.dg = problem->has_g ? static_cast<float*>(grads->dg) : nullptr;
    BackwardBuffers bb{};
    bb.ckpt = f(L.ckpt);
    bb.seg = f(L.seg);
    bb.ckpt_every = L.ckpt_every;
    bb.n_ckpt = L.n_ckpt;
    const void* gf[7] = {grads->grad_w_in, grads->grad_w_out, grads->grad_p_in,
                         grads->grad_p_out, grads->grad_acc_in, grads->grad_acc_out,
                         grads->grad_acc_g};
    for (int i = 0; i < 7; ++i) bb.grad_final[i] = static_cast<const float*>(gf[i]);
    bb.dw_in = static_cast<float*>(grads->dw_in);
    bb.dw_out = static_cast<float*>(grads->dw_out);
    if (problem->has_initial_state) {
      void* di[5] = {grads->dp_in, grads->dp_out, grads->dacc_in, grads->dacc_out,
                     grads->dacc_g};
      for (int i = 0; i < 5; ++i) bb.d_init[i] = static_cast<float*>(di[i]);
    }
    // ---- from here on: CUDA runtime calls ----
    return run_backward(prm, bb, gemm, stream);
  } catch (...) {
    return nlcore::detail::fail(NLCORE_STATUS_INTERNAL_ERROR,
                                "memory_mlp: unexpected C++ exception");
  }
}

}  // extern "C"
