// Host-only tests of the MLP-scan C API (no GPU needed): validation of every problem field,
// tensor / gradient pointer and workspace argument (status + message, returned before any CUDA
// call), workspace sizes against the shared layout function, and the host/device helpers of the
// kernels (the chunk grid of a sequence, the host chunk bound, the activation derivatives), and
// the persistent kernel's partition (cluster split, slice shapes, shared-memory layout and
// budget, the register-fragment ownership of the inner gradient, the y column split) and its
// flag / path query.
// Prints "N passed, M failed"; exits non-zero on failure.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "check.h"
#include "memory_mlp/kernel_set.h"
#include "memory_mlp/layout.h"
#include "memory_mlp/persistent.h"
#include "nlcore/nlcore.h"

namespace {

namespace mm = nlcore::memory_mlp;

nlcore_memory_mlp_problem_t base() {
  nlcore_memory_mlp_problem_t p{};
  p.batch = 2;
  p.seqlen = 100;
  p.num_sequences = 2;
  p.heads = 3;
  p.head_dim = 64;
  p.hidden_dim = 128;
  p.dtype = NLCORE_DTYPE_BFLOAT16;
  p.gate_dtype = NLCORE_DTYPE_FLOAT32;
  p.chunk_size = 16;
  p.momentum = 0.9f;
  p.activation = NLCORE_MEMORY_MLP_ACT_SILU;
  p.objective = NLCORE_MEMORY_MLP_OBJECTIVE_L2;
  p.residual = 1;
  p.self_target = 0;
  p.dgd_erase = 1;
  p.has_g = 1;
  p.weights_shared = 0;
  p.has_initial_state = 1;
  p.checkpoint_every = 4;
  p.cu_seqlens = nullptr;
  p.cu_seqlens_dtype = NLCORE_DTYPE_INT32;
  p.flags = NLCORE_MEMORY_MLP_FLAG_DEFAULT;
  return p;
}

void* fake(uintptr_t a) { return reinterpret_cast<void*>(a); }

nlcore_memory_mlp_tensors_t tensors_for(const nlcore_memory_mlp_problem_t& p) {
  nlcore_memory_mlp_tensors_t t{};
  const bool init = p.has_initial_state != 0;
  t.x = fake(0x10000);
  t.k = fake(0x20000);
  t.v = fake(0x30000);
  t.eta = fake(0x40000);
  t.g = p.has_g ? fake(0x50000) : nullptr;
  t.w_in = fake(0x60000);
  t.w_out = fake(0x70000);
  t.p_in = init ? fake(0x80000) : nullptr;
  t.p_out = init ? fake(0x90000) : nullptr;
  t.acc_in = init ? fake(0xa0000) : nullptr;
  t.acc_out = init ? fake(0xb0000) : nullptr;
  t.acc_g = init ? fake(0xc0000) : nullptr;
  t.n = init ? fake(0xd0000) : nullptr;
  t.y = fake(0xe0000);
  t.w_in_final = fake(0xf0000);
  t.w_out_final = fake(0x100000);
  t.p_in_final = fake(0x110000);
  t.p_out_final = fake(0x120000);
  t.acc_in_final = fake(0x130000);
  t.acc_out_final = fake(0x140000);
  t.acc_g_final = fake(0x150000);
  t.n_final = fake(0x160000);
  return t;
}

nlcore_memory_mlp_grads_t grads_for(const nlcore_memory_mlp_problem_t& p) {
  nlcore_memory_mlp_grads_t g{};
  const bool init = p.has_initial_state != 0;
  g.grad_y = fake(0x200000);
  g.dx = fake(0x210000);
  g.dk = fake(0x220000);
  g.dv = fake(0x230000);
  g.deta = fake(0x240000);
  g.dg = p.has_g ? fake(0x250000) : nullptr;
  g.dw_in = fake(0x260000);
  g.dw_out = fake(0x270000);
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
void expect_reject(const char* name, const nlcore_memory_mlp_problem_t& p, nlcore_status_t want,
                   std::vector<const char*> needles) {
  size_t ws0 = 12345, ws1 = 12345;
  const nlcore_memory_mlp_tensors_t t = tensors_for(p);
  const nlcore_memory_mlp_grads_t g = grads_for(p);
  void* w = fake(0x1000000);
  const nlcore_status_t s1 = nlcore_memory_mlp_workspace_size(&p, 0, &ws0);
  const std::string m1 = nlcore_last_error_message();
  const nlcore_status_t s2 = nlcore_memory_mlp_workspace_size(&p, 1, &ws1);
  const std::string m2 = nlcore_last_error_message();
  const nlcore_status_t s3 = nlcore_memory_mlp_forward(&p, &t, w, SIZE_MAX, nullptr);
  const std::string m3 = nlcore_last_error_message();
  const nlcore_status_t s4 = nlcore_memory_mlp_backward(&p, &t, &g, w, SIZE_MAX, nullptr);
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

void expect_fwd_reject(const char* name, const nlcore_memory_mlp_problem_t& p,
                       const nlcore_memory_mlp_tensors_t& t, void* ws, size_t wsb,
                       nlcore_status_t want, const char* needle) {
  const nlcore_status_t s = nlcore_memory_mlp_forward(&p, &t, ws, wsb, nullptr);
  const std::string m = nlcore_last_error_message();
  CHECK(s == want, "%s: got %s, want %s (msg: %s)", name, nlcore_status_string(s),
        nlcore_status_string(want), m.c_str());
  CHECK(contains(m, needle), "%s: message '%s' lacks '%s'", name, m.c_str(), needle);
}

void expect_bwd_reject(const char* name, const nlcore_memory_mlp_problem_t& p,
                       const nlcore_memory_mlp_tensors_t& t, const nlcore_memory_mlp_grads_t* g,
                       void* ws, size_t wsb, nlcore_status_t want, const char* needle) {
  const nlcore_status_t s = nlcore_memory_mlp_backward(&p, &t, g, ws, wsb, nullptr);
  const std::string m = nlcore_last_error_message();
  CHECK(s == want, "%s: got %s, want %s (msg: %s)", name, nlcore_status_string(s),
        nlcore_status_string(want), m.c_str());
  CHECK(contains(m, needle), "%s: message '%s' lacks '%s'", name, m.c_str(), needle);
}

void test_problem_validation() {
  nlcore_memory_mlp_problem_t p;
  p = base(); p.batch = 0;
  expect_reject("batch=0", p, NLCORE_STATUS_INVALID_VALUE, {"batch", "0"});
  p = base(); p.seqlen = 0;
  expect_reject("seqlen=0", p, NLCORE_STATUS_INVALID_VALUE, {"seqlen"});
  p = base(); p.num_sequences = 0;
  expect_reject("num_sequences=0", p, NLCORE_STATUS_INVALID_VALUE, {"num_sequences"});
  p = base(); p.num_sequences = 3;
  expect_reject("num_sequences!=batch", p, NLCORE_STATUS_INVALID_VALUE,
                {"num_sequences", "3", "2"});
  int32_t cu_dummy[4] = {0, 0, 0, 0};
  p = base(); p.cu_seqlens = cu_dummy;
  expect_reject("varlen batch=2", p, NLCORE_STATUS_INVALID_VALUE, {"batch", "cu_seqlens"});
  p = base(); p.batch = 1; p.num_sequences = 3; p.cu_seqlens = cu_dummy;
  p.cu_seqlens_dtype = NLCORE_DTYPE_FLOAT32;
  expect_reject("cu_seqlens_dtype", p, NLCORE_STATUS_INVALID_VALUE,
                {"cu_seqlens_dtype", "FLOAT32"});
  p = base(); p.heads = 0;
  expect_reject("heads=0", p, NLCORE_STATUS_INVALID_VALUE, {"heads"});
  p = base(); p.head_dim = 0;
  expect_reject("head_dim=0", p, NLCORE_STATUS_INVALID_VALUE, {"head_dim"});
  p = base(); p.head_dim = 48; p.hidden_dim = 96;
  expect_reject("head_dim=48", p, NLCORE_STATUS_NOT_SUPPORTED, {"head_dim", "48"});
  p = base(); p.head_dim = 256; p.hidden_dim = 256;
  expect_reject("head_dim=256", p, NLCORE_STATUS_NOT_SUPPORTED, {"head_dim", "256"});
  p = base(); p.hidden_dim = 0;
  expect_reject("hidden_dim=0", p, NLCORE_STATUS_INVALID_VALUE, {"hidden_dim"});
  p = base(); p.hidden_dim = 96;
  expect_reject("hidden_dim=96", p, NLCORE_STATUS_NOT_SUPPORTED, {"hidden_dim", "96"});
  p = base(); p.hidden_dim = 512;
  expect_reject("hidden_dim=8D", p, NLCORE_STATUS_NOT_SUPPORTED, {"hidden_dim", "512"});
  p = base(); p.dtype = NLCORE_DTYPE_FLOAT64;
  expect_reject("dtype=f64", p, NLCORE_STATUS_NOT_SUPPORTED, {"dtype", "FLOAT64"});
  p = base(); p.dtype = static_cast<nlcore_dtype_t>(9);
  expect_reject("dtype=9", p, NLCORE_STATUS_INVALID_VALUE, {"dtype", "9"});
  p = base(); p.dtype = NLCORE_DTYPE_INT64;
  expect_reject("dtype=int64", p, NLCORE_STATUS_INVALID_VALUE, {"dtype", "INT64"});
  p = base(); p.gate_dtype = NLCORE_DTYPE_BFLOAT16;
  expect_reject("gate_dtype=bf16", p, NLCORE_STATUS_NOT_SUPPORTED, {"gate_dtype", "BFLOAT16"});
  p = base(); p.gate_dtype = NLCORE_DTYPE_FLOAT64;
  expect_reject("gate_dtype=f64", p, NLCORE_STATUS_INVALID_VALUE, {"gate_dtype", "FLOAT64"});
  p = base(); p.chunk_size = 0;
  expect_reject("chunk_size=0", p, NLCORE_STATUS_INVALID_VALUE, {"chunk_size", "0"});
  p = base(); p.chunk_size = -3;
  expect_reject("chunk_size=-3", p, NLCORE_STATUS_INVALID_VALUE, {"chunk_size", "-3"});
  p = base(); p.momentum = std::numeric_limits<float>::quiet_NaN();
  expect_reject("momentum=nan", p, NLCORE_STATUS_INVALID_VALUE, {"momentum"});
  p = base(); p.momentum = std::numeric_limits<float>::infinity();
  expect_reject("momentum=inf", p, NLCORE_STATUS_INVALID_VALUE, {"momentum"});
  p = base(); p.activation = 2;
  expect_reject("activation=2", p, NLCORE_STATUS_INVALID_VALUE, {"activation", "2"});
  p = base(); p.objective = -1;
  expect_reject("objective=-1", p, NLCORE_STATUS_INVALID_VALUE, {"objective", "-1"});
  p = base(); p.residual = 2;
  expect_reject("residual=2", p, NLCORE_STATUS_INVALID_VALUE, {"residual", "2"});
  p = base(); p.self_target = 3;
  expect_reject("self_target=3", p, NLCORE_STATUS_INVALID_VALUE, {"self_target", "3"});
  p = base(); p.dgd_erase = -1;
  expect_reject("dgd_erase=-1", p, NLCORE_STATUS_INVALID_VALUE, {"dgd_erase", "-1"});
  p = base(); p.has_g = 7;
  expect_reject("has_g=7", p, NLCORE_STATUS_INVALID_VALUE, {"has_g", "7"});
  p = base(); p.weights_shared = 2;
  expect_reject("weights_shared=2", p, NLCORE_STATUS_INVALID_VALUE, {"weights_shared", "2"});
  p = base(); p.has_initial_state = 4;
  expect_reject("has_initial_state=4", p, NLCORE_STATUS_INVALID_VALUE, {"has_initial_state", "4"});
  p = base(); p.weights_shared = 1;
  expect_reject("shared + initial state", p, NLCORE_STATUS_INVALID_VALUE,
                {"has_initial_state", "weights_shared = 0"});
  p = base(); p.checkpoint_every = 0;
  expect_reject("checkpoint_every=0", p, NLCORE_STATUS_INVALID_VALUE, {"checkpoint_every", "0"});
  p = base(); p.flags = 0x4;
  expect_reject("flags=0x4", p, NLCORE_STATUS_INVALID_VALUE, {"flags", "0x4"});
#if defined(NLCORE_KERNEL_SET_CI)
  p = base(); p.dtype = NLCORE_DTYPE_FLOAT32;
  expect_reject("ci: fp32 not built", p, NLCORE_STATUS_NOT_SUPPORTED,
                {"not built", "FLOAT32", "ci"});
  p = base(); p.dtype = NLCORE_DTYPE_FLOAT16;
  expect_reject("ci: fp16 not built", p, NLCORE_STATUS_NOT_SUPPORTED, {"not built", "FLOAT16"});
#endif
  p = base(); p.chunk_size = INT64_MAX;
  expect_reject("chunk_size=INT64_MAX", p, NLCORE_STATUS_NOT_SUPPORTED, {"chunk_size", "2^62"});
  // a huge chunk size ("never update") is fine: one or two chunk indices
  {
    nlcore_memory_mlp_problem_t q = base();
    q.chunk_size = int64_t(1) << 62;
    size_t w = 0;
    CHECK(nlcore_memory_mlp_workspace_size(&q, 1, &w) == NLCORE_STATUS_SUCCESS, "C = 2^62: %s",
          nlcore_last_error_message());
    CHECK(mm::chunk_bound(100, int64_t(1) << 62, true) == 2 &&
              mm::chunk_bound(100, int64_t(1) << 62, false) == 1, "bound for C = 2^62");
  }
  // too long a chunk for the GEMM grid (rows = min(C, T) > 65535 · 64)
  p = base(); p.seqlen = int64_t(1) << 23; p.chunk_size = int64_t(1) << 23;
  expect_reject("chunk too long", p, NLCORE_STATUS_NOT_SUPPORTED, {"chunk", "limit"});
  // overflowing problems are rejected, not wrapped
  p = base(); p.batch = p.num_sequences = int64_t(1) << 40;
  expect_reject("too large", p, NLCORE_STATUS_INVALID_VALUE, {"too large"});
  {
    const nlcore_memory_mlp_problem_t q = base();
    nlcore_status_t s = nlcore_memory_mlp_workspace_size(&q, 0, nullptr);
    CHECK(s == NLCORE_STATUS_INVALID_VALUE &&
              contains(nlcore_last_error_message(), "workspace_bytes"),
          "NULL workspace_bytes: %s", nlcore_last_error_message());
    size_t ws = 0;
    s = nlcore_memory_mlp_workspace_size(&q, 2, &ws);
    CHECK(s == NLCORE_STATUS_INVALID_VALUE && contains(nlcore_last_error_message(), "backward"),
          "backward=2: %s", nlcore_last_error_message());
    s = nlcore_memory_mlp_workspace_size(nullptr, 0, &ws);
    CHECK(s == NLCORE_STATUS_INVALID_VALUE &&
              contains(nlcore_last_error_message(), "problem is NULL"),
          "NULL problem: %s", nlcore_last_error_message());
    const nlcore_memory_mlp_tensors_t t = tensors_for(q);
    const nlcore_memory_mlp_grads_t g = grads_for(q);
    s = nlcore_memory_mlp_forward(nullptr, &t, fake(0x1000000), SIZE_MAX, nullptr);
    CHECK(s == NLCORE_STATUS_INVALID_VALUE &&
              contains(nlcore_last_error_message(), "problem is NULL"),
          "forward NULL problem: %s", nlcore_last_error_message());
    s = nlcore_memory_mlp_backward(nullptr, &t, &g, fake(0x1000000), SIZE_MAX, nullptr);
    CHECK(s == NLCORE_STATUS_INVALID_VALUE &&
              contains(nlcore_last_error_message(), "problem is NULL"),
          "backward NULL problem: %s", nlcore_last_error_message());
  }
}

void test_tensor_validation() {
  const nlcore_memory_mlp_problem_t p = base();
  size_t wsf = 0, wsb = 0;
  CHECK(nlcore_memory_mlp_workspace_size(&p, 0, &wsf) == NLCORE_STATUS_SUCCESS, "size fwd: %s",
        nlcore_last_error_message());
  CHECK(nlcore_memory_mlp_workspace_size(&p, 1, &wsb) == NLCORE_STATUS_SUCCESS, "size bwd: %s",
        nlcore_last_error_message());
  void* ws = fake(0x1000000);
  nlcore_memory_mlp_tensors_t t;
  struct Field {
    const char* name;
    const void* nlcore_memory_mlp_tensors_t::*cptr;
  };
  const Field required[] = {{"tensors->x", &nlcore_memory_mlp_tensors_t::x},
                            {"tensors->k", &nlcore_memory_mlp_tensors_t::k},
                            {"tensors->v", &nlcore_memory_mlp_tensors_t::v},
                            {"tensors->eta", &nlcore_memory_mlp_tensors_t::eta},
                            {"tensors->w_in", &nlcore_memory_mlp_tensors_t::w_in},
                            {"tensors->w_out", &nlcore_memory_mlp_tensors_t::w_out}};
  for (const Field& f : required) {
    t = tensors_for(p);
    t.*(f.cptr) = nullptr;
    expect_fwd_reject(f.name, p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE, f.name);
    expect_bwd_reject(f.name, p, t, nullptr, ws, wsb, NLCORE_STATUS_INVALID_VALUE, f.name);
  }
  const Field init_fields[] = {{"tensors->p_in", &nlcore_memory_mlp_tensors_t::p_in},
                               {"tensors->p_out", &nlcore_memory_mlp_tensors_t::p_out},
                               {"tensors->acc_in", &nlcore_memory_mlp_tensors_t::acc_in},
                               {"tensors->acc_out", &nlcore_memory_mlp_tensors_t::acc_out},
                               {"tensors->acc_g", &nlcore_memory_mlp_tensors_t::acc_g},
                               {"tensors->n", &nlcore_memory_mlp_tensors_t::n}};
  for (const Field& f : init_fields) {
    t = tensors_for(p);
    t.*(f.cptr) = nullptr;
    expect_fwd_reject(f.name, p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE, "has_initial_state = 1");
    nlcore_memory_mlp_problem_t q = base();
    q.has_initial_state = 0;
    size_t w0 = 0;
    CHECK(nlcore_memory_mlp_workspace_size(&q, 0, &w0) == NLCORE_STATUS_SUCCESS, "size: %s",
          nlcore_last_error_message());
    nlcore_memory_mlp_tensors_t u = tensors_for(q);
    u.*(f.cptr) = fake(0x300000);
    expect_fwd_reject(f.name, q, u, ws, w0, NLCORE_STATUS_INVALID_VALUE, "has_initial_state = 0");
  }
  t = tensors_for(p); t.g = nullptr;
  expect_fwd_reject("g NULL with has_g", p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE, "has_g = 1");
  {
    nlcore_memory_mlp_problem_t q = base();
    q.has_g = 0;
    const nlcore_memory_mlp_tensors_t u = tensors_for(base());  // g non-NULL
    expect_fwd_reject("g given with has_g=0", q, u, ws, wsf, NLCORE_STATUS_INVALID_VALUE,
                      "has_g = 0");
  }
  struct OutField {
    const char* name;
    void* nlcore_memory_mlp_tensors_t::*ptr;
  };
  const OutField outs[] = {{"tensors->y", &nlcore_memory_mlp_tensors_t::y},
                           {"tensors->w_in_final", &nlcore_memory_mlp_tensors_t::w_in_final},
                           {"tensors->w_out_final", &nlcore_memory_mlp_tensors_t::w_out_final},
                           {"tensors->p_in_final", &nlcore_memory_mlp_tensors_t::p_in_final},
                           {"tensors->p_out_final", &nlcore_memory_mlp_tensors_t::p_out_final},
                           {"tensors->acc_in_final", &nlcore_memory_mlp_tensors_t::acc_in_final},
                           {"tensors->acc_out_final", &nlcore_memory_mlp_tensors_t::acc_out_final},
                           {"tensors->acc_g_final", &nlcore_memory_mlp_tensors_t::acc_g_final},
                           {"tensors->n_final", &nlcore_memory_mlp_tensors_t::n_final}};
  for (const OutField& f : outs) {
    t = tensors_for(p);
    t.*(f.ptr) = nullptr;
    expect_fwd_reject(f.name, p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE, f.name);
  }
  t = tensors_for(p); t.x = fake(0x10001);
  expect_fwd_reject("x misaligned", p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE, "aligned");
  t = tensors_for(p); t.eta = fake(0x40002);
  expect_fwd_reject("eta misaligned", p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE, "tensors->eta");
  t = tensors_for(p); t.n = fake(0xd0004);
  expect_fwd_reject("n misaligned", p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE, "tensors->n");
  t = tensors_for(p); t.y = fake(0xe0001);
  expect_fwd_reject("y misaligned", p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE, "tensors->y");
  t = tensors_for(p);
  expect_fwd_reject("workspace NULL", p, t, nullptr, wsf, NLCORE_STATUS_INVALID_VALUE,
                    "workspace is NULL");
  expect_fwd_reject("workspace misaligned", p, t, fake(0x1000080), wsf,
                    NLCORE_STATUS_INVALID_VALUE, "256-byte");
  expect_fwd_reject("workspace small", p, t, ws, wsf - 1, NLCORE_STATUS_INSUFFICIENT_WORKSPACE,
                    "workspace_bytes");
  {
    const nlcore_status_t s = nlcore_memory_mlp_forward(&p, nullptr, ws, wsf, nullptr);
    CHECK(s == NLCORE_STATUS_INVALID_VALUE &&
              contains(nlcore_last_error_message(), "tensors is NULL"),
          "NULL tensors: %s", nlcore_last_error_message());
  }
  {
    nlcore_memory_mlp_problem_t q = base();
    q.batch = 1;
    q.num_sequences = 3;
    q.cu_seqlens = fake(0x400002);
    q.cu_seqlens_dtype = NLCORE_DTYPE_INT32;
    size_t w0 = 0;
    CHECK(nlcore_memory_mlp_workspace_size(&q, 0, &w0) == NLCORE_STATUS_SUCCESS, "varlen size: %s",
          nlcore_last_error_message());
    expect_fwd_reject("cu_seqlens misaligned", q, tensors_for(q), ws, w0,
                      NLCORE_STATUS_INVALID_VALUE, "cu_seqlens");
  }

  // backward: gradients
  const nlcore_memory_mlp_tensors_t tb = tensors_for(p);
  expect_bwd_reject("grads NULL", p, tb, nullptr, ws, wsb, NLCORE_STATUS_INVALID_VALUE,
                    "grads is NULL");
  struct GradField {
    const char* name;
    void* nlcore_memory_mlp_grads_t::*ptr;
  };
  const GradField greq[] = {{"grads->dx", &nlcore_memory_mlp_grads_t::dx},
                            {"grads->dk", &nlcore_memory_mlp_grads_t::dk},
                            {"grads->dv", &nlcore_memory_mlp_grads_t::dv},
                            {"grads->deta", &nlcore_memory_mlp_grads_t::deta},
                            {"grads->dg", &nlcore_memory_mlp_grads_t::dg},
                            {"grads->dw_in", &nlcore_memory_mlp_grads_t::dw_in},
                            {"grads->dw_out", &nlcore_memory_mlp_grads_t::dw_out},
                            {"grads->dp_in", &nlcore_memory_mlp_grads_t::dp_in},
                            {"grads->dp_out", &nlcore_memory_mlp_grads_t::dp_out},
                            {"grads->dacc_in", &nlcore_memory_mlp_grads_t::dacc_in},
                            {"grads->dacc_out", &nlcore_memory_mlp_grads_t::dacc_out},
                            {"grads->dacc_g", &nlcore_memory_mlp_grads_t::dacc_g}};
  for (const GradField& f : greq) {
    nlcore_memory_mlp_grads_t g = grads_for(p);
    g.*(f.ptr) = nullptr;
    expect_bwd_reject(f.name, p, tb, &g, ws, wsb, NLCORE_STATUS_INVALID_VALUE, f.name);
  }
  {
    nlcore_memory_mlp_grads_t g = grads_for(p);
    g.grad_y = nullptr;
    expect_bwd_reject("grad_y NULL", p, tb, &g, ws, wsb, NLCORE_STATUS_INVALID_VALUE,
                      "grads->grad_y");
    g = grads_for(p);
    g.dk = fake(0x220001);
    expect_bwd_reject("dk misaligned", p, tb, &g, ws, wsb, NLCORE_STATUS_INVALID_VALUE,
                      "grads->dk");
    g = grads_for(p);
    g.grad_w_in = fake(0x500002);
    expect_bwd_reject("grad_w_in misaligned", p, tb, &g, ws, wsb, NLCORE_STATUS_INVALID_VALUE,
                      "grads->grad_w_in");
    g = grads_for(p);
    expect_bwd_reject("bwd workspace small", p, tb, &g, ws, wsb - 1,
                      NLCORE_STATUS_INSUFFICIENT_WORKSPACE, "workspace_bytes");
    expect_bwd_reject("bwd workspace NULL", p, tb, &g, nullptr, wsb,
                      NLCORE_STATUS_INVALID_VALUE, "workspace is NULL");
    // the forward's size does not cover the backward
    CHECK(wsb > wsf, "backward workspace (%zu) larger than forward (%zu)", wsb, wsf);
    expect_bwd_reject("bwd with fwd workspace", p, tb, &g, ws, wsf,
                      NLCORE_STATUS_INSUFFICIENT_WORKSPACE, "workspace_bytes");
  }
}

// The chunk grid of one sequence: chunks tile [start, start + len) in order, the first completes
// the open chunk of n0 tokens, every chunk but the last is complete, the count is chunks_of()
// and within the host bound, and the final count is (n0 + len) mod C.
void test_chunk_grid() {
  bool ok = true;
  int cases = 0;
  for (int64_t C = 1; C <= 9 && ok; ++C)
    for (int64_t n0 = 0; n0 < C && ok; ++n0)
      for (int64_t len = 0; len <= 40 && ok; ++len) {
        ++cases;
        const int64_t start = 1000 + 7 * len;
        int64_t next = start, count = 0, open = n0;
        for (int64_t j = 0; j < len + 3; ++j) {
          const mm::ChunkSpan s = mm::chunk_span(start, len, n0, C, j);
          if (s.len == 0) {
            // no chunk j: and none after it
            for (int64_t j2 = j + 1; j2 < len + 3; ++j2)
              if (mm::chunk_span(start, len, n0, C, j2).len != 0) ok = false;
            break;
          }
          ++count;
          if (s.row0 != next) ok = false;
          const int64_t room = C - (j == 0 ? n0 : 0);
          if (s.len > room || s.len < 1) ok = false;
          if (s.complete != (s.len == room)) ok = false;
          next += s.len;
          open = s.complete ? 0 : (j == 0 ? n0 : 0) + s.len;
        }
        if (len == 0) open = n0;
        if (next != start + len) ok = false;
        if (count != mm::chunks_of(len, n0, C)) ok = false;
        if (mm::final_count(len, n0, C) != open) ok = false;
        // the host bound with T = len (an initial state may carry n0 > 0)
        if (count > mm::chunk_bound(len < 1 ? 1 : len, C, true)) ok = false;
        if (n0 == 0 && count > mm::chunk_bound(len < 1 ? 1 : len, C, false)) ok = false;
        if (!ok)
          std::printf("  chunk grid mismatch: C=%lld n0=%lld len=%lld (count %lld)\n",
                      (long long)C, (long long)n0, (long long)len, (long long)count);
      }
  CHECK(ok, "chunk grid over %d (C, n0, len) cases", cases);
  // The bound T/C + 1 is not enough with a carried open chunk: T = 2C − 1, n0 = C − 1 gives 3.
  CHECK(mm::chunks_of(7, 3, 4) == 3 && mm::chunk_bound(7, 4, true) >= 3, "T=2C-1, n0=C-1");
  CHECK(mm::chunk_bound(4096, 64, false) == 64 && mm::chunk_bound(4096, 64, true) == 65,
        "bound 4096/64");
  CHECK(mm::chunk_bound(5, 1, true) == 5 && mm::chunk_bound(5, 1, false) == 5, "bound C=1");
  CHECK(mm::chunk_rows(100, 16) == 16 && mm::chunk_rows(10, 16) == 10, "chunk rows");
}

// σ', σ'' against central differences of σ, σ' (double-checked derivative formulas).
void test_activation() {
  bool ok = true;
  for (int gelu = 0; gelu < 2; ++gelu)
    for (float z = -6.0f; z <= 6.0f; z += 0.25f) {
      const double h = 1e-3;
      const double d1 = (mm::act_f(gelu, z + h) - mm::act_f(gelu, z - h)) / (2 * h);
      const double d2 = (mm::act_d1(gelu, z + h) - mm::act_d1(gelu, z - h)) / (2 * h);
      if (std::fabs(d1 - mm::act_d1(gelu, z)) > 2e-3 || std::fabs(d2 - mm::act_d2(gelu, z)) > 2e-3) {
        ok = false;
        std::printf("  act %d z=%g: d1 %g vs %g, d2 %g vs %g\n", gelu, z, d1, mm::act_d1(gelu, z),
                    d2, mm::act_d2(gelu, z));
      }
    }
  CHECK(ok, "activation derivatives match finite differences");
  CHECK(std::fabs(mm::act_f(0, 1.0f) - 1.0f / (1.0f + std::exp(-1.0f))) < 1e-6f, "silu(1)");
  CHECK(std::fabs(mm::act_f(1, 1.0f) - 0.8413447f) < 1e-6f, "gelu(1)");
}

void test_layout_and_sizes() {
  nlcore_memory_mlp_problem_t p = base();
  mm::Dims d{p.batch, p.seqlen, p.num_sequences, p.heads, p.head_dim, p.hidden_dim,
             p.chunk_size, p.checkpoint_every, true, false};
  const mm::Layout f = mm::make_layout(d, false), b = mm::make_layout(d, true);
  CHECK(f.ok && b.ok, "layout ok");
  size_t ws0 = 0, ws1 = 0;
  CHECK(nlcore_memory_mlp_workspace_size(&p, 0, &ws0) == NLCORE_STATUS_SUCCESS &&
            ws0 == f.total,
        "forward size %zu == layout %zu", ws0, f.total);
  CHECK(nlcore_memory_mlp_workspace_size(&p, 1, &ws1) == NLCORE_STATUS_SUCCESS &&
            ws1 == b.total,
        "backward size %zu == layout %zu", ws1, b.total);
  // T = 100, C = 16, an initial state: ceil(115 / 16) = 8 chunk indices, 2 segments of 4.
  CHECK(f.nc_bound == 8 && b.nc_bound == 8, "nc_bound %lld", (long long)f.nc_bound);
  CHECK(b.ckpt_every == 4 && b.n_ckpt == 2 && b.n_seg == 4, "ckpt %lld/%lld/%lld",
        (long long)b.ckpt_every, (long long)b.n_ckpt, (long long)b.n_seg);
  CHECK(f.rows == 16, "rows %lld", (long long)f.rows);
  // every array 256-aligned, in order, inside the total
  const size_t fwd_offs[] = {f.seq, f.alpha, f.Z, f.Zx, f.Zv, f.Tg, f.E, f.Q1, f.total};
  bool mono = true;
  for (size_t i = 0; i + 1 < sizeof(fwd_offs) / sizeof(fwd_offs[0]); ++i)
    mono = mono && fwd_offs[i] % mm::kWorkspaceAlign == 0 && fwd_offs[i] <= fwd_offs[i + 1];
  CHECK(mono, "forward offsets aligned and ordered");
  const size_t bwd_offs[] = {b.Q1, b.R, b.dQ1, b.dR, b.dZ, b.dZv, b.dZx, b.dEeta, b.dE,
                             b.work, b.work_ag, b.ckpt, b.seg, b.grad, b.dag, b.dsg, b.total};
  mono = true;
  for (size_t i = 0; i + 1 < sizeof(bwd_offs) / sizeof(bwd_offs[0]); ++i)
    mono = mono && bwd_offs[i] % mm::kWorkspaceAlign == 0 && bwd_offs[i] <= bwd_offs[i + 1];
  CHECK(mono, "backward offsets aligned and ordered");
  // exact sizes of the big arrays
  const size_t sh = size_t(p.num_sequences) * p.heads, fd = size_t(p.hidden_dim) * p.head_dim;
  CHECK(b.ckpt + (b.n_ckpt - 1) * 4 * sh * fd * 4 <= b.seg, "checkpoint array size");
  CHECK(b.seg + size_t(b.n_seg) * 2 * sh * fd * 4 <= b.grad, "segment array size");
  CHECK(b.grad + 6 * sh * fd * 4 <= b.dag, "gradient slabs");
  CHECK(f.Z + sh * 16 * p.hidden_dim * 4 <= f.Zx, "Z buffer size");
  CHECK(f.Zv == f.Tg && f.Tg == f.E, "no self-target buffers without self_target");
  // self_target adds Zv, Tg (and dZv in the backward)
  d.self_target = true;
  const mm::Layout fs = mm::make_layout(d, false), bs = mm::make_layout(d, true);
  CHECK(fs.total == f.total + sh * 16 * (p.hidden_dim + p.head_dim) * 4, "self_target fwd %zu vs %zu",
        fs.total, f.total);
  CHECK(bs.total > b.total, "self_target bwd grows");
  p.self_target = 1;
  CHECK(nlcore_memory_mlp_workspace_size(&p, 1, &ws1) == NLCORE_STATUS_SUCCESS &&
            ws1 == bs.total, "self_target API size");
  // no initial state: tighter bound, ceil(100 / 16) = 7
  p = base();
  p.has_initial_state = 0;
  d = mm::Dims{2, 100, 2, 3, 64, 128, 16, 4, false, false};
  CHECK(mm::make_layout(d, false).nc_bound == 7, "bound without initial state");
  CHECK(nlcore_memory_mlp_workspace_size(&p, 1, &ws1) == NLCORE_STATUS_SUCCESS &&
            ws1 == mm::make_layout(d, true).total, "API size without initial state");
  // checkpoint_every >= the chunk count: one segment, no saved checkpoint
  d.ckpt_every = 1000;
  const mm::Layout one = mm::make_layout(d, true);
  CHECK(one.n_ckpt == 1 && one.ckpt_every == 7 && one.n_seg == 7 && one.ckpt == one.seg,
        "one segment: n_ckpt %lld", (long long)one.n_ckpt);
  d.ckpt_every = 1;
  const mm::Layout each = mm::make_layout(d, true);
  CHECK(each.n_ckpt == 7 && each.n_seg == 1, "every chunk checkpointed");
  // chunk_size > T: rows = T
  d.C = 1000;
  d.ckpt_every = 4;
  CHECK(mm::make_layout(d, false).rows == 100 && mm::make_layout(d, false).nc_bound == 1,
        "chunk > T");
  // varlen: N sequences in one row; the bound uses T of the packed row
  p = base();
  p.batch = 1;
  p.num_sequences = 5;
  int64_t cu_dummy[6] = {0, 0, 0, 0, 0, 0};
  p.cu_seqlens = cu_dummy;
  p.cu_seqlens_dtype = NLCORE_DTYPE_INT64;
  d = mm::Dims{1, 100, 5, 3, 64, 128, 16, 4, true, false};
  CHECK(nlcore_memory_mlp_workspace_size(&p, 0, &ws0) == NLCORE_STATUS_SUCCESS &&
            ws0 == mm::make_layout(d, false).total, "varlen size: %s", nlcore_last_error_message());
  // every supported (D, F) and dtype-independent flag combination is accepted
  bool all_ok = true;
  for (int D : {32, 64, 128})
    for (int mult : {1, 2, 4})
      for (int fl = 0; fl < 64; ++fl) {
        nlcore_memory_mlp_problem_t q = base();
        q.head_dim = D;
        q.hidden_dim = mult * D;
        q.residual = fl & 1;
        q.self_target = (fl >> 1) & 1;
        q.dgd_erase = (fl >> 2) & 1;
        q.has_g = (fl >> 3) & 1;
        q.has_initial_state = (fl >> 4) & 1;
        q.weights_shared = q.has_initial_state ? 0 : 1;
        q.activation = (fl >> 5) & 1;
        q.objective = (fl >> 5) & 1;
        size_t w = 0;
        if (nlcore_memory_mlp_workspace_size(&q, 1, &w) != NLCORE_STATUS_SUCCESS) {
          all_ok = false;
          std::printf("  D=%d F=%d flags=%d: %s\n", D, mult * D, fl, nlcore_last_error_message());
        }
      }
  CHECK(all_ok, "every D / F / flag combination accepted");
  CHECK(std::strcmp(mm::kKernelSetName,
#if defined(NLCORE_KERNEL_SET_CI)
                    "ci"
#else
                    "full"
#endif
                    ) == 0,
        "kernel set name");
}

// ---- the persistent kernel (persistent.h) ------------------------------------------------
namespace ps = nlcore::memory_mlp::persist;

// G1 [rows × cols] / G2 split into register fragments: every element owned exactly once, by the
// tile frag_tile_ref describes, within the matrix.
bool fragments_cover(int rows, int cols) {
  std::vector<int> owner(size_t(rows) * cols, 0);
  const int nf = ps::frags_per_warp(rows, cols);
  bool ok = nf >= 1 && ps::frags_even(rows, cols);
  for (int w = 0; w < ps::kWarps; ++w)
    for (int i = 0; i < nf; ++i) {
      const ps::TileRC t = ps::frag_tile(cols, w, i), r = ps::frag_tile_ref(cols, w, i);
      if (t.r0 != r.r0 || t.c0 != r.c0) ok = false;
      for (int lane = 0; lane < 32; ++lane)
        for (int e = 0; e < 4; ++e) {
          const ps::ElemRC x = ps::frag_elem(cols, w, i, lane, e);
          if (x.r < t.r0 || x.r >= t.r0 + 16 || x.c < t.c0 || x.c >= t.c0 + 8) ok = false;
          if (x.r < 0 || x.r >= rows || x.c < 0 || x.c >= cols) {
            ok = false;
            continue;
          }
          ++owner[size_t(x.r) * cols + x.c];
        }
    }
  for (int o : owner) ok = ok && o == 1;
  return ok;
}

void test_persistent_partition() {
  // the cluster split of every supported (D, F): smallest c with Fc·D <= kMaxSlice
  struct Want {
    int D, F, c;
  };
  const Want want[] = {{32, 32, 1},  {32, 64, 1},   {32, 128, 1}, {64, 64, 1},  {64, 128, 1},
                       {64, 256, 2}, {128, 128, 2}, {128, 256, 4}, {128, 512, 8}};
  for (const Want& w : want) {
    const int c = ps::cluster_for(w.D, w.F);
    CHECK(c == w.c, "cluster_for(%d, %d) = %d, want %d", w.D, w.F, c, w.c);
    const int fc = w.F / w.c;
    CHECK(ps::slice_built(w.D, fc), "slice (%d, %d) built", w.D, fc);
    CHECK(int64_t(fc) * w.D <= ps::kMaxSlice && fc % 16 == 0, "slice (%d, %d) budget", w.D, fc);
    CHECK(w.c == 1 || int64_t(2 * fc) * w.D > ps::kMaxSlice, "(%d, %d): c = %d is the smallest",
          w.D, w.F, w.c);
    const ps::Config cfg = ps::config_for(w.D, w.F);
    CHECK(cfg.cluster == w.c && cfg.fc == fc && cfg.smem == ps::smem_bytes(w.D, fc) &&
              cfg.smem <= ps::kSmemLimit,
          "config_for(%d, %d): cluster %d fc %d smem %zu (%s)", w.D, w.F, cfg.cluster, cfg.fc,
          cfg.smem, cfg.why);
    // the hidden units split into c disjoint slices covering [0, F); y's columns likewise
    std::vector<int> fown(w.F, 0), down(w.D, 0);
    for (int r = 0; r < w.c; ++r) {
      for (int f = r * fc; f < (r + 1) * fc; ++f) ++fown[f];
      const ps::ColRange yc = ps::y_cols(w.D, w.c, r);
      CHECK(yc.count >= 16 && yc.count * w.c == w.D, "y columns of rank %d: %d", r, yc.count);
      for (int d = yc.d0; d < yc.d0 + yc.count && d < w.D; ++d) ++down[d];
    }
    bool once = true;
    for (int o : fown) once = once && o == 1;
    for (int o : down) once = once && o == 1;
    CHECK(once, "(%d, %d): hidden units and y columns partitioned", w.D, w.F);
  }
  // no kernel for other shapes: the flag falls back (with a reason)
  CHECK(ps::config_for(16, 16).cluster == 0 && std::strlen(ps::config_for(16, 16).why) > 0,
        "(16, 16) not built");
  CHECK(ps::config_for(48, 96).cluster == 0, "(48, 96) not built");
  CHECK(ps::cluster_for(128, 1024) == 0, "(128, 1024) needs 16 CTAs: none");
  CHECK(ps::cluster_for(32, 40) == 0, "slices must be multiples of 16 hidden units");
  // every instantiated slice: fragments cover G1 [Fc × D] and G2 [D × Fc] once each, the same
  // count per warp for both; shared memory aligned, ordered, within sm_90's 227 KiB
  const int slices[][2] = {{32, 32}, {32, 64}, {32, 128}, {64, 64}, {64, 128}, {128, 64}};
  for (const auto& sl : slices) {
    const int D = sl[0], fc = sl[1];
    CHECK(fragments_cover(fc, D) && fragments_cover(D, fc), "fragments of slice (%d, %d)", D, fc);
    CHECK(ps::frags_per_warp(fc, D) == ps::frags_per_warp(D, fc) &&
              8 * ps::frags_per_warp(fc, D) <= 64,
          "(%d, %d): %d G registers per thread", D, fc, 8 * ps::frags_per_warp(fc, D));
    const ps::Smem L = ps::smem_layout(D, fc);
    const size_t offs[] = {L.w1, L.w2, L.x,  L.k,  L.v,  L.eta, L.g,  L.zk, L.hk,
                           L.hx, L.hv, L.yp, L.ep, L.e,  L.p1,  L.p2, L.floats};
    const size_t tok = ps::kTok, td = tok * L.ldd, tf = tok * L.ldf;
    const size_t sizes[] = {size_t(fc) * L.ldw1, size_t(D) * L.ldw2, td, td, td, tok, tok,
                            tf, tf, tf, tf, 2 * td, 2 * td, td, size_t(fc) * L.ldw1,
                            size_t(D) * L.ldw2};
    bool ok = L.ldw1 % 4 == 0 && L.ldw2 % 4 == 0 && L.ldd % 4 == 0 && L.ldf % 4 == 0 &&
              L.ldw1 >= D && L.ldw2 >= fc && L.ldd >= D && L.ldf >= fc;
    for (size_t i = 0; i + 1 < sizeof(offs) / sizeof(offs[0]); ++i)
      ok = ok && offs[i] % 4 == 0 && offs[i] + sizes[i] <= offs[i + 1];
    CHECK(ok, "smem layout of slice (%d, %d)", D, fc);
    CHECK(ps::smem_bytes(D, fc) == L.floats * 4 && ps::smem_bytes(D, fc) <= ps::kSmemLimit,
          "smem of slice (%d, %d) = %zu", D, fc, ps::smem_bytes(D, fc));
  }
  CHECK(ps::smem_bytes(128, 64) == 222336 && ps::smem_bytes(64, 128) == 205952,
        "largest slices: %zu, %zu bytes", ps::smem_bytes(128, 64), ps::smem_bytes(64, 128));
}

// The flag through the C API. Without a usable device (CI) the flag's path is STEP with a
// reason; on a Hopper GPU it is PERSISTENT with the cluster of persistent.h.
void test_persistent_api() {
  nlcore_memory_mlp_problem_t p = base();
  nlcore_memory_mlp_path_t path{};
  path.path = 99;
  CHECK(nlcore_memory_mlp_forward_path(&p, &path) == NLCORE_STATUS_SUCCESS &&
            path.path == NLCORE_MEMORY_MLP_PATH_STEP && path.cluster_size == 0 &&
            path.reason != nullptr && contains(path.reason, "FLAG_PERSISTENT"),
        "no flag: step (%s)", path.reason ? path.reason : "NULL");
  CHECK(nlcore_memory_mlp_forward_path(&p, nullptr) == NLCORE_STATUS_INVALID_VALUE &&
            contains(nlcore_last_error_message(), "path is NULL"),
        "NULL path: %s", nlcore_last_error_message());
  nlcore_memory_mlp_problem_t bad = base();
  bad.chunk_size = 0;
  CHECK(nlcore_memory_mlp_forward_path(&bad, &path) == NLCORE_STATUS_INVALID_VALUE &&
            contains(nlcore_last_error_message(), "chunk_size"),
        "path query validates: %s", nlcore_last_error_message());
  bad = base();
  bad.flags = NLCORE_MEMORY_MLP_FLAG_PERSISTENT | 0x2u;
  expect_reject("flags=PERSISTENT|0x2", bad, NLCORE_STATUS_INVALID_VALUE, {"flags", "0x2"});

  const mm::Dims d{p.batch, p.seqlen, p.num_sequences, p.heads, p.head_dim, p.hidden_dim,
                   p.chunk_size, p.checkpoint_every, true, false};
  const size_t step_fwd = mm::make_layout(d, false).total;
  const size_t step_bwd = mm::make_layout(d, true).total;
  for (int D : {32, 64, 128})
    for (int mult : {1, 2, 4}) {
      nlcore_memory_mlp_problem_t q = base();
      q.flags = NLCORE_MEMORY_MLP_FLAG_PERSISTENT;
      q.head_dim = D;
      q.hidden_dim = mult * D;
      path = nlcore_memory_mlp_path_t{};
      const nlcore_status_t st = nlcore_memory_mlp_forward_path(&q, &path);
      const ps::Config cfg = ps::config_for(D, mult * D);
      const bool ok =
          st == NLCORE_STATUS_SUCCESS && path.reason != nullptr &&
          ((path.path == NLCORE_MEMORY_MLP_PATH_STEP && path.cluster_size == 0 &&
            std::strlen(path.reason) > 0) ||
           (path.path == NLCORE_MEMORY_MLP_PATH_PERSISTENT && path.cluster_size == cfg.cluster &&
            path.smem_bytes == int64_t(cfg.smem) && path.reason[0] == '\0'));
      CHECK(ok, "flag, D=%d F=%d: status %s path %d cluster %d (%s)", D, mult * D,
            nlcore_status_string(st), path.path, path.cluster_size,
            path.reason ? path.reason : "NULL");
      // the forward's workspace follows the path; the backward's never changes
      const mm::Dims dq{q.batch, q.seqlen, q.num_sequences, q.heads, D, mult * D, q.chunk_size,
                        q.checkpoint_every, true, false};
      size_t w0 = 1, w1 = 1;
      CHECK(nlcore_memory_mlp_workspace_size(&q, 0, &w0) == NLCORE_STATUS_SUCCESS &&
                w0 == (path.path == NLCORE_MEMORY_MLP_PATH_PERSISTENT
                           ? 0 : mm::make_layout(dq, false).total),
            "flag, D=%d F=%d: forward workspace %zu", D, mult * D, w0);
      CHECK(nlcore_memory_mlp_workspace_size(&q, 1, &w1) == NLCORE_STATUS_SUCCESS &&
                w1 == mm::make_layout(dq, true).total,
            "flag, D=%d F=%d: backward workspace %zu", D, mult * D, w1);
    }
  // the flag leaves the backward's validation and size alone
  p.flags = NLCORE_MEMORY_MLP_FLAG_PERSISTENT;
  size_t wb = 0;
  CHECK(nlcore_memory_mlp_workspace_size(&p, 1, &wb) == NLCORE_STATUS_SUCCESS && wb == step_bwd,
        "flag: backward size %zu vs %zu", wb, step_bwd);
  CHECK(step_fwd > 0, "step forward workspace");
}

}  // namespace

int main() {
  test_problem_validation();
  test_tensor_validation();
  test_chunk_grid();
  test_activation();
  test_layout_and_sizes();
  test_persistent_partition();
  test_persistent_api();
  return nlcore_test::check_summary();
}
