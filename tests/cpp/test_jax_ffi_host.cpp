// Host-only tests of the XLA FFI handlers' argument checks (csrc/jax/ffi.cpp, no GPU, no XLA
// runtime): the DGD, Newton–Schulz, memory-scan and self-modifying problems are built from fake FFI buffers (fake device
// pointers, never dereferenced), and every mismatched shape, dtype or attribute comes back as an
// INVALID_ARGUMENT error naming the operand, before any kernel. ffi.cpp is compiled into this
// test so its internal helpers are reachable. Prints "N passed, M failed".
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "../../csrc/jax/ffi.cpp"
#include "check.h"

namespace {

// An FFI buffer with its own dims storage.
struct Buf {
  std::vector<int64_t> dims;
  XLA_FFI_Buffer raw{};
  Buf(ffi::DataType t, std::vector<int64_t> d, uintptr_t addr = 0x100000) : dims(std::move(d)) {
    raw.struct_size = XLA_FFI_Buffer_STRUCT_SIZE;
    raw.extension_start = nullptr;
    raw.dtype = static_cast<XLA_FFI_DataType>(t);
    raw.data = reinterpret_cast<void*>(addr);
    raw.rank = static_cast<int64_t>(dims.size());
    raw.dims = dims.data();
  }
  ffi::AnyBuffer any() const { return ffi::AnyBuffer(&raw); }
  ffi::Span<const int64_t> span() const { return ffi::Span<const int64_t>(dims.data(), dims.size()); }
};

using DT = ffi::DataType;

bool has(const ffi::Error& e, const char* needle) {
  return e.failure() && e.message().find(needle) != std::string::npos;
}

// A valid DGD problem: B 2, T 40, H 2, HV 4, K 32, V 64, g and initial state given.
struct Dgd {
  Buf q{DT::BF16, {2, 40, 2, 32}}, k{DT::BF16, {2, 40, 2, 32}}, v{DT::BF16, {2, 40, 4, 64}};
  Buf beta{DT::F32, {2, 40, 4}}, g{DT::F32, {2, 40, 4}}, erase{DT::F32, {0}};
  Buf h0{DT::F32, {2, 4, 32, 64}}, cu{DT::S32, {0}};
  Buf o{DT::BF16, {2, 40, 4, 64}}, s{DT::F32, {2, 4, 32, 64}};
  int32_t has_g = 1, has_erase = 0, has_h0 = 1, varlen = 0;

