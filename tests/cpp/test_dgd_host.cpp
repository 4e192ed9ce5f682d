// Host-only tests of the DGD C API (no GPU needed): validation of every problem field, tensor
// pointer and workspace argument (status + message, returned before any CUDA call), workspace
// sizes against the shared layout function, and the index / tiling helpers of the kernels.
// Prints "N passed, M failed"; exits non-zero on failure.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "dgd/kernel_set.h"
#include "dgd/tiling.h"
#include "nlcore/nlcore.h"
#include "check.h"

namespace {

using nlcore::dgd::Dims;
using nlcore::dgd::Layout;
using nlcore::dgd::make_layout;

nlcore_dgd_problem_t base() {
  nlcore_dgd_problem_t p{};
  p.batch = 2;
  p.seqlen = 100;
  p.num_sequences = 2;
  p.heads_qk = 2;
  p.heads_v = 4;
  p.head_dim_k = 64;
  p.head_dim_v = 64;
  p.dtype = NLCORE_DTYPE_BFLOAT16;
  p.gate_dtype = NLCORE_DTYPE_FLOAT32;
  p.has_g = 1;
  p.has_erase = 1;
  p.has_initial_state = 1;
  p.read_before = 0;
  p.scale = 0.125f;
  p.chunk_size = 64;
  p.cu_seqlens = nullptr;
  p.cu_seqlens_dtype = NLCORE_DTYPE_INT32;
  p.flags = NLCORE_DGD_FLAG_DEFAULT;
  return p;
}

void* fake(uintptr_t a) { return reinterpret_cast<void*>(a); }

nlcore_dgd_tensors_t tensors_for(const nlcore_dgd_problem_t& p) {
  nlcore_dgd_tensors_t t{};
  t.q = fake(0x10000);
  t.k = fake(0x20000);
  t.v = fake(0x30000);
  t.beta = fake(0x40000);
  t.g = p.has_g ? fake(0x50000) : nullptr;
  t.erase = p.has_erase ? fake(0x60000) : nullptr;
  t.initial_state = p.has_initial_state ? fake(0x70000) : nullptr;
  t.o = fake(0x80000);
  t.final_state = fake(0x90000);
  return t;
}

nlcore_dgd_grads_t grads_for(const nlcore_dgd_problem_t& p) {
  nlcore_dgd_grads_t g{};
  g.grad_o = fake(0xa0000);
  g.grad_final_state = nullptr;
  g.dq = fake(0xb0000);
  g.dk = fake(0xc0000);
  g.dv = fake(0xd0000);
  g.dbeta = fake(0xe0000);
  g.dg = p.has_g ? fake(0xf0000) : nullptr;
  g.derase = p.has_erase ? fake(0x100000) : nullptr;
  g.dinitial_state = p.has_initial_state ? fake(0x110000) : nullptr;
  return g;
}

bool contains(const std::string& hay, const char* needle) {
  return hay.find(needle) != std::string::npos;
}

// All four entry points (size fwd/bwd, forward, backward) must reject `p` with `want` and a
// message containing every needle. The fake device pointers are never dereferenced: a call that
// got past validation would fail (no GPU) with CUDA_ERROR, which the status check catches.
void expect_reject(const char* name, const nlcore_dgd_problem_t& p, nlcore_status_t want,
                   std::vector<const char*> needles) {
  size_t ws0 = 12345, ws1 = 12345;
  const nlcore_dgd_tensors_t t = tensors_for(p);
  const nlcore_dgd_grads_t g = grads_for(p);
  void* w = fake(0x1000000);
  const nlcore_status_t s1 = nlcore_dgd_workspace_size(&p, 0, &ws0);
  const std::string m1 = nlcore_last_error_message();
  const nlcore_status_t s2 = nlcore_dgd_workspace_size(&p, 1, &ws1);
  const std::string m2 = nlcore_last_error_message();
  const nlcore_status_t s3 = nlcore_dgd_forward(&p, &t, w, SIZE_MAX, nullptr);
  const std::string m3 = nlcore_last_error_message();
  const nlcore_status_t s4 = nlcore_dgd_backward(&p, &t, &g, w, SIZE_MAX, nullptr);
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

void expect_fwd_reject(const char* name, const nlcore_dgd_problem_t& p,
                       const nlcore_dgd_tensors_t& t, void* ws, size_t wsb, nlcore_status_t want,
                       const char* needle) {
  const nlcore_status_t s = nlcore_dgd_forward(&p, &t, ws, wsb, nullptr);
  const std::string m = nlcore_last_error_message();
  CHECK(s == want, "%s: got %s, want %s (msg: %s)", name, nlcore_status_string(s),
        nlcore_status_string(want), m.c_str());
  CHECK(contains(m, needle), "%s: message '%s' lacks '%s'", name, m.c_str(), needle);
}

void expect_bwd_reject(const char* name, const nlcore_dgd_problem_t& p,
                       const nlcore_dgd_tensors_t& t, const nlcore_dgd_grads_t* g, void* ws,
                       size_t wsb, nlcore_status_t want, const char* needle) {
  const nlcore_status_t s = nlcore_dgd_backward(&p, &t, g, ws, wsb, nullptr);
  const std::string m = nlcore_last_error_message();
  CHECK(s == want, "%s: got %s, want %s (msg: %s)", name, nlcore_status_string(s),
        nlcore_status_string(want), m.c_str());
  CHECK(contains(m, needle), "%s: message '%s' lacks '%s'", name, m.c_str(), needle);
}

void test_problem_validation() {
  nlcore_dgd_problem_t p;
  p = base(); p.batch = 0;
  expect_reject("batch=0", p, NLCORE_STATUS_INVALID_VALUE, {"batch", "0"});
  p = base(); p.seqlen = 0;
  expect_reject("seqlen=0", p, NLCORE_STATUS_INVALID_VALUE, {"seqlen", "0"});
  p = base(); p.num_sequences = 0;
  expect_reject("num_sequences=0", p, NLCORE_STATUS_INVALID_VALUE, {"num_sequences"});
  p = base(); p.num_sequences = 3;
  expect_reject("num_sequences!=batch", p, NLCORE_STATUS_INVALID_VALUE, {"num_sequences", "3", "2"});
  int32_t cu_dummy[4] = {0, 0, 0, 0};
  p = base(); p.cu_seqlens = cu_dummy;
  expect_reject("varlen batch=2", p, NLCORE_STATUS_INVALID_VALUE, {"batch", "cu_seqlens"});
  p = base(); p.batch = 1; p.num_sequences = 3; p.cu_seqlens = cu_dummy;
  p.cu_seqlens_dtype = NLCORE_DTYPE_FLOAT32;
  expect_reject("cu_seqlens_dtype", p, NLCORE_STATUS_INVALID_VALUE, {"cu_seqlens_dtype", "FLOAT32"});
  p = base(); p.heads_qk = 0;
  expect_reject("heads_qk=0", p, NLCORE_STATUS_INVALID_VALUE, {"heads_qk"});
  p = base(); p.heads_v = 0;
  expect_reject("heads_v=0", p, NLCORE_STATUS_INVALID_VALUE, {"heads_v"});
  p = base(); p.heads_qk = 3;
  expect_reject("heads_v%heads_qk", p, NLCORE_STATUS_INVALID_VALUE, {"heads_v", "multiple", "3"});
  p = base(); p.head_dim_k = 0;
  expect_reject("head_dim_k=0", p, NLCORE_STATUS_INVALID_VALUE, {"head_dim_k"});
  p = base(); p.head_dim_k = 48;
  expect_reject("head_dim_k=48", p, NLCORE_STATUS_NOT_SUPPORTED, {"head_dim_k", "48"});
  p = base(); p.head_dim_v = 512;
  expect_reject("head_dim_v=512", p, NLCORE_STATUS_NOT_SUPPORTED, {"head_dim_v", "512"});
  p = base(); p.head_dim_v = -1;
  expect_reject("head_dim_v=-1", p, NLCORE_STATUS_INVALID_VALUE, {"head_dim_v"});
  p = base(); p.dtype = NLCORE_DTYPE_FLOAT64;
  expect_reject("dtype=f64", p, NLCORE_STATUS_NOT_SUPPORTED, {"dtype", "FLOAT64"});
  p = base(); p.dtype = static_cast<nlcore_dtype_t>(9);
  expect_reject("dtype=9", p, NLCORE_STATUS_INVALID_VALUE, {"dtype", "9"});
  p = base(); p.dtype = NLCORE_DTYPE_INT32;
  expect_reject("dtype=int32", p, NLCORE_STATUS_INVALID_VALUE, {"dtype", "INT32"});
  p = base(); p.gate_dtype = NLCORE_DTYPE_BFLOAT16;
  expect_reject("gate_dtype=bf16", p, NLCORE_STATUS_NOT_SUPPORTED, {"gate_dtype", "BFLOAT16"});
  p = base(); p.gate_dtype = NLCORE_DTYPE_FLOAT64;
  expect_reject("gate_dtype=f64", p, NLCORE_STATUS_INVALID_VALUE, {"gate_dtype", "FLOAT64"});
  p = base(); p.has_g = 2;
  expect_reject("has_g=2", p, NLCORE_STATUS_INVALID_VALUE, {"has_g", "2"});
  p = base(); p.has_erase = -1;
  expect_reject("has_erase=-1", p, NLCORE_STATUS_INVALID_VALUE, {"has_erase", "-1"});
  p = base(); p.has_initial_state = 5;
  expect_reject("has_initial_state=5", p, NLCORE_STATUS_INVALID_VALUE, {"has_initial_state", "5"});
  p = base(); p.read_before = 3;
  expect_reject("read_before=3", p, NLCORE_STATUS_INVALID_VALUE, {"read_before", "3"});
  p = base(); p.scale = std::numeric_limits<float>::quiet_NaN();
  expect_reject("scale=nan", p, NLCORE_STATUS_INVALID_VALUE, {"scale"});
  p = base(); p.scale = std::numeric_limits<float>::infinity();
  expect_reject("scale=inf", p, NLCORE_STATUS_INVALID_VALUE, {"scale"});
  p = base(); p.chunk_size = 16;
  expect_reject("chunk_size=16", p, NLCORE_STATUS_NOT_SUPPORTED, {"chunk_size", "16"});
  p = base(); p.chunk_size = 32;
  expect_reject("chunk_size=32", p, NLCORE_STATUS_NOT_SUPPORTED, {"chunk_size", "32"});
  p = base(); p.chunk_size = 0;
  expect_reject("chunk_size=0", p, NLCORE_STATUS_INVALID_VALUE, {"chunk_size", "0"});
  p = base(); p.chunk_size = 128;
  expect_reject("chunk_size=128", p, NLCORE_STATUS_INVALID_VALUE, {"chunk_size", "128"});
  p = base(); p.flags = NLCORE_DGD_FLAG_FAST;
  expect_reject("flags=FAST", p, NLCORE_STATUS_NOT_SUPPORTED, {"FAST"});
  p = base(); p.flags = 0x10;
  expect_reject("flags=0x10", p, NLCORE_STATUS_INVALID_VALUE, {"flags", "0x10"});
#if defined(NLCORE_KERNEL_SET_CI)
  p = base(); p.dtype = NLCORE_DTYPE_FLOAT32;
  expect_reject("ci: fp32 not built", p, NLCORE_STATUS_NOT_SUPPORTED, {"not built", "FLOAT32", "ci"});
  p = base(); p.dtype = NLCORE_DTYPE_FLOAT16;
  expect_reject("ci: fp16 not built", p, NLCORE_STATUS_NOT_SUPPORTED, {"not built", "FLOAT16"});
#endif
  {
    const nlcore_dgd_problem_t q = base();
    nlcore_status_t s = nlcore_dgd_workspace_size(&q, 0, nullptr);
    CHECK(s == NLCORE_STATUS_INVALID_VALUE && contains(nlcore_last_error_message(), "workspace_bytes"),
          "NULL workspace_bytes: %s", nlcore_last_error_message());
    size_t ws = 0;
    s = nlcore_dgd_workspace_size(&q, 2, &ws);
    CHECK(s == NLCORE_STATUS_INVALID_VALUE && contains(nlcore_last_error_message(), "backward"),
          "backward=2: %s", nlcore_last_error_message());
    s = nlcore_dgd_workspace_size(nullptr, 0, &ws);
    CHECK(s == NLCORE_STATUS_INVALID_VALUE && contains(nlcore_last_error_message(), "problem is NULL"),
          "NULL problem: %s", nlcore_last_error_message());
  }
}

void test_tensor_validation() {
  const nlcore_dgd_problem_t p = base();
  size_t wsf = 0, wsb = 0;
  CHECK(nlcore_dgd_workspace_size(&p, 0, &wsf) == NLCORE_STATUS_SUCCESS, "size fwd: %s",
        nlcore_last_error_message());
  CHECK(nlcore_dgd_workspace_size(&p, 1, &wsb) == NLCORE_STATUS_SUCCESS, "size bwd: %s",
        nlcore_last_error_message());
  void* ws = fake(0x1000000);
  nlcore_dgd_tensors_t t;
  t = tensors_for(p); t.q = nullptr;
  expect_fwd_reject("q NULL", p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE, "tensors->q is NULL");
  t = tensors_for(p); t.k = nullptr;
  expect_fwd_reject("k NULL", p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE, "tensors->k");
  t = tensors_for(p); t.v = nullptr;
  expect_fwd_reject("v NULL", p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE, "tensors->v");
  t = tensors_for(p); t.beta = nullptr;
  expect_fwd_reject("beta NULL", p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE, "tensors->beta");
  t = tensors_for(p); t.o = nullptr;
  expect_fwd_reject("o NULL", p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE, "tensors->o");
  t = tensors_for(p); t.g = nullptr;
  expect_fwd_reject("g NULL with has_g", p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE, "has_g = 1");
  t = tensors_for(p); t.erase = nullptr;
  expect_fwd_reject("erase NULL with has_erase", p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE,
                    "has_erase = 1");
  t = tensors_for(p); t.initial_state = nullptr;
  expect_fwd_reject("initial_state NULL", p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE,
                    "has_initial_state = 1");
  {
    nlcore_dgd_problem_t q = base();
    q.has_g = 0;
    nlcore_dgd_tensors_t u = tensors_for(base());  // g non-NULL
    expect_fwd_reject("g given with has_g=0", q, u, ws, wsf, NLCORE_STATUS_INVALID_VALUE,
                      "has_g = 0");
  }
  t = tensors_for(p); t.q = fake(0x10001);
  expect_fwd_reject("q misaligned", p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE, "aligned");
  t = tensors_for(p); t.beta = fake(0x40002);
  expect_fwd_reject("beta misaligned", p, t, ws, wsf, NLCORE_STATUS_INVALID_VALUE, "tensors->beta");
  t = tensors_for(p);
  expect_fwd_reject("workspace NULL", p, t, nullptr, wsf, NLCORE_STATUS_INVALID_VALUE,
                    "workspace is NULL");
  expect_fwd_reject("workspace misaligned", p, t, fake(0x1000080), wsf,
                    NLCORE_STATUS_INVALID_VALUE, "256-byte");
  expect_fwd_reject("workspace small", p, t, ws, wsf - 1, NLCORE_STATUS_INSUFFICIENT_WORKSPACE,
                    "workspace_bytes");
  {
    const nlcore_status_t s = nlcore_dgd_forward(&p, nullptr, ws, wsf, nullptr);
    CHECK(s == NLCORE_STATUS_INVALID_VALUE && contains(nlcore_last_error_message(), "tensors is NULL"),
          "tensors NULL: %s", nlcore_last_error_message());
  }
  // backward
  t = tensors_for(p);
  nlcore_dgd_grads_t g;
  expect_bwd_reject("grads NULL", p, t, nullptr, ws, wsb, NLCORE_STATUS_INVALID_VALUE,
                    "grads is NULL");
  g = grads_for(p); g.grad_o = nullptr;
  expect_bwd_reject("grad_o NULL", p, t, &g, ws, wsb, NLCORE_STATUS_INVALID_VALUE, "grads->grad_o");
  g = grads_for(p); g.dq = nullptr;
  expect_bwd_reject("dq NULL", p, t, &g, ws, wsb, NLCORE_STATUS_INVALID_VALUE, "grads->dq");
  g = grads_for(p); g.dbeta = nullptr;
  expect_bwd_reject("dbeta NULL", p, t, &g, ws, wsb, NLCORE_STATUS_INVALID_VALUE, "grads->dbeta");
  g = grads_for(p); g.dg = nullptr;
  expect_bwd_reject("dg NULL", p, t, &g, ws, wsb, NLCORE_STATUS_INVALID_VALUE, "grads->dg");
  g = grads_for(p); g.derase = nullptr;
  expect_bwd_reject("derase NULL", p, t, &g, ws, wsb, NLCORE_STATUS_INVALID_VALUE, "grads->derase");
  g = grads_for(p); g.dinitial_state = nullptr;
  expect_bwd_reject("dinitial_state NULL", p, t, &g, ws, wsb, NLCORE_STATUS_INVALID_VALUE,
                    "grads->dinitial_state");
  g = grads_for(p); g.dk = fake(0xc0001);
  expect_bwd_reject("dk misaligned", p, t, &g, ws, wsb, NLCORE_STATUS_INVALID_VALUE, "grads->dk");
  g = grads_for(p);
  expect_bwd_reject("bwd workspace small (fwd size)", p, t, &g, ws, wsf,
                    NLCORE_STATUS_INSUFFICIENT_WORKSPACE, "workspace_bytes");
}

void test_layout_and_sizes() {
  using namespace nlcore::dgd;
  // helpers
  CHECK(ceil_div(0, 64) == 0 && ceil_div(1, 64) == 1 && ceil_div(64, 64) == 1 &&
            ceil_div(65, 64) == 2, "ceil_div");
  CHECK(chunks_of_len(0, 64) == 0 && chunks_of_len(1, 64) == 1 && chunks_of_len(128, 64) == 2 &&
            chunks_of_len(129, 64) == 3, "chunks_of_len");
  CHECK(head_dim_ok(32) && head_dim_ok(64) && head_dim_ok(128) && head_dim_ok(256) &&
            !head_dim_ok(16) && !head_dim_ok(96) && !head_dim_ok(512), "head_dim_ok");
  CHECK(state_vtile(32) == 32 && state_vtile(256) == 32 && state_ntiles(256) == 8 &&
            state_ntiles(32) == 1, "state tiles");
  CHECK(chunk_bound(3, 100, 3, 64, false) == 6, "fixed-length bound %lld",
        (long long)chunk_bound(3, 100, 3, 64, false));
  CHECK(chunk_bound(1, 100, 3, 64, true) == 5, "varlen bound");
  // varlen bound property: Σ ceil(len_n / C) <= ceil(T / C) + N for random partitions
  std::mt19937_64 rng(1234);
  bool bound_ok = true;
  for (int trial = 0; trial < 2000 && bound_ok; ++trial) {
    const int64_t T = 1 + static_cast<int64_t>(rng() % 5000);
    const int64_t N = 1 + static_cast<int64_t>(rng() % 40);
    std::vector<int64_t> cuts(N - 1);
    for (auto& c : cuts) c = static_cast<int64_t>(rng() % (T + 1));
    cuts.push_back(0);
    cuts.push_back(T);
    std::sort(cuts.begin(), cuts.end());
    int64_t total = 0;
    for (int64_t n = 0; n < N; ++n) total += chunks_of_len(cuts[n + 1] - cuts[n], kChunk);
    if (total > chunk_bound(1, T, N, kChunk, true)) bound_ok = false;
  }
  CHECK(bound_ok, "varlen chunk bound violated");
  // shared memory fits both archs for every head dim
  for (int K : {32, 64, 128, 256})
    for (int V : {32, 64, 128, 256})
      CHECK(smem_state_bytes(K, V) <= kSmemOptinSm80, "state smem K=%d V=%d: %zu", K, V,
            smem_state_bytes(K, V));
  CHECK(kSmemPrep <= kSmemOptinSm80 && kSmemBwdChunk <= kSmemOptinSm80 && kSmemChunk1 <= 49152,
        "chunk smem");

  // layout: explicit sizes for one problem, every array aligned, backward extends forward
  Dims d{2, 100, 2, 2, 4, 64, 32, false};
  const Layout f = make_layout(d, false), b = make_layout(d, true);
  CHECK(f.ok && b.ok, "layout ok");
  CHECK(f.nc_bound == 4 && f.vtile == 32 && f.ntiles == 1, "nc_bound %lld", (long long)f.nc_bound);
  auto al = [](size_t x) { return (x + 255) / 256 * 256; };
  size_t off = 0;
  const size_t want_chunks = off; off = al(off + 4 * 4 * 8);
  const size_t want_seqs = off; off = al(off + 2 * 2 * 8);
  const size_t want_meta = off; off = al(off + 4 * 8);
  const size_t want_wv = off; off = al(off + 4 * 4 * 64 * 32 * 4);
  const size_t want_wk = off; off = al(off + 4 * 4 * 64 * 64 * 4);
  const size_t want_s0 = off; off = al(off + 4 * 4 * 64 * 32 * 4);
  const size_t want_fwd_total = off;
  CHECK(f.chunks == want_chunks && f.seqs == want_seqs && f.meta == want_meta && f.wv == want_wv &&
            f.wk == want_wk && f.s0 == want_s0 && f.total == want_fwd_total,
        "forward layout offsets (total %zu want %zu)", f.total, want_fwd_total);
  const size_t want_dw = off; off = al(off + 4 * 4 * 64 * 32 * 4);
  const size_t want_ds = off; off = al(off + 4 * 4 * 64 * 32 * 4);
  const size_t want_ddp = off; off = al(off + 4 * 4 * 1 * 64 * 4);
  const size_t want_decp = off; off = al(off + 4 * 4 * 1 * 4);
  const size_t want_dqp = off; off = al(off + 200 * 4 * 64 * 4);
  const size_t want_dkp = off; off = al(off + 200 * 4 * 64 * 4);
  CHECK(b.wv == f.wv && b.s0 == f.s0 && b.dw == want_dw && b.ds == want_ds && b.ddp == want_ddp &&
            b.decp == want_decp && b.dqp == want_dqp && b.dkp == want_dkp && b.total == off,
        "backward layout offsets (total %zu want %zu)", b.total, off);
  const size_t offs[] = {b.chunks, b.seqs, b.meta, b.wv, b.wk, b.s0, b.dw, b.ds, b.ddp, b.decp,
                         b.dqp, b.dkp, b.total};
  bool aligned = true;
  for (size_t o : offs) aligned = aligned && (o % kWorkspaceAlign == 0);
  CHECK(aligned, "layout offsets 256-byte aligned");

  // the API reports exactly the layout's sizes
  nlcore_dgd_problem_t p = base();
  p.head_dim_v = 32;
  size_t ws0 = 0, ws1 = 0;
  CHECK(nlcore_dgd_workspace_size(&p, 0, &ws0) == NLCORE_STATUS_SUCCESS && ws0 == f.total,
        "API forward size %zu vs layout %zu", ws0, f.total);
  CHECK(nlcore_dgd_workspace_size(&p, 1, &ws1) == NLCORE_STATUS_SUCCESS && ws1 == b.total,
        "API backward size %zu vs layout %zu", ws1, b.total);
  // varlen: bound ceil(T/C) + N
  int64_t cu[4] = {0, 10, 10, 300};
  p = base();
  p.batch = 1;
  p.seqlen = 300;
  p.num_sequences = 3;
  p.cu_seqlens = cu;
  p.cu_seqlens_dtype = NLCORE_DTYPE_INT64;
  Dims dv{1, 300, 3, 2, 4, 64, 64, true};
  CHECK(make_layout(dv, false).nc_bound == 5 + 3, "varlen nc_bound");
  CHECK(nlcore_dgd_workspace_size(&p, 0, &ws0) == NLCORE_STATUS_SUCCESS &&
            ws0 == make_layout(dv, false).total, "varlen API size: %s", nlcore_last_error_message());
  // decoding: T = 1
  p = base();
  p.seqlen = 1;
  CHECK(nlcore_dgd_workspace_size(&p, 0, &ws0) == NLCORE_STATUS_SUCCESS && ws0 > 0,
        "T=1 size: %s", nlcore_last_error_message());
  CHECK(make_layout(Dims{2, 1, 2, 2, 4, 64, 64, false}, false).nc_bound == 2, "T=1 bound");
  // every supported head-dim pair and every flag combination is accepted by the size query
  bool all_ok = true;
  for (int K : {32, 64, 128, 256})
    for (int V : {32, 64, 128, 256})
      for (int f3 = 0; f3 < 16; ++f3) {
        nlcore_dgd_problem_t q = base();
        q.head_dim_k = K;
        q.head_dim_v = V;
        q.has_g = f3 & 1;
        q.has_erase = (f3 >> 1) & 1;
        q.has_initial_state = (f3 >> 2) & 1;
        q.read_before = (f3 >> 3) & 1;
        size_t w = 0;
        if (nlcore_dgd_workspace_size(&q, 1, &w) != NLCORE_STATUS_SUCCESS) {
          all_ok = false;
          std::printf("  K=%d V=%d flags=%d: %s\n", K, V, f3, nlcore_last_error_message());
        }
      }
  CHECK(all_ok, "every head dim / flag combination accepted");
  // an overflowing problem is rejected, not wrapped
  p = base();
  p.batch = p.num_sequences = int64_t(1) << 40;
  CHECK(nlcore_dgd_workspace_size(&p, 1, &ws0) == NLCORE_STATUS_INVALID_VALUE &&
            contains(nlcore_last_error_message(), "too large"),
        "overflow: %s", nlcore_last_error_message());
}

}  // namespace

int main() {
  test_problem_validation();
  test_tensor_validation();
  test_layout_and_sizes();
  return nlcore_test::check_summary();
}
