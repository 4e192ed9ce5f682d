// Host-only tests of the self-modifying-memories C API (no GPU needed): validation of every
// problem field, tensor / gradient pointer and workspace argument (status + message, returned
// before any CUDA call), workspace sizes against the shared layout function, the index maps that
// run the four memories as 4·N sequences of the MLP-scan kernels, and the scalar math of the
// derive step with its derivatives. Prints "N passed, M failed"; exits non-zero on failure.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "check.h"
#include "memory_mlp/kernel_set.h"
#include "nlcore/self_modifying.h"
#include "self_modifying/layout.h"

namespace {

namespace sm = nlcore::self_modifying;
using Problem = nlcore_self_modifying_problem_t;
using Tensors = nlcore_self_modifying_tensors_t;
using Grads = nlcore_self_modifying_grads_t;

Problem base() {
  Problem p{};
  p.batch = 2;
  p.seqlen = 100;
  p.num_sequences = 2;
  p.heads = 3;
  p.head_dim = 64;
  p.hidden_dim = 128;
  p.dtype = NLCORE_DTYPE_BFLOAT16;
  p.chunk_size = 16;
  p.eta_max = 1.0f;
  p.momentum = 0.9f;
  p.activation = NLCORE_SELF_MODIFYING_ACT_SILU;
  p.dgd_erase = 1;
  p.weights_shared = 0;
  p.has_initial_state = 1;
  p.checkpoint_every = 4;
  p.cu_seqlens = nullptr;
  p.cu_seqlens_dtype = NLCORE_DTYPE_INT32;
  p.flags = NLCORE_SELF_MODIFYING_FLAG_DEFAULT;
  return p;
}

void* fake(uintptr_t a) { return reinterpret_cast<void*>(a); }

Tensors tensors_for(const Problem& p) {
  Tensors t{};
  const bool init = p.has_initial_state != 0;
  t.x = fake(0x10000);
  t.w_in = fake(0x20000);
  t.w_out = fake(0x30000);
  t.w_eta = fake(0x40000);
  t.w_alpha = fake(0x50000);
  t.b_eta = fake(0x60000);
  t.b_alpha = fake(0x70000);
  t.p_in = init ? fake(0x80000) : nullptr;
  t.p_out = init ? fake(0x90000) : nullptr;
  t.acc_in = init ? fake(0xa0000) : nullptr;
  t.acc_out = init ? fake(0xb0000) : nullptr;
  t.acc_g = init ? fake(0xc0000) : nullptr;
  t.n = init ? fake(0xd0000) : nullptr;
  t.k = fake(0xe0000);
  t.v = fake(0xe8000);
  t.eta = fake(0xf0000);
  t.g = fake(0xf8000);
  t.w_in_final = fake(0x100000);
  t.w_out_final = fake(0x110000);
  t.p_in_final = fake(0x120000);
  t.p_out_final = fake(0x130000);
  t.acc_in_final = fake(0x140000);
  t.acc_out_final = fake(0x150000);
  t.acc_g_final = fake(0x160000);
  t.n_final = fake(0x170000);
  return t;
}

Grads grads_for(const Problem& p) {
  Grads g{};
  const bool init = p.has_initial_state != 0;
  g.grad_k = fake(0x200000);
  g.grad_v = fake(0x208000);
  g.grad_eta = fake(0x210000);
  g.grad_g = fake(0x218000);
  g.dx = fake(0x220000);
  g.dw_in = fake(0x230000);
  g.dw_out = fake(0x240000);
  g.dw_eta = fake(0x250000);
  g.dw_alpha = fake(0x258000);
  g.db_eta = fake(0x260000);
  g.db_alpha = fake(0x268000);
  g.dp_in = init ? fake(0x280000) : nullptr;
  g.dp_out = init ? fake(0x290000) : nullptr;
  g.dacc_in = init ? fake(0x2a0000) : nullptr;
  g.dacc_out = init ? fake(0x2b0000) : nullptr;
  g.dacc_g = init ? fake(0x2c0000) : nullptr;
  return g;
}

bool contains(const std::string& hay, const char* needle) {
  return hay.find(needle) != std::string::npos;
}

// All four entry points (size fwd/bwd, forward, backward) must reject `p` with `want` and a
// message containing every needle. The fake device pointers are never dereferenced: validation
// returns before any CUDA call.
void expect_reject(const char* name, const Problem& p, nlcore_status_t want,
                   std::vector<const char*> needles) {
  size_t ws0 = 12345, ws1 = 12345;
  const Tensors t = tensors_for(p);
  const Grads g = grads_for(p);
  void* w = fake(0x1000000);
  const nlcore_status_t s1 = nlcore_self_modifying_workspace_size(&p, 0, &ws0);
  const std::string m1 = nlcore_last_error_message();
  const nlcore_status_t s2 = nlcore_self_modifying_workspace_size(&p, 1, &ws1);
  const std::string m2 = nlcore_last_error_message();
  const nlcore_status_t s3 = nlcore_self_modifying_forward(&p, &t, w, SIZE_MAX, nullptr);
  const std::string m3 = nlcore_last_error_message();
  const nlcore_status_t s4 = nlcore_self_modifying_backward(&p, &t, &g, w, SIZE_MAX, nullptr);
  const std::string m4 = nlcore_last_error_message();
  CHECK(s1 == want && s2 == want && s3 == want && s4 == want,
        "%s: got %s/%s/%s/%s, want %s (msg: %s)", name, nlcore_status_string(s1),
        nlcore_status_string(s2), nlcore_status_string(s3), nlcore_status_string(s4),
        nlcore_status_string(want), m4.c_str());
  CHECK(ws0 == 12345 && ws1 == 12345, "%s: workspace size written on failure", name);
  for (const char* n : needles)
    CHECK(contains(m1, n) && contains(m2, n) && contains(m3, n) && contains(m4, n),
          "%s: message '%s' lacks '%s'", name, m4.c_str(), n);
}

void expect_fwd_reject(const char* name, const Problem& p, const Tensors& t, void* ws, size_t wsb,
                       nlcore_status_t want, const char* needle) {
  const nlcore_status_t s = nlcore_self_modifying_forward(&p, &t, ws, wsb, nullptr);
  const std::string m = nlcore_last_error_message();
  CHECK(s == want, "%s: got %s, want %s (msg: %s)", name, nlcore_status_string(s),
        nlcore_status_string(want), m.c_str());
  CHECK(contains(m, needle), "%s: message '%s' lacks '%s'", name, m.c_str(), needle);
}

void expect_bwd_reject(const char* name, const Problem& p, const Tensors& t, const Grads* g,
                       void* ws, size_t wsb, nlcore_status_t want, const char* needle) {
  const nlcore_status_t s = nlcore_self_modifying_backward(&p, &t, g, ws, wsb, nullptr);
  const std::string m = nlcore_last_error_message();
  CHECK(s == want, "%s: got %s, want %s (msg: %s)", name, nlcore_status_string(s),
        nlcore_status_string(want), m.c_str());
  CHECK(contains(m, needle), "%s: message '%s' lacks '%s'", name, m.c_str(), needle);
}

void test_problem_validation() {
  Problem p;
  p = base(); p.batch = 0;
  expect_reject("batch=0", p, NLCORE_STATUS_INVALID_VALUE, {"batch", "0", "self_modifying"});
  p = base(); p.seqlen = -1;
  expect_reject("seqlen=-1", p, NLCORE_STATUS_INVALID_VALUE, {"seqlen", "-1"});
  p = base(); p.num_sequences = 0;
  expect_reject("num_sequences=0", p, NLCORE_STATUS_INVALID_VALUE, {"num_sequences"});
  p = base(); p.num_sequences = 3;
  expect_reject("num_sequences!=batch", p, NLCORE_STATUS_INVALID_VALUE,
                {"num_sequences", "3", "2"});
  int32_t cu_dummy[4] = {0, 0, 0, 0};
  p = base(); p.cu_seqlens = cu_dummy;
  expect_reject("varlen batch=2", p, NLCORE_STATUS_INVALID_VALUE, {"batch", "cu_seqlens"});
  p = base(); p.batch = 1; p.num_sequences = 3; p.cu_seqlens = cu_dummy;
  p.cu_seqlens_dtype = NLCORE_DTYPE_BFLOAT16;
  expect_reject("cu_seqlens_dtype", p, NLCORE_STATUS_INVALID_VALUE,
                {"cu_seqlens_dtype", "BFLOAT16"});
  p = base(); p.heads = 0;
  expect_reject("heads=0", p, NLCORE_STATUS_INVALID_VALUE, {"heads"});
  p = base(); p.head_dim = 0;
  expect_reject("head_dim=0", p, NLCORE_STATUS_INVALID_VALUE, {"head_dim"});
  p = base(); p.head_dim = 16; p.hidden_dim = 16;
  expect_reject("head_dim=16", p, NLCORE_STATUS_NOT_SUPPORTED, {"head_dim", "16"});
  p = base(); p.head_dim = 256; p.hidden_dim = 256;
  expect_reject("head_dim=256", p, NLCORE_STATUS_NOT_SUPPORTED, {"head_dim", "256"});
  p = base(); p.hidden_dim = -4;
  expect_reject("hidden_dim=-4", p, NLCORE_STATUS_INVALID_VALUE, {"hidden_dim"});
  p = base(); p.hidden_dim = 192;
  expect_reject("hidden_dim=3D", p, NLCORE_STATUS_NOT_SUPPORTED, {"hidden_dim", "192"});
  p = base(); p.dtype = NLCORE_DTYPE_FLOAT64;
  expect_reject("dtype=f64", p, NLCORE_STATUS_NOT_SUPPORTED, {"dtype", "FLOAT64"});
  p = base(); p.dtype = static_cast<nlcore_dtype_t>(11);
  expect_reject("dtype=11", p, NLCORE_STATUS_INVALID_VALUE, {"dtype", "11"});
  p = base(); p.dtype = NLCORE_DTYPE_INT32;
  expect_reject("dtype=int32", p, NLCORE_STATUS_INVALID_VALUE, {"dtype", "INT32"});
  p = base(); p.chunk_size = 0;
  expect_reject("chunk_size=0", p, NLCORE_STATUS_INVALID_VALUE, {"chunk_size", "0"});
  p = base(); p.chunk_size = INT64_MAX;
  expect_reject("chunk_size=INT64_MAX", p, NLCORE_STATUS_NOT_SUPPORTED, {"chunk_size", "2^62"});
  p = base(); p.eta_max = 0.0f;
  expect_reject("eta_max=0", p, NLCORE_STATUS_INVALID_VALUE, {"eta_max", "> 0"});
  p = base(); p.eta_max = -1.0f;
  expect_reject("eta_max=-1", p, NLCORE_STATUS_INVALID_VALUE, {"eta_max", "-1"});
  p = base(); p.eta_max = std::numeric_limits<float>::quiet_NaN();
  expect_reject("eta_max=nan", p, NLCORE_STATUS_INVALID_VALUE, {"eta_max"});
  p = base(); p.eta_max = std::numeric_limits<float>::infinity();
  expect_reject("eta_max=inf", p, NLCORE_STATUS_INVALID_VALUE, {"eta_max"});
  p = base(); p.momentum = std::numeric_limits<float>::quiet_NaN();
  expect_reject("momentum=nan", p, NLCORE_STATUS_INVALID_VALUE, {"momentum"});
  p = base(); p.momentum = -std::numeric_limits<float>::infinity();
  expect_reject("momentum=-inf", p, NLCORE_STATUS_INVALID_VALUE, {"momentum"});
  p = base(); p.activation = 2;
  expect_reject("activation=2", p, NLCORE_STATUS_INVALID_VALUE, {"activation", "2"});
  p = base(); p.dgd_erase = 2;
  expect_reject("dgd_erase=2", p, NLCORE_STATUS_INVALID_VALUE, {"dgd_erase", "2"});
  p = base(); p.weights_shared = -1;
  expect_reject("weights_shared=-1", p, NLCORE_STATUS_INVALID_VALUE, {"weights_shared", "-1"});
  p = base(); p.has_initial_state = 5;
  expect_reject("has_initial_state=5", p, NLCORE_STATUS_INVALID_VALUE,
                {"has_initial_state", "5"});
  p = base(); p.weights_shared = 1;
  expect_reject("shared + initial state", p, NLCORE_STATUS_INVALID_VALUE,
                {"has_initial_state", "weights_shared = 0"});
  p = base(); p.checkpoint_every = 0;
  expect_reject("checkpoint_every=0", p, NLCORE_STATUS_INVALID_VALUE, {"checkpoint_every", "0"});
  p = base(); p.flags = 0x10;
  expect_reject("flags=0x10", p, NLCORE_STATUS_INVALID_VALUE, {"flags", "0x10"});
#if defined(NLCORE_KERNEL_SET_CI)
  p = base(); p.dtype = NLCORE_DTYPE_FLOAT32;
  expect_reject("ci: fp32 not built", p, NLCORE_STATUS_NOT_SUPPORTED,
                {"not built", "FLOAT32", "ci"});
  p = base(); p.dtype = NLCORE_DTYPE_FLOAT16;
  expect_reject("ci: fp16 not built", p, NLCORE_STATUS_NOT_SUPPORTED, {"not built", "FLOAT16"});
#else
  for (nlcore_dtype_t dt : {NLCORE_DTYPE_FLOAT32, NLCORE_DTYPE_FLOAT16}) {
    Problem q = base();
    q.dtype = dt;
    size_t w = 0;
    CHECK(nlcore_self_modifying_workspace_size(&q, 1, &w) == NLCORE_STATUS_SUCCESS,
          "full: dtype %d accepted: %s", (int)dt, nlcore_last_error_message());
  }
#endif
  // a huge chunk size ("never update") is fine
  {
    Problem q = base();
    q.chunk_size = int64_t(1) << 62;
    size_t w = 0;
    CHECK(nlcore_self_modifying_workspace_size(&q, 1, &w) == NLCORE_STATUS_SUCCESS,
          "C = 2^62: %s", nlcore_last_error_message());
  }
  // too long a chunk for the GEMM grid (rows = min(C, T) > 65535 · 64)
  p = base(); p.seqlen = int64_t(1) << 23; p.chunk_size = int64_t(1) << 23;
  expect_reject("chunk too long", p, NLCORE_STATUS_NOT_SUPPORTED, {"chunk", "limit"});
  // overflowing problems are rejected, not wrapped
  p = base(); p.batch = p.num_sequences = int64_t(1) << 40;
  expect_reject("too large", p, NLCORE_STATUS_INVALID_VALUE, {"too large"});
  // 4·N·H CTAs must fit a grid dimension: N·H just under 2^31 is too large for four memories
  p = base(); p.seqlen = 1; p.heads = 1 << 20; p.batch = p.num_sequences = 1 << 10;
  p.has_initial_state = 0;
  expect_reject("4NH > INT32_MAX", p, NLCORE_STATUS_INVALID_VALUE, {"too large"});
  {
    const Problem q = base();
    nlcore_status_t s = nlcore_self_modifying_workspace_size(&q, 0, nullptr);
    CHECK(s == NLCORE_STATUS_INVALID_VALUE &&
              contains(nlcore_last_error_message(), "workspace_bytes"),
          "NULL workspace_bytes: %s", nlcore_last_error_message());
    size_t ws = 0;
    s = nlcore_self_modifying_workspace_size(&q, -1, &ws);
    CHECK(s == NLCORE_STATUS_INVALID_VALUE && contains(nlcore_last_error_message(), "backward"),
          "backward=-1: %s", nlcore_last_error_message());
    s = nlcore_self_modifying_workspace_size(nullptr, 1, &ws);
    CHECK(s == NLCORE_STATUS_INVALID_VALUE &&
              contains(nlcore_last_error_message(), "problem is NULL"),
          "NULL problem: %s", nlcore_last_error_message());
    const Tensors t = tensors_for(q);
    const Grads g = grads_for(q);
    s = nlcore_self_modifying_forward(nullptr, &t, fake(0x1000000), SIZE_MAX, nullptr);
    CHECK(s == NLCORE_STATUS_INVALID_VALUE &&
              contains(nlcore_last_error_message(), "problem is NULL"),
          "forward NULL problem: %s", nlcore_last_error_message());
    s = nlcore_self_modifying_backward(nullptr, &t, &g, fake(0x1000000), SIZE_MAX, nullptr);
    CHECK(s == NLCORE_STATUS_INVALID_VALUE &&
              contains(nlcore_last_error_message(), "problem is NULL"),
          "backward NULL problem: %s", nlcore_last_error_message());
  }
}

void test_tensor_validation() {
  const Problem p = base();
  size_t wsf = 0, wsb = 0;
  CHECK(nlcore_self_modifying_workspace_size(&p, 0, &wsf) == NLCORE_STATUS_SUCCESS,
        "size fwd: %s", nlcore_last_error_message());
  CHECK(nlcore_self_modifying_workspace_size(&p, 1, &wsb) == NLCORE_STATUS_SUCCESS,
        "size bwd: %s", nlcore_last_error_message());
  void* ws = fake(0x1000000);
  Tensors t;
  struct Field {
    const char* name;
    const void* Tensors::*cptr;
  };
  const Field required[] = {{"tensors->x", &Tensors::x},
                            {"tensors->w_in", &Tensors::w_in},
                            {"tensors->w_out", &Tensors::w_out},
                            {"tensors->w_eta", &Tensors::w_eta},
                            {"tensors->w_alpha", &Tensors::w_alpha}};
  for (const Field& f : required) {
    t = tensors_for(p);
    t.*(f.cptr) = nullptr;
    expect_fwd_reject(f.name, p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE, f.name);
    expect_bwd_reject(f.name, p, t, nullptr, ws, wsb, NLCORE_STATUS_INVALID_VALUE, f.name);
  }
  const Field init_fields[] = {{"tensors->p_in", &Tensors::p_in},
                               {"tensors->p_out", &Tensors::p_out},
                               {"tensors->acc_in", &Tensors::acc_in},
                               {"tensors->acc_out", &Tensors::acc_out},
                               {"tensors->acc_g", &Tensors::acc_g},
                               {"tensors->n", &Tensors::n}};
  for (const Field& f : init_fields) {
    t = tensors_for(p);
    t.*(f.cptr) = nullptr;
    expect_fwd_reject(f.name, p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE, "has_initial_state = 1");
    Problem q = base();
    q.has_initial_state = 0;
    size_t w0 = 0;
    CHECK(nlcore_self_modifying_workspace_size(&q, 0, &w0) == NLCORE_STATUS_SUCCESS, "size: %s",
          nlcore_last_error_message());
    Tensors u = tensors_for(q);
    u.*(f.cptr) = fake(0x300000);
    expect_fwd_reject(f.name, q, u, ws, w0, NLCORE_STATUS_INVALID_VALUE, "has_initial_state = 0");
  }
  struct OutField {
    const char* name;
    void* Tensors::*ptr;
  };
  const OutField outs[] = {{"tensors->k", &Tensors::k},
                           {"tensors->v", &Tensors::v},
                           {"tensors->eta", &Tensors::eta},
                           {"tensors->g", &Tensors::g},
                           {"tensors->w_in_final", &Tensors::w_in_final},
                           {"tensors->w_out_final", &Tensors::w_out_final},
                           {"tensors->p_in_final", &Tensors::p_in_final},
                           {"tensors->p_out_final", &Tensors::p_out_final},
                           {"tensors->acc_in_final", &Tensors::acc_in_final},
                           {"tensors->acc_out_final", &Tensors::acc_out_final},
                           {"tensors->acc_g_final", &Tensors::acc_g_final},
                           {"tensors->n_final", &Tensors::n_final}};
  for (const OutField& f : outs) {
    t = tensors_for(p);
    t.*(f.ptr) = nullptr;
    expect_fwd_reject(f.name, p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE, f.name);
  }
  t = tensors_for(p); t.x = fake(0x10001);
  expect_fwd_reject("x misaligned", p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE, "tensors->x");
  t = tensors_for(p); t.b_eta = fake(0x60002);
  expect_fwd_reject("b_eta misaligned", p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE,
                    "tensors->b_eta");
  t = tensors_for(p); t.w_alpha = fake(0x50001);
  expect_fwd_reject("w_alpha misaligned", p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE,
                    "tensors->w_alpha");
  t = tensors_for(p); t.n = fake(0xd0004);
  expect_fwd_reject("n misaligned", p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE, "tensors->n");
  t = tensors_for(p); t.k = fake(0xe0001);
  expect_fwd_reject("k misaligned", p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE, "tensors->k");
  t = tensors_for(p); t.g = fake(0xf8002);
  expect_fwd_reject("g misaligned", p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE, "tensors->g");
  t = tensors_for(p);
  expect_fwd_reject("workspace NULL", p, t, nullptr, wsf, NLCORE_STATUS_INVALID_VALUE,
                    "workspace is NULL");
  expect_fwd_reject("workspace misaligned", p, t, fake(0x1000040), wsf,
                    NLCORE_STATUS_INVALID_VALUE, "256-byte");
  expect_fwd_reject("workspace small", p, t, ws, wsf - 1, NLCORE_STATUS_INSUFFICIENT_WORKSPACE,
                    "workspace_bytes");
  {
    const nlcore_status_t s = nlcore_self_modifying_forward(&p, nullptr, ws, wsf, nullptr);
    CHECK(s == NLCORE_STATUS_INVALID_VALUE &&
              contains(nlcore_last_error_message(), "tensors is NULL"),
          "NULL tensors: %s", nlcore_last_error_message());
  }
  {
    Problem q = base();
    q.batch = 1;
    q.num_sequences = 3;
    q.cu_seqlens = fake(0x400004);
    q.cu_seqlens_dtype = NLCORE_DTYPE_INT64;
    size_t w0 = 0;
    CHECK(nlcore_self_modifying_workspace_size(&q, 0, &w0) == NLCORE_STATUS_SUCCESS,
          "varlen size: %s", nlcore_last_error_message());
    expect_fwd_reject("cu_seqlens misaligned", q, tensors_for(q), ws, w0,
                      NLCORE_STATUS_INVALID_VALUE, "cu_seqlens");
  }

  // backward: gradients
  const Tensors tb = tensors_for(p);
  expect_bwd_reject("grads NULL", p, tb, nullptr, ws, wsb, NLCORE_STATUS_INVALID_VALUE,
                    "grads is NULL");
  struct GradField {
    const char* name;
    void* Grads::*ptr;
  };
  const GradField greq[] = {{"grads->dx", &Grads::dx},
                            {"grads->dw_in", &Grads::dw_in},
                            {"grads->dw_out", &Grads::dw_out},
                            {"grads->dw_eta", &Grads::dw_eta},
                            {"grads->dw_alpha", &Grads::dw_alpha},
                            {"grads->db_eta", &Grads::db_eta},
                            {"grads->db_alpha", &Grads::db_alpha},
                            {"grads->dp_in", &Grads::dp_in},
                            {"grads->dp_out", &Grads::dp_out},
                            {"grads->dacc_in", &Grads::dacc_in},
                            {"grads->dacc_out", &Grads::dacc_out},
                            {"grads->dacc_g", &Grads::dacc_g}};
  for (const GradField& f : greq) {
    Grads g = grads_for(p);
    g.*(f.ptr) = nullptr;
    expect_bwd_reject(f.name, p, tb, &g, ws, wsb, NLCORE_STATUS_INVALID_VALUE, f.name);
  }
  {
    // without biases, db_* may be NULL; the output gradients may be NULL (zero)
    Tensors u = tensors_for(p);
    u.b_eta = u.b_alpha = nullptr;
    Grads g = grads_for(p);
    g.db_eta = g.db_alpha = nullptr;
    g.grad_k = g.grad_v = g.grad_eta = g.grad_g = nullptr;
    g.grad_w_in = g.grad_acc_g = nullptr;
    // passes validation: only the workspace check (too small on purpose) stops it
    expect_bwd_reject("no biases, NULL output grads", p, u, &g, ws, wsb - 1,
                      NLCORE_STATUS_INSUFFICIENT_WORKSPACE, "workspace_bytes");
    g = grads_for(p);
    g.grad_k = fake(0x200001);
    expect_bwd_reject("grad_k misaligned", p, tb, &g, ws, wsb, NLCORE_STATUS_INVALID_VALUE,
                      "grads->grad_k");
    g = grads_for(p);
    g.grad_eta = fake(0x210002);
    expect_bwd_reject("grad_eta misaligned", p, tb, &g, ws, wsb, NLCORE_STATUS_INVALID_VALUE,
                      "grads->grad_eta");
    g = grads_for(p);
    g.dx = fake(0x220001);
    expect_bwd_reject("dx misaligned", p, tb, &g, ws, wsb, NLCORE_STATUS_INVALID_VALUE,
                      "grads->dx");
    g = grads_for(p);
    g.grad_acc_g = fake(0x500002);
    expect_bwd_reject("grad_acc_g misaligned", p, tb, &g, ws, wsb, NLCORE_STATUS_INVALID_VALUE,
                      "grads->grad_acc_g");
    g = grads_for(p);
    expect_bwd_reject("bwd workspace small", p, tb, &g, ws, wsb - 1,
                      NLCORE_STATUS_INSUFFICIENT_WORKSPACE, "workspace_bytes");
    expect_bwd_reject("bwd workspace NULL", p, tb, &g, nullptr, wsb,
                      NLCORE_STATUS_INVALID_VALUE, "workspace is NULL");
    CHECK(wsb > wsf, "backward workspace (%zu) larger than forward (%zu)", wsb, wsf);
    expect_bwd_reject("bwd with fwd workspace", p, tb, &g, ws, wsf,
                      NLCORE_STATUS_INSUFFICIENT_WORKSPACE, "workspace_bytes");
  }
  {
    // the alignment asked of x follows the dtype: 2 bytes for bf16
    Problem q = base();
    q.dtype = NLCORE_DTYPE_BFLOAT16;
    Tensors u = tensors_for(q);
    u.x = fake(0x10002);  // 2-byte aligned: fine for bf16
    size_t w0 = 0;
    CHECK(nlcore_self_modifying_workspace_size(&q, 0, &w0) == NLCORE_STATUS_SUCCESS, "size: %s",
          nlcore_last_error_message());
    expect_fwd_reject("bf16 x 2-aligned", q, u, ws, w0 - 1, NLCORE_STATUS_INSUFFICIENT_WORKSPACE,
                      "workspace_bytes");
  }
}

// The four memories as 4·N sequences: sh' = (m·N + s)·H + h addresses the public state layout
// [4, N, H, rows, cols] row by row, each memory's block is contiguous (what the driver offsets
// by), and the shared [4, H, ...] layout drops the sequence.
void test_index_maps() {
  const int64_t N = 3;
  const int H = 5, R = 7, Cc = 4;
  bool ok = true;
  int64_t flat = 0;
  for (int m = 0; m < sm::kMem; ++m)
    for (int64_t s = 0; s < N; ++s)
      for (int h = 0; h < H; ++h)
        for (int64_t r = 0; r < R; ++r)
          for (int64_t c = 0; c < Cc; ++c, ++flat) {
            if (sm::state_index(m, s, h, r, c, N, H, R, Cc) != flat) ok = false;
            const int64_t shp = sm::mem_row(m, s, h, N, H);
            if (shp / H != m * N + s || shp % H != h) ok = false;  // the scan's (sequence, head)
            if (shp * R * Cc != sm::state_index(m, 0, 0, 0, 0, N, H, R, Cc) +
                                    (s * H + h) * R * Cc)
              ok = false;  // memory m's block starts at m·N·H·R·Cc
          }
  CHECK(ok, "state_index / mem_row match the row-major [4, N, H, rows, cols] layout");
  ok = true;
  flat = 0;
  for (int m = 0; m < sm::kMem; ++m)
    for (int h = 0; h < H; ++h)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t c = 0; c < Cc; ++c, ++flat)
          if (sm::shared_index(m, h, r, c, H, R, Cc) != flat) ok = false;
  CHECK(ok, "shared_index matches [4, H, rows, cols]");
  CHECK(sm::chunk_index(2, 16, 3, 64, 5) == (2 * 16 + 3) * 64 + 5, "chunk_index");
  CHECK(sm::token_index(10, 2, 3, 64, 7) == (10 * 3 + 2) * 64 + 7, "token_index");
  // the memory order of the public header
  CHECK(sm::kMem == NLCORE_SELF_MODIFYING_MEMORIES && sm::kMemK == 0 && sm::kMemV == 1 &&
            sm::kMemEta == 2 && sm::kMemAlpha == 3,
        "memory order k, v, eta, alpha");
}