  ffi::Error check(nlcore_dgd_problem_t* p) const {
    ffi::Error e = dgd_problem(q.any(), v.any(), beta.any(), cu.any(), has_g, has_erase, has_h0,
                               varlen, 0, 0.125f, p);
    if (e.failure()) return e;
    e = dgd_shapes(*p, k.any(), beta.any(), g.any(), erase.any(), h0.any(), o.span(), s.span());
    if (e.failure()) return e;
    size_t bytes = 0;
    nlcore_status_t st = nlcore_dgd_workspace_size(p, 0, &bytes);
    return st == NLCORE_STATUS_SUCCESS ? ffi::Error::Success() : api_error("dgd", st);
  }
};

void test_dgd() {
  nlcore_dgd_problem_t p;
  {
    Dgd d;
    ffi::Error e = d.check(&p);
    CHECK(e.success(), "valid dgd problem rejected: %s", e.message().c_str());
    CHECK(p.batch == 2 && p.seqlen == 40 && p.num_sequences == 2 && p.heads_qk == 2 &&
              p.heads_v == 4 && p.head_dim_k == 32 && p.head_dim_v == 64 &&
              p.dtype == NLCORE_DTYPE_BFLOAT16 && p.gate_dtype == NLCORE_DTYPE_FLOAT32 &&
              p.has_g == 1 && p.has_initial_state == 1 && p.chunk_size == 64,
          "dgd problem fields");
  }
  struct Case {
    const char* name;
    void (*edit)(Dgd&);
    const char* needle;
  };
  const Case cases[] = {
      {"q rank 3", [](Dgd& d) { d.q = Buf(DT::BF16, {2, 40, 64}); }, "rank 4"},
      {"k shape", [](Dgd& d) { d.k = Buf(DT::BF16, {2, 40, 2, 16}); }, "k must be [2, 40, 2, 32]"},
      {"k dtype", [](Dgd& d) { d.k = Buf(DT::F16, {2, 40, 2, 32}); }, "k must have q's dtype"},
      {"v dtype", [](Dgd& d) { d.v = Buf(DT::F32, {2, 40, 4, 64}); }, "v must have q's dtype"},
      {"beta shape", [](Dgd& d) { d.beta = Buf(DT::F32, {2, 40, 2}); }, "beta must be [2, 40, 4]"},
      {"g shape", [](Dgd& d) { d.g = Buf(DT::F32, {2, 41, 4}); }, "g must be [2, 40, 4]"},
      {"g dtype", [](Dgd& d) { d.g = Buf(DT::BF16, {2, 40, 4}); }, "beta's dtype"},
      {"erase missing", [](Dgd& d) { d.has_erase = 1; }, "erase must be [2, 40, 4]"},
      {"h0 shape", [](Dgd& d) { d.h0 = Buf(DT::F32, {2, 4, 32, 32}); }, "initial_state must be"},
      {"h0 dtype", [](Dgd& d) { d.h0 = Buf(DT::BF16, {2, 4, 32, 64}); }, "initial_state must be float32"},
      {"o shape", [](Dgd& d) { d.o = Buf(DT::BF16, {2, 40, 4, 32}); }, "o / dv must be"},
      {"final shape", [](Dgd& d) { d.s = Buf(DT::F32, {1, 4, 32, 64}); }, "final_state must be"},
      {"q float64", [](Dgd& d) {
         d.q = Buf(DT::F64, {2, 40, 2, 32}); d.k = Buf(DT::F64, {2, 40, 2, 32});
         d.v = Buf(DT::F64, {2, 40, 4, 64}); }, "dtype"},
      {"head dim 48", [](Dgd& d) {
         d.q = Buf(DT::BF16, {2, 40, 2, 48}); d.k = Buf(DT::BF16, {2, 40, 2, 48});
         d.h0 = Buf(DT::F32, {2, 4, 48, 64}); d.s = Buf(DT::F32, {2, 4, 48, 64}); }, "head_dim_k"},
      {"varlen with B 2", [](Dgd& d) { d.varlen = 1; d.cu = Buf(DT::S32, {3}); }, "batch"},
      {"cu_seqlens rank 2", [](Dgd& d) { d.varlen = 1; d.cu = Buf(DT::S32, {3, 1}); },
       "cu_seqlens must be rank 1"},
      {"heads_v not a multiple", [](Dgd& d) {
         d.v = Buf(DT::BF16, {2, 40, 3, 64}); d.beta = Buf(DT::F32, {2, 40, 3});
         d.g = Buf(DT::F32, {2, 40, 3}); d.h0 = Buf(DT::F32, {2, 3, 32, 64});
         d.o = Buf(DT::BF16, {2, 40, 3, 64}); d.s = Buf(DT::F32, {2, 3, 32, 64}); }, "heads_v"},
  };
  for (const Case& c : cases) {
    Dgd d;
    c.edit(d);
    ffi::Error e = d.check(&p);
    CHECK(e.failure() && e.errc() == ffi::ErrorCode::kInvalidArgument, "%s: accepted", c.name);
    CHECK(has(e, c.needle), "%s: message '%s' lacks '%s'", c.name, e.message().c_str(), c.needle);
  }
}

void test_newton_schulz() {
  const std::vector<float> muon = {3.4445f, -4.775f, 2.0315f, 3.4445f, -4.775f, 2.0315f};
  ffi::Span<const float> coef(muon.data(), muon.size());
  Buf G(DT::F32, {3, 96, 64});
  nlcore_ns_problem_t p;
  size_t bytes = 0;
  ffi::Error e = ns_problem(G.any(), G.span(), DT::F32, coef, 1e-7f, 1.0f, 0, 1, 0, &p, &bytes);
  CHECK(e.success(), "valid newton_schulz problem rejected: %s", e.message().c_str());
  CHECK(p.batch == 3 && p.rows == 96 && p.cols == 64 && p.steps == 2 &&
            p.compute_dtype == NLCORE_DTYPE_BFLOAT16 && p.io_dtype == NLCORE_DTYPE_FLOAT32,
        "newton_schulz problem fields");
  Buf G1(DT::F32, {64});
  e = ns_problem(G1.any(), G1.span(), DT::F32, coef, 1e-7f, 1.0f, 0, 1, 0, &p, &bytes);
  CHECK(has(e, "rank >= 2"), "rank 1: %s", e.message().c_str());
  Buf O(DT::F32, {3, 64, 96});
  e = ns_problem(G.any(), O.span(), DT::F32, coef, 1e-7f, 1.0f, 0, 1, 0, &p, &bytes);
  CHECK(has(e, "O must have G's shape"), "O shape: %s", e.message().c_str());
  e = ns_problem(G.any(), G.span(), DT::BF16, coef, 1e-7f, 1.0f, 0, 1, 0, &p, &bytes);
  CHECK(has(e, "O must have G's shape and dtype"), "O dtype: %s", e.message().c_str());
  ffi::Span<const float> five(muon.data(), 5);
  e = ns_problem(G.any(), G.span(), DT::F32, five, 1e-7f, 1.0f, 0, 1, 0, &p, &bytes);
  CHECK(has(e, "steps x 3"), "5 coefficients: %s", e.message().c_str());
  e = ns_problem(G.any(), G.span(), DT::F32, coef, 1e-7f, 1.0f, 0, 9, 0, &p, &bytes);
  CHECK(has(e, "compute_dtype"), "compute_dtype 9: %s", e.message().c_str());
  e = ns_problem(G.any(), G.span(), DT::F32, coef, -1.0f, 1.0f, 0, 1, 0, &p, &bytes);
  CHECK(has(e, "eps"), "eps -1: %s", e.message().c_str());
  Buf G64(DT::F64, {3, 96, 64});
  e = ns_problem(G64.any(), G64.span(), DT::F64, coef, 1e-7f, 1.0f, 0, 1, 0, &p, &bytes);
  CHECK(has(e, "io_dtype"), "float64: %s", e.message().c_str());
  e = ns_problem(G.any(), G.span(), DT::F32, coef, 1e-7f, 1.0f, 0, 1, 1 << 9, &p, &bytes);
  CHECK(has(e, "flags"), "unknown flag: %s", e.message().c_str());
}

// A valid MLP-memory-scan problem: B 2, T 40, H 2, D 32, F 64, per-sequence weights, an
// initial state with n as int32 [N, 2] (the int64 words).
struct Mlp {
  Buf x{DT::BF16, {2, 40, 2, 32}}, k{DT::BF16, {2, 40, 2, 32}}, v{DT::BF16, {2, 40, 2, 32}};
  Buf eta{DT::F32, {2, 40, 2}}, g{DT::F32, {0}};
  Buf w_in{DT::F32, {2, 2, 64, 32}}, w_out{DT::F32, {2, 2, 32, 64}};
  Buf p_in{DT::F32, {2, 2, 64, 32}}, p_out{DT::F32, {2, 2, 32, 64}};
  Buf acc_in{DT::F32, {2, 2, 64, 32}}, acc_out{DT::F32, {2, 2, 32, 64}}, acc_g{DT::F32, {2, 2}};
  Buf n{DT::S32, {2, 2}}, cu{DT::S32, {0}};
  MlpAttrs a{8, 0.5f, 0, 0, 1, 1, 1, 0, 1, 0, 16, 0};