// The derive step's scalar math against double references and central differences.
void test_derive_math() {
  bool ok = true;
  for (double x = -30.0; x <= 30.0; x += 0.37) {
    const double s = 1.0 / (1.0 + std::exp(-x));
    const float xf = static_cast<float>(x);
    if (std::fabs(sm::sigmoid(xf) - s) > 1e-6 * (1.0 + s)) ok = false;
    const double ls = -std::log1p(std::exp(-x));
    if (std::fabs(sm::log_sigmoid(xf) - ls) > 2e-6 * (1.0 + std::fabs(ls))) ok = false;
    if (std::fabs(sm::dlogsig_db(xf) - (1.0 - s)) > 1e-6) ok = false;
    const double em = 0.7;
    if (std::fabs(sm::eta_of(xf, 0.7f) - em * s) > 1e-6) ok = false;
    if (std::fabs(sm::deta_da(xf, 0.7f) - em * s * (1.0 - s)) > 1e-6) ok = false;
    if (!ok) {
      std::printf("  derive math mismatch at x = %g\n", x);
      break;
    }
  }
  CHECK(ok, "sigmoid, log_sigmoid, eta and their derivatives vs double references");
  // extremes stay finite and exact in the limit
  CHECK(sm::sigmoid(-200.0f) == 0.0f && sm::sigmoid(200.0f) == 1.0f, "sigmoid limits");
  CHECK(std::isfinite(sm::log_sigmoid(-200.0f)) && std::fabs(sm::log_sigmoid(-200.0f) + 200.0f) < 1e-3f,
        "log_sigmoid(-200) = -200");
  CHECK(sm::log_sigmoid(200.0f) <= 0.0f && sm::log_sigmoid(200.0f) > -1e-30f, "log_sigmoid(200)");
  CHECK(sm::dlogsig_db(100.0f) > 0.0f && sm::dlogsig_db(100.0f) < 1e-40f,
        "dlogsig_db(100) = exp(-100) (a denormal), not 1 - exp(g) = 0");
  CHECK(sm::deta_da(-200.0f, 1.0f) == 0.0f && sm::deta_da(200.0f, 1.0f) == 0.0f,
        "deta_da limits");
  // central differences of the float functions
  ok = true;
  for (float a = -8.0f; a <= 8.0f; a += 0.5f) {
    const double h = 1e-2;
    const double d_eta = (double(sm::eta_of(a + h, 2.0f)) - sm::eta_of(a - h, 2.0f)) / (2 * h);
    const double d_g = (double(sm::log_sigmoid(a + h)) - sm::log_sigmoid(a - h)) / (2 * h);
    if (std::fabs(d_eta - sm::deta_da(a, 2.0f)) > 1e-3 || std::fabs(d_g - sm::dlogsig_db(a)) > 1e-3)
      ok = false;
  }
  CHECK(ok, "deta_da, dlogsig_db vs central differences");
  // the key normalization k = s r with s = key_scale(‖r‖²) and its backward
  // dr = s (dk − ⟨k, dk⟩ k), against central differences of L = ⟨c, k(r)⟩ in double
  {
    const int n = 8;
    double r[n], c[n];
    for (int i = 0; i < n; ++i) {
      r[i] = std::sin(1.3 * i + 0.2) * (i % 3 == 0 ? 2.0 : 0.5);
      c[i] = std::cos(0.7 * i - 0.4);
    }
    auto loss = [&](const double* rr) {
      double ss = 0;
      for (int i = 0; i < n; ++i) ss += rr[i] * rr[i];
      const double s = 1.0 / std::sqrt(ss + 1e-12);
      double L = 0;
      for (int i = 0; i < n; ++i) L += c[i] * s * rr[i];
      return L;
    };
    float ss = 0;
    for (int i = 0; i < n; ++i) ss += float(r[i] * r[i]);
    const float s = sm::key_scale(ss);
    float k[n], kdk = 0;
    for (int i = 0; i < n; ++i) {
      k[i] = s * float(r[i]);
      kdk += k[i] * float(c[i]);
    }
    bool fd_ok = true;
    for (int i = 0; i < n; ++i) {
      const float dr = s * (float(c[i]) - kdk * k[i]);
      double rp[n], rm[n];
      for (int q = 0; q < n; ++q) rp[q] = rm[q] = r[q];
      rp[i] += 1e-6;
      rm[i] -= 1e-6;
      const double fd = (loss(rp) - loss(rm)) / 2e-6;
      if (std::fabs(fd - dr) > 1e-5) fd_ok = false;
    }
    CHECK(fd_ok, "key normalization backward vs central differences");
    CHECK(std::fabs(sm::key_scale(0.0f) - 1e6f) < 1.0f, "key_scale(0) = 1/sqrt(eps)");
  }
}

void test_layout_and_sizes() {
  Problem p = base();
  sm::Dims d{p.batch, p.seqlen, p.num_sequences, p.heads, p.head_dim, p.hidden_dim,
             p.chunk_size, p.checkpoint_every, true, 2};
  const sm::Layout f = sm::make_layout(d, false), b = sm::make_layout(d, true);
  CHECK(f.ok && b.ok, "layout ok");
  size_t ws0 = 0, ws1 = 0;
  CHECK(nlcore_self_modifying_workspace_size(&p, 0, &ws0) == NLCORE_STATUS_SUCCESS &&
            ws0 == f.total,
        "forward size %zu == layout %zu", ws0, f.total);
  CHECK(nlcore_self_modifying_workspace_size(&p, 1, &ws1) == NLCORE_STATUS_SUCCESS &&
            ws1 == b.total,
        "backward size %zu == layout %zu", ws1, b.total);
  // T = 100, C = 16, an initial state: ceil(115 / 16) = 8 chunk indices, 2 segments of 4.
  CHECK(f.nc_bound == 8 && b.nc_bound == 8, "nc_bound %lld", (long long)f.nc_bound);
  CHECK(b.ckpt_every == 4 && b.n_ckpt == 2 && b.n_seg == 4, "ckpt %lld/%lld/%lld",
        (long long)b.ckpt_every, (long long)b.n_ckpt, (long long)b.n_seg);
  CHECK(f.rows == 16, "rows %lld", (long long)f.rows);
  const size_t fwd_offs[] = {f.seq, f.alpha, f.ag, f.Zx, f.Ox, f.Z, f.Zv, f.Tg, f.E, f.Q1, f.total};
  bool mono = true;
  for (size_t i = 0; i + 1 < sizeof(fwd_offs) / sizeof(fwd_offs[0]); ++i)
    mono = mono && fwd_offs[i] % sm::kWorkspaceAlign == 0 && fwd_offs[i] < fwd_offs[i + 1];
  CHECK(mono, "forward offsets aligned and strictly ordered");
  const size_t bwd_offs[] = {b.Q1,   b.ag0,  b.ktok, b.vtok,  b.etatok, b.gtok, b.R,
                             b.dQ1,  b.dR,   b.dZ,   b.dZv,   b.dZx,    b.dEeta, b.dE,
                             b.dK,   b.dV,   b.dRx,  b.dX,    b.work,   b.ckpt, b.seg,
                             b.grad, b.dag,  b.dsg,  b.dwe,   b.dwa,    b.dbe,  b.dba,
                             b.total};
  mono = true;
  for (size_t i = 0; i + 1 < sizeof(bwd_offs) / sizeof(bwd_offs[0]); ++i)
    mono = mono && bwd_offs[i] % sm::kWorkspaceAlign == 0 && bwd_offs[i] < bwd_offs[i + 1];
  CHECK(mono, "backward offsets aligned and strictly ordered");
  // exact sizes of the arrays
  const size_t nh = size_t(p.num_sequences) * p.heads, msh = 4 * nh;
  const size_t fd = size_t(p.hidden_dim) * p.head_dim, slab = msh * fd * 4;
  const size_t toks = size_t(p.batch) * p.seqlen * p.heads;
  CHECK(f.seq + 4 * size_t(p.num_sequences) * sm::kSeqEntry * 8 <= f.alpha, "chunk table: 4N entries");
  CHECK(f.Zx + msh * 16 * p.hidden_dim * 4 <= f.Ox, "Zx: [4NH][rows][F]");
  CHECK(f.Ox + msh * 16 * p.head_dim * 4 <= f.Z, "Ox: [4NH][rows][D]");
  CHECK(b.ktok + toks * p.head_dim * 2 <= b.vtok, "k buffer in bf16");
  CHECK(b.dX + nh * 16 * p.head_dim * 4 <= b.work, "dX: [NH][rows][D]");
  CHECK(b.work + 6 * slab <= b.ckpt, "work: 6 slabs");
  CHECK(b.ckpt + (b.n_ckpt - 1) * 4 * slab <= b.seg, "checkpoints: (n_ckpt - 1) x 4 slabs");
  CHECK(b.seg + size_t(b.n_seg) * 2 * slab <= b.grad, "segment slots: n_seg x 2 slabs");
  CHECK(b.grad + 6 * slab <= b.dag, "gradient slabs");
  CHECK(b.dwe + nh * p.head_dim * 4 <= b.dwa && b.dbe + nh * 4 <= b.dba, "derive weight sums");
  // fp32 inputs double the recomputed k, v buffers
  {
    sm::Dims d4 = d;
    d4.elem_bytes = 4;
    const sm::Layout b4 = sm::make_layout(d4, true);
    CHECK(b4.vtok - b4.ktok >= toks * p.head_dim * 4 && b4.total > b.total, "fp32 k buffer");
    Problem q = base();
    q.dtype = NLCORE_DTYPE_FLOAT32;
#if !defined(NLCORE_KERNEL_SET_CI)
    CHECK(nlcore_self_modifying_workspace_size(&q, 1, &ws1) == NLCORE_STATUS_SUCCESS &&
              ws1 == b4.total, "fp32 API size");
#endif
    sm::Dims bad = d;
    bad.elem_bytes = 3;
    CHECK(!sm::make_layout(bad, false).ok, "elem_bytes 3 rejected");
  }
  // no initial state: tighter bound, ceil(100 / 16) = 7
  p = base();
  p.has_initial_state = 0;
  d = sm::Dims{2, 100, 2, 3, 64, 128, 16, 4, false, 2};
  CHECK(sm::make_layout(d, false).nc_bound == 7, "bound without initial state");
  CHECK(nlcore_self_modifying_workspace_size(&p, 1, &ws1) == NLCORE_STATUS_SUCCESS &&
            ws1 == sm::make_layout(d, true).total, "API size without initial state");
  p.weights_shared = 1;
  CHECK(nlcore_self_modifying_workspace_size(&p, 1, &ws1) == NLCORE_STATUS_SUCCESS &&
            ws1 == sm::make_layout(d, true).total, "API size with shared weights");
  // checkpoint_every >= the chunk count: one segment, no saved checkpoint
  d.ckpt_every = 1000;
  const sm::Layout one = sm::make_layout(d, true);
  CHECK(one.n_ckpt == 1 && one.ckpt_every == 7 && one.n_seg == 7 && one.ckpt == one.seg,
        "one segment: n_ckpt %lld", (long long)one.n_ckpt);
  d.ckpt_every = 1;
  const sm::Layout each = sm::make_layout(d, true);
  CHECK(each.n_ckpt == 7 && each.n_seg == 1, "every chunk checkpointed");
  // chunk_size > T: rows = T
  d.C = 1000;
  d.ckpt_every = 4;
  CHECK(sm::make_layout(d, false).rows == 100 && sm::make_layout(d, false).nc_bound == 1,
        "chunk > T");
  // varlen: N sequences in one row
  p = base();
  p.batch = 1;
  p.num_sequences = 5;
  int64_t cu_dummy[6] = {0, 0, 0, 0, 0, 0};
  p.cu_seqlens = cu_dummy;
  p.cu_seqlens_dtype = NLCORE_DTYPE_INT64;
  d = sm::Dims{1, 100, 5, 3, 64, 128, 16, 4, true, 2};
  CHECK(nlcore_self_modifying_workspace_size(&p, 0, &ws0) == NLCORE_STATUS_SUCCESS &&
            ws0 == sm::make_layout(d, false).total, "varlen size: %s", nlcore_last_error_message());
  // every supported (D, F) and flag combination is accepted
  bool all_ok = true;
  for (int D : {32, 64, 128})
    for (int mult : {1, 2, 4})
      for (int fl = 0; fl < 8; ++fl) {
        Problem q = base();
        q.head_dim = D;
        q.hidden_dim = mult * D;
        q.dgd_erase = fl & 1;
        q.has_initial_state = (fl >> 1) & 1;
        q.weights_shared = q.has_initial_state ? 0 : 1;
        q.activation = (fl >> 2) & 1;
        size_t w = 0;
        if (nlcore_self_modifying_workspace_size(&q, 1, &w) != NLCORE_STATUS_SUCCESS) {
          all_ok = false;
          std::printf("  D=%d F=%d flags=%d: %s\n", D, mult * D, fl, nlcore_last_error_message());
        }
      }
  CHECK(all_ok, "every D / F / flag combination accepted");
  CHECK(sm::kTokBwdSmemBytes <= 48 * 1024 && sm::kLaneElems * 32 >= 128,
        "token kernels cover D <= 128 in static shared memory");
  CHECK(std::strcmp(nlcore::memory_mlp::kKernelSetName,
#if defined(NLCORE_KERNEL_SET_CI)
                    "ci"
#else
                    "full"
#endif
                    ) == 0,
        "kernel set name");
}

}  // namespace

int main() {
  test_problem_validation();
  test_tensor_validation();
  test_index_maps();
  test_derive_math();
  test_layout_and_sizes();
  return nlcore_test::check_summary();
}