  ffi::Error check(nlcore_memory_mlp_problem_t* p) const {
    const MlpIn in{x.any(),     k.any(),      v.any(),       eta.any(),    g.any(),
                   w_in.any(),  w_out.any(),  p_in.any(),    p_out.any(),  acc_in.any(),
                   acc_out.any(), acc_g.any(), n.any(),      cu.any()};
    int64_t F = 0;
    ffi::Error e = mlp_problem(in, a, p, &F);
    if (e.failure()) return e;
    size_t bytes = 0;
    nlcore_status_t st = nlcore_memory_mlp_workspace_size(p, 1, &bytes);
    return st == NLCORE_STATUS_SUCCESS ? ffi::Error::Success() : api_error("memory_mlp_scan", st);
  }
};

void test_memory_mlp() {
  nlcore_memory_mlp_problem_t p;
  {
    Mlp m;
    ffi::Error e = m.check(&p);
    CHECK(e.success(), "valid memory_mlp problem rejected: %s", e.message().c_str());
    CHECK(p.batch == 2 && p.seqlen == 40 && p.num_sequences == 2 && p.heads == 2 &&
              p.head_dim == 32 && p.hidden_dim == 64 && p.weights_shared == 0 &&
              p.has_initial_state == 1 && p.chunk_size == 8 && p.checkpoint_every == 16,
          "memory_mlp problem fields");
    m.n = Buf(DT::S64, {2});  // int64 [N] (jax_enable_x64) is accepted too
    CHECK(m.check(&p).success(), "int64 n rejected");
  }
  struct Case {
    const char* name;
    void (*edit)(Mlp&);
    const char* needle;
  };
  const Case cases[] = {
      {"x rank 3", [](Mlp& m) { m.x = Buf(DT::BF16, {2, 40, 64}); }, "x must be [B, T, H, D]"},
      {"k shape", [](Mlp& m) { m.k = Buf(DT::BF16, {2, 39, 2, 32}); }, "k must be [2, 40, 2, 32]"},
      {"v dtype", [](Mlp& m) { m.v = Buf(DT::F16, {2, 40, 2, 32}); }, "k and v must have x's dtype"},
      {"eta shape", [](Mlp& m) { m.eta = Buf(DT::F32, {2, 40}); }, "eta must be [2, 40, 2]"},
      {"eta dtype", [](Mlp& m) { m.eta = Buf(DT::BF16, {2, 40, 2}); }, "float32"},
      {"g missing", [](Mlp& m) { m.a.has_g = 1; }, "g must be [2, 40, 2]"},
      {"w_out shape", [](Mlp& m) { m.w_out = Buf(DT::F32, {2, 2, 64, 32}); }, "w_out must be [2, 2, 32, 64]"},
      {"p_in shape", [](Mlp& m) { m.p_in = Buf(DT::F32, {1, 2, 64, 32}); }, "p_in must be"},
      {"acc_g shape", [](Mlp& m) { m.acc_g = Buf(DT::F32, {2}); }, "acc_g must be [2, 2]"},
      {"n int32 [N]", [](Mlp& m) { m.n = Buf(DT::S32, {2}); }, "n must be int64 [N] or int32 [N, 2]"},
      {"acc_in dtype", [](Mlp& m) { m.acc_in = Buf(DT::BF16, {2, 2, 64, 32}); }, "must be float32"},
      {"shared weights with a state", [](Mlp& m) {
         m.w_in = Buf(DT::F32, {2, 64, 32}); m.w_out = Buf(DT::F32, {2, 32, 64}); }, "weights_shared"},
      {"chunk_size 0", [](Mlp& m) { m.a.chunk_size = 0; }, "chunk_size"},
      {"activation 7", [](Mlp& m) { m.a.activation = 7; }, "activation"},
      {"hidden 48", [](Mlp& m) {
         m.w_in = Buf(DT::F32, {2, 2, 48, 32}); m.w_out = Buf(DT::F32, {2, 2, 32, 48});
         m.p_in = Buf(DT::F32, {2, 2, 48, 32}); m.p_out = Buf(DT::F32, {2, 2, 32, 48});
         m.acc_in = Buf(DT::F32, {2, 2, 48, 32}); m.acc_out = Buf(DT::F32, {2, 2, 32, 48}); },
       "hidden_dim"},
      {"varlen with B 2", [](Mlp& m) { m.a.varlen = 1; m.cu = Buf(DT::S32, {3}); }, "batch"},
  };
  for (const Case& c : cases) {
    Mlp m;
    c.edit(m);
    ffi::Error e = m.check(&p);
    CHECK(e.failure() && e.errc() == ffi::ErrorCode::kInvalidArgument, "%s: accepted", c.name);
    CHECK(has(e, c.needle), "%s: message '%s' lacks '%s'", c.name, e.message().c_str(), c.needle);
  }
}

// A valid self-modifying problem: B 1, T 33, H 2, D 32, F 64, shared weights [4, H, F, D],
// b_alpha given, varlen with 3 sequences.
struct Sm {
  Buf x{DT::BF16, {1, 33, 2, 32}}, w_in{DT::F32, {4, 2, 64, 32}}, w_out{DT::F32, {4, 2, 32, 64}};
  Buf w_eta{DT::F32, {2, 32}}, w_alpha{DT::F32, {2, 32}}, b_eta{DT::F32, {0}};
  Buf b_alpha{DT::F32, {2}}, p_in{DT::F32, {0}}, p_out{DT::F32, {0}}, acc_in{DT::F32, {0}};
  Buf acc_out{DT::F32, {0}}, acc_g{DT::F32, {0}}, n{DT::S32, {0}}, cu{DT::S32, {4}};
  SmAttrs a{6, 0.1f, 0.5f, 0, 1, 0, 1, 0, 1, 16, 0};

  ffi::Error check(nlcore_self_modifying_problem_t* p) const {
    const SmIn in{x.any(),     w_in.any(),  w_out.any(),  w_eta.any(),   w_alpha.any(),
                  b_eta.any(), b_alpha.any(), p_in.any(), p_out.any(),   acc_in.any(),
                  acc_out.any(), acc_g.any(), n.any(),    cu.any()};
    int64_t F = 0;
    ffi::Error e = sm_problem(in, a, p, &F);
    if (e.failure()) return e;
    size_t bytes = 0;
    nlcore_status_t st = nlcore_self_modifying_workspace_size(p, 1, &bytes);
    return st == NLCORE_STATUS_SUCCESS ? ffi::Error::Success()
                                       : api_error("self_modifying_scan", st);
  }
};

void test_self_modifying() {
  nlcore_self_modifying_problem_t p;
  {
    Sm m;
    ffi::Error e = m.check(&p);
    CHECK(e.success(), "valid self_modifying problem rejected: %s", e.message().c_str());
    CHECK(p.batch == 1 && p.seqlen == 33 && p.num_sequences == 3 && p.hidden_dim == 64 &&
              p.weights_shared == 1 && p.chunk_size == 6,
          "self_modifying problem fields");
  }
  struct Case {
    const char* name;
    void (*edit)(Sm&);
    const char* needle;
  };
  const Case cases[] = {
      {"w_in 3 memories", [](Sm& m) { m.w_in = Buf(DT::F32, {3, 2, 64, 32}); }, "w_in must be [4, 2, 64, 32]"},
      {"w_out shape", [](Sm& m) { m.w_out = Buf(DT::F32, {4, 2, 64, 32}); }, "w_out must be [4, 2, 32, 64]"},
      {"w_eta shape", [](Sm& m) { m.w_eta = Buf(DT::F32, {2, 16}); }, "w_eta must be [2, 32]"},
      {"b_alpha shape", [](Sm& m) { m.b_alpha = Buf(DT::F32, {3}); }, "b_alpha must be [2]"},
      {"b_eta missing", [](Sm& m) { m.a.has_b_eta = 1; }, "b_eta must be [2]"},
      {"w_alpha dtype", [](Sm& m) { m.w_alpha = Buf(DT::BF16, {2, 32}); }, "must be float32"},
      {"state missing", [](Sm& m) { m.a.has_initial_state = 1; }, "p_in must be [4, 3, 2, 64, 32]"},
      {"eta_max 0", [](Sm& m) { m.a.eta_max = 0.0f; }, "eta_max"},
      {"x float64", [](Sm& m) { m.x = Buf(DT::F64, {1, 33, 2, 32}); }, "dtype"},
      {"cu rank 2", [](Sm& m) { m.cu = Buf(DT::S32, {4, 1}); }, "cu_seqlens must be rank 1"},
  };
  for (const Case& c : cases) {
    Sm m;
    c.edit(m);
    ffi::Error e = m.check(&p);
    CHECK(e.failure() && e.errc() == ffi::ErrorCode::kInvalidArgument, "%s: accepted", c.name);
    CHECK(has(e, c.needle), "%s: message '%s' lacks '%s'", c.name, e.message().c_str(), c.needle);
  }
}

}  // namespace

int main() {
  test_self_modifying();
  test_dgd();
  test_newton_schulz();
  test_memory_mlp();
  return nlcore_test::check_summary();
}
