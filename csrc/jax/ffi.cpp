// XLA FFI handlers over the nlcore C API (issue 10): the forward and backward of DGD, the MLP
// memory scan and the self-modifying scan, and the Newton–Schulz forward, as typed XLA custom
// calls for JAX on CUDA, so every op of `nlcore.jax` runs under `jax.jit`
// (python/nlcore/_jax_ffi.py registers them with jax.ffi.register_ffi_target). Built as
// libnlcore_jax_ffi.so against libnlcore_cuda.so and the FFI headers of jaxlib
// (jax.ffi.include_dir()); no torch, no Python.
//
// Every optional tensor of the C API (g, erase, initial_state, cu_seqlens, grad_final_state)
// is always an operand: the has_* attributes say whether it is real, and an absent one is a
// zero-size placeholder. Gradients of absent inputs are zero-size results. Shapes come from the
// operands (q [B, T, H, K], v [B, T, HV, V]); the C API validates every field and its message
// comes back as the custom call's error. Workspace: XLA's scratch allocator, 256-byte aligned.
// Empty problems (B = 0 or T = 0) never reach here: python/nlcore/_jax_ffi.py answers them
// without a custom call, so this library needs no CUDA runtime calls of its own (no libcudart).
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "nlcore/nlcore.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr size_t kWorkspaceAlign = 256;

ffi::Error api_error(const char* what, nlcore_status_t st) {
  std::string msg = std::string("nlcore ") + what + ": " + nlcore_status_string(st) + ": " +
                    nlcore_last_error_message();
  return st == NLCORE_STATUS_INVALID_VALUE || st == NLCORE_STATUS_NOT_SUPPORTED
             ? ffi::Error::InvalidArgument(msg)
             : ffi::Error::Internal(msg);
}

// FFI element type -> nlcore dtype (INVALID_VALUE-worthy types map to FLOAT64, which every
// CUDA entry point rejects with a message naming the field).
nlcore_dtype_t to_nlcore(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::F32: return NLCORE_DTYPE_FLOAT32;
    case ffi::DataType::BF16: return NLCORE_DTYPE_BFLOAT16;
    case ffi::DataType::F16: return NLCORE_DTYPE_FLOAT16;
    case ffi::DataType::S32: return NLCORE_DTYPE_INT32;
    case ffi::DataType::S64: return NLCORE_DTYPE_INT64;
    default: return NLCORE_DTYPE_FLOAT64;
  }
}

const void* data_if(const ffi::AnyBuffer& b, int32_t present) {
  return present ? b.untyped_data() : nullptr;
}
void* data_if(ffi::Result<ffi::AnyBuffer>& b, int32_t present) {
  return present ? b->untyped_data() : nullptr;
}

// The problem of one DGD call from its operands and attributes; an error names what is wrong.
ffi::Error dgd_problem(const ffi::AnyBuffer& q, const ffi::AnyBuffer& v,
                       const ffi::AnyBuffer& beta, const ffi::AnyBuffer& cu, int32_t has_g,
                       int32_t has_erase, int32_t has_initial_state, int32_t varlen,
                       int32_t read_before, float scale, nlcore_dgd_problem_t* p) {
  auto qd = q.dimensions();
  auto vd = v.dimensions();
  if (qd.size() != 4 || vd.size() != 4)
    return ffi::Error::InvalidArgument(
        "nlcore dgd: q and v must be rank 4 ([B, T, H, K] and [B, T, HV, V]), got ranks " +
        std::to_string(qd.size()) + " and " + std::to_string(vd.size()));
  if (varlen && cu.dimensions().size() != 1)
    return ffi::Error::InvalidArgument("nlcore dgd: cu_seqlens must be rank 1");
  *p = nlcore_dgd_problem_t{};
  p->batch = qd[0];
  p->seqlen = qd[1];
  p->num_sequences = varlen ? cu.dimensions()[0] - 1 : qd[0];
  p->heads_qk = static_cast<int32_t>(qd[2]);
  p->heads_v = static_cast<int32_t>(vd[2]);
  p->head_dim_k = static_cast<int32_t>(qd[3]);
  p->head_dim_v = static_cast<int32_t>(vd[3]);
  p->dtype = to_nlcore(q.element_type());
  if (to_nlcore(v.element_type()) != p->dtype)
    return ffi::Error::InvalidArgument("nlcore dgd: v must have q's dtype");
  p->gate_dtype = to_nlcore(beta.element_type());
  p->has_g = has_g;
  p->has_erase = has_erase;
  p->has_initial_state = has_initial_state;
  p->read_before = read_before;
  p->scale = scale;
  p->chunk_size = 64;  // the CUDA kernels' chunk (an implementation detail, as in the torch op)
  p->cu_seqlens = varlen ? cu.untyped_data() : nullptr;
  p->cu_seqlens_dtype = varlen ? to_nlcore(cu.element_type()) : NLCORE_DTYPE_INT32;
  p->flags = NLCORE_DGD_FLAG_DEFAULT;
  return ffi::Error::Success();
}

// Every operand's shape against the problem: the C API trusts its pointers' extents, so a
// mismatched buffer must stop here (an error naming it), never reach a kernel.
ffi::Error expect_dims(const char* op, const char* name, ffi::Span<const int64_t> got,
                       const std::vector<int64_t>& want) {
  bool same = got.size() == want.size();
  for (size_t i = 0; same && i < got.size(); ++i) same = got[i] == want[i];
  if (same) return ffi::Error::Success();
  auto show = [](auto b, auto e) {
    std::string s = "[";
    for (auto it = b; it != e; ++it) s += (it == b ? "" : ", ") + std::to_string(*it);
    return s + "]";
  };
  return ffi::Error::InvalidArgument(std::string("nlcore ") + op + ": " + name + " must be " +
                                     show(want.begin(), want.end()) + ", got " +
                                     show(got.begin(), got.end()));
}

// DGD's operands (and results) against q / v's problem.
ffi::Error dgd_shapes(const nlcore_dgd_problem_t& p, const ffi::AnyBuffer& k,
                      const ffi::AnyBuffer& beta, const ffi::AnyBuffer& g,
                      const ffi::AnyBuffer& erase, const ffi::AnyBuffer& h0,
                      ffi::Span<const int64_t> o_dims, ffi::Span<const int64_t> s_dims) {
  const int64_t B = p.batch, T = p.seqlen, N = p.num_sequences, HV = p.heads_v;
  const int64_t K = p.head_dim_k, V = p.head_dim_v;
  // one element type per role, as the C API reads them (q's for k, v; beta's for the gates)
  if (to_nlcore(k.element_type()) != p.dtype)
    return ffi::Error::InvalidArgument("nlcore dgd: k must have q's dtype");
  if ((p.has_g && to_nlcore(g.element_type()) != p.gate_dtype) ||
      (p.has_erase && to_nlcore(erase.element_type()) != p.gate_dtype))
    return ffi::Error::InvalidArgument("nlcore dgd: g and erase must have beta's dtype");
  if (p.has_initial_state && h0.element_type() != ffi::DataType::F32)
    return ffi::Error::InvalidArgument("nlcore dgd: initial_state must be float32");
  ffi::Error e = expect_dims("dgd", "k", k.dimensions(), {B, T, p.heads_qk, K});
  if (e.success()) e = expect_dims("dgd", "beta", beta.dimensions(), {B, T, HV});
  if (e.success() && p.has_g) e = expect_dims("dgd", "g", g.dimensions(), {B, T, HV});
  if (e.success() && p.has_erase) e = expect_dims("dgd", "erase", erase.dimensions(), {B, T, HV});
  if (e.success() && p.has_initial_state)
    e = expect_dims("dgd", "initial_state", h0.dimensions(), {N, HV, K, V});
  if (e.success()) e = expect_dims("dgd", "o / dv", o_dims, {B, T, HV, V});
  if (e.success() && s_dims.size() != 0)
    e = expect_dims("dgd", "final_state", s_dims, {N, HV, K, V});
  return e;
}

// `bytes` of device workspace from XLA's scratch allocator (none for 0 bytes).
ffi::Error scratch_alloc(ffi::ScratchAllocator& scratch, const char* op, size_t bytes,
                         void** ws) {
  *ws = nullptr;
  if (bytes == 0) return ffi::Error::Success();
  std::optional<void*> got = scratch.Allocate(bytes, kWorkspaceAlign);
  if (!got.has_value())
    return ffi::Error(ffi::ErrorCode::kResourceExhausted, std::string("nlcore ") + op +
                                                              ": cannot allocate " +
                                                              std::to_string(bytes) +
                                                              " bytes of workspace");
  *ws = *got;
  return ffi::Error::Success();
}

ffi::Error workspace(ffi::ScratchAllocator& scratch, const nlcore_dgd_problem_t& p,
                     int32_t backward, void** ws, size_t* bytes) {
  nlcore_status_t st = nlcore_dgd_workspace_size(&p, backward, bytes);
  if (st != NLCORE_STATUS_SUCCESS) return api_error("dgd", st);
  return scratch_alloc(scratch, "dgd", *bytes, ws);
}

ffi::Error DgdForwardImpl(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer q,
                          ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer beta,
                          ffi::AnyBuffer g, ffi::AnyBuffer erase, ffi::AnyBuffer h0,
                          ffi::AnyBuffer cu, ffi::Result<ffi::AnyBuffer> o,
                          ffi::Result<ffi::AnyBuffer> final_state, int32_t has_g,
                          int32_t has_erase, int32_t has_initial_state, int32_t varlen,
                          int32_t read_before, float scale) {
  nlcore_dgd_problem_t p;
  ffi::Error e = dgd_problem(q, v, beta, cu, has_g, has_erase, has_initial_state, varlen,
                             read_before, scale, &p);
  if (e.failure()) return e;
  if ((e = dgd_shapes(p, k, beta, g, erase, h0, o->dimensions(), final_state->dimensions()))
          .failure())
    return e;
  if (to_nlcore(o->element_type()) != p.dtype ||
      final_state->element_type() != ffi::DataType::F32)
    return ffi::Error::InvalidArgument("nlcore dgd: o must have q's dtype, final_state float32");
  nlcore_dgd_tensors_t t{};
  t.q = q.untyped_data();
  t.k = k.untyped_data();
  t.v = v.untyped_data();
  t.beta = beta.untyped_data();
  t.g = data_if(g, has_g);
  t.erase = data_if(erase, has_erase);
  t.initial_state = data_if(h0, has_initial_state);
  t.o = o->untyped_data();
  t.final_state = final_state->untyped_data();
  void* ws = nullptr;
  size_t bytes = 0;
  if ((e = workspace(scratch, p, 0, &ws, &bytes)).failure()) return e;
  nlcore_status_t st = nlcore_dgd_forward(&p, &t, ws, bytes, stream);
  return st == NLCORE_STATUS_SUCCESS ? ffi::Error::Success() : api_error("dgd", st);
}

ffi::Error DgdBackwardImpl(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer q,
                           ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer beta,
                           ffi::AnyBuffer g, ffi::AnyBuffer erase, ffi::AnyBuffer h0,
                           ffi::AnyBuffer cu, ffi::AnyBuffer grad_o,
                           ffi::AnyBuffer grad_final_state, ffi::Result<ffi::AnyBuffer> dq,
                           ffi::Result<ffi::AnyBuffer> dk, ffi::Result<ffi::AnyBuffer> dv,
                           ffi::Result<ffi::AnyBuffer> dbeta, ffi::Result<ffi::AnyBuffer> dg,
                           ffi::Result<ffi::AnyBuffer> derase, ffi::Result<ffi::AnyBuffer> dh0,
                           int32_t has_g, int32_t has_erase, int32_t has_initial_state,
                           int32_t varlen, int32_t read_before, float scale,
                           int32_t has_grad_final_state) {
  nlcore_dgd_problem_t p;
  ffi::Error e = dgd_problem(q, v, beta, cu, has_g, has_erase, has_initial_state, varlen,
                             read_before, scale, &p);
  if (e.failure()) return e;
  if ((e = dgd_shapes(p, k, beta, g, erase, h0, grad_o.dimensions(),
                      has_grad_final_state ? grad_final_state.dimensions()
                                           : ffi::Span<const int64_t>()))
          .failure())
    return e;
  if ((e = expect_dims("dgd", "dq", dq->dimensions(),
                       {p.batch, p.seqlen, p.heads_qk, p.head_dim_k})).failure() ||
      (e = expect_dims("dgd", "dv", dv->dimensions(),
                       {p.batch, p.seqlen, p.heads_v, p.head_dim_v})).failure() ||
      (e = expect_dims("dgd", "dk", dk->dimensions(),
                       {p.batch, p.seqlen, p.heads_qk, p.head_dim_k})).failure() ||
      (e = expect_dims("dgd", "dbeta", dbeta->dimensions(),
                       {p.batch, p.seqlen, p.heads_v})).failure() ||
      (has_g && (e = expect_dims("dgd", "dg", dg->dimensions(),
                                 {p.batch, p.seqlen, p.heads_v})).failure()) ||
      (has_erase && (e = expect_dims("dgd", "derase", derase->dimensions(),
                                     {p.batch, p.seqlen, p.heads_v})).failure()) ||
      (has_initial_state &&
       (e = expect_dims("dgd", "dinitial_state", dh0->dimensions(),
                        {p.num_sequences, p.heads_v, p.head_dim_k, p.head_dim_v})).failure()))
    return e;
  if (to_nlcore(grad_o.element_type()) != p.dtype)
    return ffi::Error::InvalidArgument("nlcore dgd: grad_o must have q's dtype");
  if (to_nlcore(dq->element_type()) != p.dtype || to_nlcore(dk->element_type()) != p.dtype ||
      to_nlcore(dv->element_type()) != p.dtype)
    return ffi::Error::InvalidArgument("nlcore dgd: dq, dk, dv must have q's dtype");
  if (to_nlcore(dbeta->element_type()) != p.gate_dtype ||
      (has_g && to_nlcore(dg->element_type()) != p.gate_dtype) ||
      (has_erase && to_nlcore(derase->element_type()) != p.gate_dtype) ||
      (has_initial_state && dh0->element_type() != ffi::DataType::F32) ||
      (has_grad_final_state && grad_final_state.element_type() != ffi::DataType::F32))
    return ffi::Error::InvalidArgument(
        "nlcore dgd: gate gradients must have beta's dtype, state gradients float32");
  nlcore_dgd_tensors_t t{};
  t.q = q.untyped_data();
  t.k = k.untyped_data();
  t.v = v.untyped_data();
  t.beta = beta.untyped_data();
  t.g = data_if(g, has_g);
  t.erase = data_if(erase, has_erase);
  t.initial_state = data_if(h0, has_initial_state);
  nlcore_dgd_grads_t gr{};
  gr.grad_o = grad_o.untyped_data();
  gr.grad_final_state = data_if(grad_final_state, has_grad_final_state);
  gr.dq = dq->untyped_data();
  gr.dk = dk->untyped_data();
  gr.dv = dv->untyped_data();
  gr.dbeta = dbeta->untyped_data();
  gr.dg = data_if(dg, has_g);
  gr.derase = data_if(derase, has_erase);
  gr.dinitial_state = data_if(dh0, has_initial_state);
  void* ws = nullptr;
  size_t bytes = 0;
  if ((e = workspace(scratch, p, 1, &ws, &bytes)).failure()) return e;
  nlcore_status_t st = nlcore_dgd_backward(&p, &t, &gr, ws, bytes, stream);
  return st == NLCORE_STATUS_SUCCESS ? ffi::Error::Success() : api_error("dgd backward", st);
}

// Newton–Schulz forward (nlcore/newton_schulz.h): G [..., rows, cols] -> O of G's shape and
// dtype. coefficients: `steps` (a, b, c) triples, flattened.
// The Newton–Schulz problem of G (O: G's shape and dtype), validated by the C API; its
// workspace size in *bytes.
ffi::Error ns_problem(const ffi::AnyBuffer& G, ffi::Span<const int64_t> o_dims,
                      ffi::DataType o_type, ffi::Span<const float> coefficients, float eps,
                      float norm_scale, int32_t norm_additive, int32_t compute_dtype,
                      int32_t flags, nlcore_ns_problem_t* p, size_t* bytes) {
  auto gd = G.dimensions();
  if (gd.size() < 2)
    return ffi::Error::InvalidArgument("nlcore newton_schulz: G must have rank >= 2, got " +
                                       std::to_string(gd.size()));
  bool same = o_dims.size() == gd.size();
  for (size_t i = 0; same && i < gd.size(); ++i) same = o_dims[i] == gd[i];
  if (!same || o_type != G.element_type())
    return ffi::Error::InvalidArgument("nlcore newton_schulz: O must have G's shape and dtype");
  if (coefficients.size() == 0 || coefficients.size() % 3 != 0)
    return ffi::Error::InvalidArgument(
        "nlcore newton_schulz: coefficients must hold steps x 3 values, got " +
        std::to_string(coefficients.size()));
  *p = nlcore_ns_problem_t{};
  p->rows = gd[gd.size() - 2];
  p->cols = gd[gd.size() - 1];
  p->batch = 1;
  for (size_t i = 0; i + 2 < gd.size(); ++i) p->batch *= gd[i];
  p->io_dtype = to_nlcore(G.element_type());
  p->compute_dtype = static_cast<nlcore_dtype_t>(compute_dtype);
  p->steps = static_cast<int32_t>(coefficients.size() / 3);
  p->coefficients = coefficients.begin();
  p->eps = eps;
  p->norm_scale = norm_scale;
  p->norm_additive = norm_additive;
  p->flags = static_cast<uint32_t>(flags);
  nlcore_status_t st = nlcore_newton_schulz_workspace_size(p, bytes);
  return st == NLCORE_STATUS_SUCCESS ? ffi::Error::Success() : api_error("newton_schulz", st);
}

ffi::Error NewtonSchulzForwardImpl(cudaStream_t stream, ffi::ScratchAllocator scratch,
                                   ffi::AnyBuffer G, ffi::Result<ffi::AnyBuffer> O,
                                   ffi::Span<const float> coefficients, float eps,
                                   float norm_scale, int32_t norm_additive,
                                   int32_t compute_dtype, int32_t flags) {
  nlcore_ns_problem_t p;
  size_t bytes = 0;
  ffi::Error e = ns_problem(G, O->dimensions(), O->element_type(), coefficients, eps,
                            norm_scale, norm_additive, compute_dtype, flags, &p, &bytes);
  void* ws = nullptr;
  if (e.failure() || (e = scratch_alloc(scratch, "newton_schulz", bytes, &ws)).failure())
    return e;
  nlcore_status_t st =
      nlcore_newton_schulz_forward(&p, G.untyped_data(), O->untyped_data(), ws, bytes, stream);
  return st == NLCORE_STATUS_SUCCESS ? ffi::Error::Success() : api_error("newton_schulz", st);
}


// ---- MLP memory scan (nlcore/memory_mlp.h) ------------------------------------------------------
// Operands: x, k, v, eta, g, w_in, w_out, p_in, p_out, acc_in, acc_out, acc_g, n, cu_seqlens
// (absent ones zero-size placeholders). The state's token counts n are INT64 for the C API;
// JAX without jax_enable_x64 has no 64-bit arrays, so n (and n_final) may come as int32
// [N, 2]: the little-endian words of each int64 (low = n, high = 0), which is the same memory.
struct MlpIn {
  const ffi::AnyBuffer &x, &k, &v, &eta, &g, &w_in, &w_out, &p_in, &p_out, &acc_in, &acc_out,
      &acc_g, &n, &cu;
};

struct MlpAttrs {
  int64_t chunk_size;
  float momentum;
  int32_t activation, objective, residual, self_target, dgd_erase, has_g, has_initial_state,
      varlen;
  int64_t checkpoint_every;
  int32_t flags;
};

// n / n_final as the C API's INT64 [N]: int64 [N] or int32 [N, 2].
bool int64_counts(ffi::DataType t, ffi::Span<const int64_t> d, int64_t N) {
  return (t == ffi::DataType::S64 && d.size() == 1 && d[0] == N) ||
         (t == ffi::DataType::S32 && d.size() == 2 && d[0] == N && d[1] == 2);
}

ffi::Error mlp_problem(const MlpIn& in, const MlpAttrs& a, nlcore_memory_mlp_problem_t* p,
                       int64_t* F) {
  const char* op = "memory_mlp_scan";
  auto xd = in.x.dimensions();
  auto wd = in.w_in.dimensions();
  if (xd.size() != 4)
    return ffi::Error::InvalidArgument("nlcore memory_mlp_scan: x must be [B, T, H, D], rank " +
                                       std::to_string(xd.size()));
  if (wd.size() != 3 && wd.size() != 4)
    return ffi::Error::InvalidArgument(
        "nlcore memory_mlp_scan: w_in must be [H, F, D] or [N, H, F, D]");
  if (a.varlen && in.cu.dimensions().size() != 1)
    return ffi::Error::InvalidArgument("nlcore memory_mlp_scan: cu_seqlens must be rank 1");
  const int64_t B = xd[0], T = xd[1], H = xd[2], D = xd[3];
  const int64_t N = a.varlen ? in.cu.dimensions()[0] - 1 : B;
  const bool shared = wd.size() == 3;
  *F = wd[wd.size() - 2];
  *p = nlcore_memory_mlp_problem_t{};
  p->batch = B;
  p->seqlen = T;
  p->num_sequences = N;
  p->heads = static_cast<int32_t>(H);
  p->head_dim = static_cast<int32_t>(D);
  p->hidden_dim = static_cast<int32_t>(*F);
  p->dtype = to_nlcore(in.x.element_type());
  p->gate_dtype = to_nlcore(in.eta.element_type());
  p->chunk_size = a.chunk_size;
  p->momentum = a.momentum;
  p->activation = a.activation;
  p->objective = a.objective;
  p->residual = a.residual;
  p->self_target = a.self_target;
  p->dgd_erase = a.dgd_erase;
  p->has_g = a.has_g;
  p->weights_shared = shared ? 1 : 0;
  p->has_initial_state = a.has_initial_state;
  p->checkpoint_every = a.checkpoint_every;
  p->cu_seqlens = a.varlen ? in.cu.untyped_data() : nullptr;
  p->cu_seqlens_dtype = a.varlen ? to_nlcore(in.cu.element_type()) : NLCORE_DTYPE_INT32;
  p->flags = static_cast<uint32_t>(a.flags);
  // every operand against the problem
  const int64_t Fv = *F;
  const std::vector<int64_t> tok = {B, T, H, D}, gate = {B, T, H};
  ffi::Error e = expect_dims(op, "k", in.k.dimensions(), tok);
  if (e.success()) e = expect_dims(op, "v", in.v.dimensions(), tok);
  if (e.success()) e = expect_dims(op, "eta", in.eta.dimensions(), gate);
  if (e.success() && a.has_g) e = expect_dims(op, "g", in.g.dimensions(), gate);
  if (e.success())
    e = shared ? expect_dims(op, "w_in", wd, {H, Fv, D})
               : expect_dims(op, "w_in", wd, {N, H, Fv, D});
  if (e.success())
    e = shared ? expect_dims(op, "w_out", in.w_out.dimensions(), {H, D, Fv})
               : expect_dims(op, "w_out", in.w_out.dimensions(), {N, H, D, Fv});
  if (e.success() && a.has_initial_state) {
    e = expect_dims(op, "p_in", in.p_in.dimensions(), {N, H, Fv, D});
    if (e.success()) e = expect_dims(op, "p_out", in.p_out.dimensions(), {N, H, D, Fv});
    if (e.success()) e = expect_dims(op, "acc_in", in.acc_in.dimensions(), {N, H, Fv, D});
    if (e.success()) e = expect_dims(op, "acc_out", in.acc_out.dimensions(), {N, H, D, Fv});
    if (e.success()) e = expect_dims(op, "acc_g", in.acc_g.dimensions(), {N, H});
    if (e.success() && !int64_counts(in.n.element_type(), in.n.dimensions(), N))
      e = ffi::Error::InvalidArgument("nlcore memory_mlp_scan: n must be int64 [N] or int32 "
                                      "[N, 2] (the int64 words), N = " + std::to_string(N));
  }
  if (e.failure()) return e;
  if (to_nlcore(in.k.element_type()) != p->dtype || to_nlcore(in.v.element_type()) != p->dtype)
    return ffi::Error::InvalidArgument("nlcore memory_mlp_scan: k and v must have x's dtype");
  const ffi::AnyBuffer* f32[] = {&in.eta, &in.w_in, &in.w_out};
  for (const ffi::AnyBuffer* b : f32)
    if (b->element_type() != ffi::DataType::F32)
      return ffi::Error::InvalidArgument(
          "nlcore memory_mlp_scan: eta, g, the weights and the state must be float32");
  if (a.has_g && in.g.element_type() != ffi::DataType::F32)
    return ffi::Error::InvalidArgument("nlcore memory_mlp_scan: g must be float32");
  if (a.has_initial_state)
    for (const ffi::AnyBuffer* b : {&in.p_in, &in.p_out, &in.acc_in, &in.acc_out, &in.acc_g})
      if (b->element_type() != ffi::DataType::F32)
        return ffi::Error::InvalidArgument(
            "nlcore memory_mlp_scan: the initial state's buffers must be float32");
  return ffi::Error::Success();
}

void mlp_tensors(const MlpIn& in, const MlpAttrs& a, nlcore_memory_mlp_tensors_t* t) {
  *t = nlcore_memory_mlp_tensors_t{};
  t->x = in.x.untyped_data();
  t->k = in.k.untyped_data();
  t->v = in.v.untyped_data();
  t->eta = in.eta.untyped_data();
  t->g = data_if(in.g, a.has_g);
  t->w_in = in.w_in.untyped_data();
  t->w_out = in.w_out.untyped_data();
  t->p_in = data_if(in.p_in, a.has_initial_state);
  t->p_out = data_if(in.p_out, a.has_initial_state);
  t->acc_in = data_if(in.acc_in, a.has_initial_state);
  t->acc_out = data_if(in.acc_out, a.has_initial_state);
  t->acc_g = data_if(in.acc_g, a.has_initial_state);
  t->n = data_if(in.n, a.has_initial_state);
}

// A result buffer's shape and dtype (the C API writes exactly that many elements).
ffi::Error expect_result(const char* op, const char* name, ffi::Result<ffi::AnyBuffer>& r,
                         const std::vector<int64_t>& dims, nlcore_dtype_t dtype) {
  ffi::Error e = expect_dims(op, name, r->dimensions(), dims);
  if (e.success() && to_nlcore(r->element_type()) != dtype)
    e = ffi::Error::InvalidArgument(std::string("nlcore ") + op + ": " + name +
                                    " has the wrong dtype");
  return e;
}

ffi::Error MemoryMlpForwardImpl(
    cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer x, ffi::AnyBuffer k,
    ffi::AnyBuffer v, ffi::AnyBuffer eta, ffi::AnyBuffer g, ffi::AnyBuffer w_in,
    ffi::AnyBuffer w_out, ffi::AnyBuffer p_in, ffi::AnyBuffer p_out, ffi::AnyBuffer acc_in,
    ffi::AnyBuffer acc_out, ffi::AnyBuffer acc_g, ffi::AnyBuffer n, ffi::AnyBuffer cu,
    ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> w_in_f,
    ffi::Result<ffi::AnyBuffer> w_out_f, ffi::Result<ffi::AnyBuffer> p_in_f,
    ffi::Result<ffi::AnyBuffer> p_out_f, ffi::Result<ffi::AnyBuffer> acc_in_f,
    ffi::Result<ffi::AnyBuffer> acc_out_f, ffi::Result<ffi::AnyBuffer> acc_g_f,
    ffi::Result<ffi::AnyBuffer> n_f, int64_t chunk_size, float momentum, int32_t activation,
    int32_t objective, int32_t residual, int32_t self_target, int32_t dgd_erase, int32_t has_g,
    int32_t has_initial_state, int32_t varlen, int64_t checkpoint_every, int32_t flags) {
  const MlpIn in{x, k, v, eta, g, w_in, w_out, p_in, p_out, acc_in, acc_out, acc_g, n, cu};
  const MlpAttrs a{chunk_size, momentum,  activation, objective,       residual, self_target,
                   dgd_erase,  has_g,     has_initial_state, varlen, checkpoint_every, flags};
  nlcore_memory_mlp_problem_t p;
  int64_t F = 0;
  ffi::Error e = mlp_problem(in, a, &p, &F);
  if (e.failure()) return e;
  const int64_t N = p.num_sequences, H = p.heads, D = p.head_dim;
  const nlcore_dtype_t f32 = NLCORE_DTYPE_FLOAT32;
  if ((e = expect_result("memory_mlp_scan", "y", y, {p.batch, p.seqlen, H, D}, p.dtype)).failure() ||
      (e = expect_result("memory_mlp_scan", "w_in_final", w_in_f, {N, H, F, D}, f32)).failure() ||
      (e = expect_result("memory_mlp_scan", "w_out_final", w_out_f, {N, H, D, F}, f32)).failure() ||
      (e = expect_result("memory_mlp_scan", "p_in_final", p_in_f, {N, H, F, D}, f32)).failure() ||
      (e = expect_result("memory_mlp_scan", "p_out_final", p_out_f, {N, H, D, F}, f32)).failure() ||
      (e = expect_result("memory_mlp_scan", "acc_in_final", acc_in_f, {N, H, F, D}, f32)).failure() ||
      (e = expect_result("memory_mlp_scan", "acc_out_final", acc_out_f, {N, H, D, F}, f32)).failure() ||
      (e = expect_result("memory_mlp_scan", "acc_g_final", acc_g_f, {N, H}, f32)).failure())
    return e;
  if (!int64_counts(n_f->element_type(), n_f->dimensions(), N))
    return ffi::Error::InvalidArgument(
        "nlcore memory_mlp_scan: n_final must be int64 [N] or int32 [N, 2]");
  nlcore_memory_mlp_tensors_t t;
  mlp_tensors(in, a, &t);
  t.y = y->untyped_data();
  t.w_in_final = w_in_f->untyped_data();
  t.w_out_final = w_out_f->untyped_data();
  t.p_in_final = p_in_f->untyped_data();
  t.p_out_final = p_out_f->untyped_data();
  t.acc_in_final = acc_in_f->untyped_data();
  t.acc_out_final = acc_out_f->untyped_data();
  t.acc_g_final = acc_g_f->untyped_data();
  t.n_final = n_f->untyped_data();
  size_t bytes = 0;
  nlcore_status_t st = nlcore_memory_mlp_workspace_size(&p, 0, &bytes);
  if (st != NLCORE_STATUS_SUCCESS) return api_error("memory_mlp_scan", st);
  void* ws = nullptr;
  if ((e = scratch_alloc(scratch, "memory_mlp_scan", bytes, &ws)).failure()) return e;
  st = nlcore_memory_mlp_forward(&p, &t, ws, bytes, stream);
  return st == NLCORE_STATUS_SUCCESS ? ffi::Error::Success() : api_error("memory_mlp_scan", st);
}

ffi::Error MemoryMlpBackwardImpl(
    cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer x, ffi::AnyBuffer k,
    ffi::AnyBuffer v, ffi::AnyBuffer eta, ffi::AnyBuffer g, ffi::AnyBuffer w_in,
    ffi::AnyBuffer w_out, ffi::AnyBuffer p_in, ffi::AnyBuffer p_out, ffi::AnyBuffer acc_in,
    ffi::AnyBuffer acc_out, ffi::AnyBuffer acc_g, ffi::AnyBuffer n, ffi::AnyBuffer cu,
    ffi::AnyBuffer grad_y, ffi::AnyBuffer grad_w_in, ffi::AnyBuffer grad_w_out,
    ffi::AnyBuffer grad_p_in, ffi::AnyBuffer grad_p_out, ffi::AnyBuffer grad_acc_in,
    ffi::AnyBuffer grad_acc_out, ffi::AnyBuffer grad_acc_g, ffi::Result<ffi::AnyBuffer> dx,
    ffi::Result<ffi::AnyBuffer> dk, ffi::Result<ffi::AnyBuffer> dv,
    ffi::Result<ffi::AnyBuffer> deta, ffi::Result<ffi::AnyBuffer> dg,
    ffi::Result<ffi::AnyBuffer> dw_in, ffi::Result<ffi::AnyBuffer> dw_out,
    ffi::Result<ffi::AnyBuffer> dp_in, ffi::Result<ffi::AnyBuffer> dp_out,
    ffi::Result<ffi::AnyBuffer> dacc_in, ffi::Result<ffi::AnyBuffer> dacc_out,
    ffi::Result<ffi::AnyBuffer> dacc_g, int64_t chunk_size, float momentum, int32_t activation,
    int32_t objective, int32_t residual, int32_t self_target, int32_t dgd_erase, int32_t has_g,
    int32_t has_initial_state, int32_t varlen, int64_t checkpoint_every, int32_t flags) {
  const MlpIn in{x, k, v, eta, g, w_in, w_out, p_in, p_out, acc_in, acc_out, acc_g, n, cu};
  const MlpAttrs a{chunk_size, momentum,  activation, objective,       residual, self_target,
                   dgd_erase,  has_g,     has_initial_state, varlen, checkpoint_every, flags};
  nlcore_memory_mlp_problem_t p;
  int64_t F = 0;
  ffi::Error e = mlp_problem(in, a, &p, &F);
  if (e.failure()) return e;
  const char* op = "memory_mlp_scan";
  const int64_t B = p.batch, T = p.seqlen, N = p.num_sequences, H = p.heads, D = p.head_dim;
  const nlcore_dtype_t f32 = NLCORE_DTYPE_FLOAT32;
  // the final state's gradients: its shapes, float32 (always given: zeros where unused)
  struct G { const ffi::AnyBuffer& b; const char* name; std::vector<int64_t> d; };
  const G finals[] = {{grad_w_in, "grad_w_in", {N, H, F, D}},
                      {grad_w_out, "grad_w_out", {N, H, D, F}},
                      {grad_p_in, "grad_p_in", {N, H, F, D}},
                      {grad_p_out, "grad_p_out", {N, H, D, F}},
                      {grad_acc_in, "grad_acc_in", {N, H, F, D}},
                      {grad_acc_out, "grad_acc_out", {N, H, D, F}},
                      {grad_acc_g, "grad_acc_g", {N, H}}};
  for (const G& f : finals) {
    if ((e = expect_dims(op, f.name, f.b.dimensions(), f.d)).failure()) return e;
    if (f.b.element_type() != ffi::DataType::F32)
      return ffi::Error::InvalidArgument(std::string("nlcore memory_mlp_scan: ") + f.name +
                                         " must be float32");
  }
  if ((e = expect_dims(op, "grad_y", grad_y.dimensions(), {B, T, H, D})).failure()) return e;
  if (to_nlcore(grad_y.element_type()) != p.dtype)
    return ffi::Error::InvalidArgument("nlcore memory_mlp_scan: grad_y must have x's dtype");
  const bool shared = p.weights_shared != 0;
  if ((e = expect_result("memory_mlp_scan", "dx", dx, {B, T, H, D}, p.dtype)).failure() ||
      (e = expect_result("memory_mlp_scan", "dk", dk, {B, T, H, D}, p.dtype)).failure() ||
      (e = expect_result("memory_mlp_scan", "dv", dv, {B, T, H, D}, p.dtype)).failure() ||
      (e = expect_result("memory_mlp_scan", "deta", deta, {B, T, H}, f32)).failure() ||
      (has_g && (e = expect_result("memory_mlp_scan", "dg", dg, {B, T, H}, f32)).failure()) ||
      (e = shared ? expect_result("memory_mlp_scan", "dw_in", dw_in, {H, F, D}, f32)
                  : expect_result("memory_mlp_scan", "dw_in", dw_in, {N, H, F, D}, f32)).failure() ||
      (e = shared ? expect_result("memory_mlp_scan", "dw_out", dw_out, {H, D, F}, f32)
                  : expect_result("memory_mlp_scan", "dw_out", dw_out, {N, H, D, F}, f32)).failure())
    return e;
  if (has_initial_state &&
      ((e = expect_result("memory_mlp_scan", "dp_in", dp_in, {N, H, F, D}, f32)).failure() ||
       (e = expect_result("memory_mlp_scan", "dp_out", dp_out, {N, H, D, F}, f32)).failure() ||
       (e = expect_result("memory_mlp_scan", "dacc_in", dacc_in, {N, H, F, D}, f32)).failure() ||
       (e = expect_result("memory_mlp_scan", "dacc_out", dacc_out, {N, H, D, F}, f32)).failure() ||
       (e = expect_result("memory_mlp_scan", "dacc_g", dacc_g, {N, H}, f32)).failure()))
    return e;
  nlcore_memory_mlp_tensors_t t;
  mlp_tensors(in, a, &t);
  nlcore_memory_mlp_grads_t gr{};
  gr.grad_y = grad_y.untyped_data();
  gr.grad_w_in = grad_w_in.untyped_data();
  gr.grad_w_out = grad_w_out.untyped_data();
  gr.grad_p_in = grad_p_in.untyped_data();
  gr.grad_p_out = grad_p_out.untyped_data();
  gr.grad_acc_in = grad_acc_in.untyped_data();
  gr.grad_acc_out = grad_acc_out.untyped_data();
  gr.grad_acc_g = grad_acc_g.untyped_data();
  gr.dx = dx->untyped_data();
  gr.dk = dk->untyped_data();
  gr.dv = dv->untyped_data();
  gr.deta = deta->untyped_data();
  gr.dg = data_if(dg, has_g);
  gr.dw_in = dw_in->untyped_data();
  gr.dw_out = dw_out->untyped_data();
  gr.dp_in = data_if(dp_in, has_initial_state);
  gr.dp_out = data_if(dp_out, has_initial_state);
  gr.dacc_in = data_if(dacc_in, has_initial_state);
  gr.dacc_out = data_if(dacc_out, has_initial_state);
  gr.dacc_g = data_if(dacc_g, has_initial_state);
  size_t bytes = 0;
  nlcore_status_t st = nlcore_memory_mlp_workspace_size(&p, 1, &bytes);
  if (st != NLCORE_STATUS_SUCCESS) return api_error("memory_mlp_scan backward", st);
  void* ws = nullptr;
  if ((e = scratch_alloc(scratch, "memory_mlp_scan", bytes, &ws)).failure()) return e;
  st = nlcore_memory_mlp_backward(&p, &t, &gr, ws, bytes, stream);
  return st == NLCORE_STATUS_SUCCESS ? ffi::Error::Success()
                                     : api_error("memory_mlp_scan backward", st);
}


// ---- self-modifying memories (nlcore/self_modifying.h) ------------------------------------------
// Operands: x, w_in, w_out, w_eta, w_alpha, b_eta, b_alpha, p_in, p_out, acc_in, acc_out, acc_g,
// n, cu_seqlens (absent ones zero-size placeholders; n as for the memory scan). M = 4 memories.
struct SmIn {
  const ffi::AnyBuffer &x, &w_in, &w_out, &w_eta, &w_alpha, &b_eta, &b_alpha, &p_in, &p_out,
      &acc_in, &acc_out, &acc_g, &n, &cu;
};

struct SmAttrs {
  int64_t chunk_size;
  float eta_max, momentum;
  int32_t activation, dgd_erase, has_b_eta, has_b_alpha, has_initial_state, varlen;
  int64_t checkpoint_every;
  int32_t flags;
};

constexpr int64_t kMemories = 4;

ffi::Error sm_problem(const SmIn& in, const SmAttrs& a, nlcore_self_modifying_problem_t* p,
                      int64_t* F) {
  const char* op = "self_modifying_scan";
  auto xd = in.x.dimensions();
  auto wd = in.w_in.dimensions();
  if (xd.size() != 4)
    return ffi::Error::InvalidArgument(
        "nlcore self_modifying_scan: x must be [B, T, H, D], rank " + std::to_string(xd.size()));
  if (wd.size() != 4 && wd.size() != 5)
    return ffi::Error::InvalidArgument(
        "nlcore self_modifying_scan: w_in must be [4, H, F, D] or [4, N, H, F, D]");
  if (a.varlen && in.cu.dimensions().size() != 1)
    return ffi::Error::InvalidArgument("nlcore self_modifying_scan: cu_seqlens must be rank 1");
  const int64_t B = xd[0], T = xd[1], H = xd[2], D = xd[3];
  const int64_t N = a.varlen ? in.cu.dimensions()[0] - 1 : B;
  const bool shared = wd.size() == 4;
  const int64_t Fv = wd[wd.size() - 2];
  *F = Fv;
  *p = nlcore_self_modifying_problem_t{};
  p->batch = B;
  p->seqlen = T;
  p->num_sequences = N;
  p->heads = static_cast<int32_t>(H);
  p->head_dim = static_cast<int32_t>(D);
  p->hidden_dim = static_cast<int32_t>(Fv);
  p->dtype = to_nlcore(in.x.element_type());
  p->chunk_size = a.chunk_size;
  p->eta_max = a.eta_max;
  p->momentum = a.momentum;
  p->activation = a.activation;
  p->dgd_erase = a.dgd_erase;
  p->weights_shared = shared ? 1 : 0;
  p->has_initial_state = a.has_initial_state;
  p->checkpoint_every = a.checkpoint_every;
  p->cu_seqlens = a.varlen ? in.cu.untyped_data() : nullptr;
  p->cu_seqlens_dtype = a.varlen ? to_nlcore(in.cu.element_type()) : NLCORE_DTYPE_INT32;
  p->flags = static_cast<uint32_t>(a.flags);
  const int64_t M = kMemories;
  ffi::Error e = shared ? expect_dims(op, "w_in", wd, {M, H, Fv, D})
                        : expect_dims(op, "w_in", wd, {M, N, H, Fv, D});
  if (e.success())
    e = shared ? expect_dims(op, "w_out", in.w_out.dimensions(), {M, H, D, Fv})
               : expect_dims(op, "w_out", in.w_out.dimensions(), {M, N, H, D, Fv});
  if (e.success()) e = expect_dims(op, "w_eta", in.w_eta.dimensions(), {H, D});
  if (e.success()) e = expect_dims(op, "w_alpha", in.w_alpha.dimensions(), {H, D});
  if (e.success() && a.has_b_eta) e = expect_dims(op, "b_eta", in.b_eta.dimensions(), {H});
  if (e.success() && a.has_b_alpha) e = expect_dims(op, "b_alpha", in.b_alpha.dimensions(), {H});
  if (e.success() && a.has_initial_state) {
    e = expect_dims(op, "p_in", in.p_in.dimensions(), {M, N, H, Fv, D});
    if (e.success()) e = expect_dims(op, "p_out", in.p_out.dimensions(), {M, N, H, D, Fv});
    if (e.success()) e = expect_dims(op, "acc_in", in.acc_in.dimensions(), {M, N, H, Fv, D});
    if (e.success()) e = expect_dims(op, "acc_out", in.acc_out.dimensions(), {M, N, H, D, Fv});
    if (e.success()) e = expect_dims(op, "acc_g", in.acc_g.dimensions(), {N, H});
    if (e.success() && !int64_counts(in.n.element_type(), in.n.dimensions(), N))
      e = ffi::Error::InvalidArgument("nlcore self_modifying_scan: n must be int64 [N] or "
                                      "int32 [N, 2] (the int64 words), N = " + std::to_string(N));
  }
  if (e.failure()) return e;
  std::vector<const ffi::AnyBuffer*> f32 = {&in.w_in, &in.w_out, &in.w_eta, &in.w_alpha};
  if (a.has_b_eta) f32.push_back(&in.b_eta);
  if (a.has_b_alpha) f32.push_back(&in.b_alpha);
  if (a.has_initial_state)
    for (const ffi::AnyBuffer* b : {&in.p_in, &in.p_out, &in.acc_in, &in.acc_out, &in.acc_g})
      f32.push_back(b);
  for (const ffi::AnyBuffer* b : f32)
    if (b->element_type() != ffi::DataType::F32)
      return ffi::Error::InvalidArgument(
          "nlcore self_modifying_scan: the weights, biases and state must be float32");
  return ffi::Error::Success();
}

void sm_tensors(const SmIn& in, const SmAttrs& a, nlcore_self_modifying_tensors_t* t) {
  *t = nlcore_self_modifying_tensors_t{};
  t->x = in.x.untyped_data();
  t->w_in = in.w_in.untyped_data();
  t->w_out = in.w_out.untyped_data();
  t->w_eta = in.w_eta.untyped_data();
  t->w_alpha = in.w_alpha.untyped_data();
  t->b_eta = data_if(in.b_eta, a.has_b_eta);
  t->b_alpha = data_if(in.b_alpha, a.has_b_alpha);
  t->p_in = data_if(in.p_in, a.has_initial_state);
  t->p_out = data_if(in.p_out, a.has_initial_state);
  t->acc_in = data_if(in.acc_in, a.has_initial_state);
  t->acc_out = data_if(in.acc_out, a.has_initial_state);
  t->acc_g = data_if(in.acc_g, a.has_initial_state);
  t->n = data_if(in.n, a.has_initial_state);
}

ffi::Error SelfModifyingForwardImpl(
    cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer x, ffi::AnyBuffer w_in,
    ffi::AnyBuffer w_out, ffi::AnyBuffer w_eta, ffi::AnyBuffer w_alpha, ffi::AnyBuffer b_eta,
    ffi::AnyBuffer b_alpha, ffi::AnyBuffer p_in, ffi::AnyBuffer p_out, ffi::AnyBuffer acc_in,
    ffi::AnyBuffer acc_out, ffi::AnyBuffer acc_g, ffi::AnyBuffer n, ffi::AnyBuffer cu,
    ffi::Result<ffi::AnyBuffer> k, ffi::Result<ffi::AnyBuffer> v, ffi::Result<ffi::AnyBuffer> eta,
    ffi::Result<ffi::AnyBuffer> g, ffi::Result<ffi::AnyBuffer> w_in_f,
    ffi::Result<ffi::AnyBuffer> w_out_f, ffi::Result<ffi::AnyBuffer> p_in_f,
    ffi::Result<ffi::AnyBuffer> p_out_f, ffi::Result<ffi::AnyBuffer> acc_in_f,
    ffi::Result<ffi::AnyBuffer> acc_out_f, ffi::Result<ffi::AnyBuffer> acc_g_f,
    ffi::Result<ffi::AnyBuffer> n_f, int64_t chunk_size, float eta_max, float momentum,
    int32_t activation, int32_t dgd_erase, int32_t has_b_eta, int32_t has_b_alpha,
    int32_t has_initial_state, int32_t varlen, int64_t checkpoint_every, int32_t flags) {
  const SmIn in{x, w_in, w_out, w_eta, w_alpha, b_eta, b_alpha, p_in, p_out, acc_in, acc_out,
                acc_g, n, cu};
  const SmAttrs a{chunk_size, eta_max,     momentum,          activation, dgd_erase, has_b_eta,
                  has_b_alpha, has_initial_state, varlen, checkpoint_every, flags};
  nlcore_self_modifying_problem_t p;
  int64_t F = 0;
  ffi::Error e = sm_problem(in, a, &p, &F);
  if (e.failure()) return e;
  const int64_t B = p.batch, T = p.seqlen, N = p.num_sequences, H = p.heads, D = p.head_dim;
  const int64_t M = kMemories;
  const nlcore_dtype_t f32 = NLCORE_DTYPE_FLOAT32;
  const char* op = "self_modifying_scan";
  if ((e = expect_result(op, "k", k, {B, T, H, D}, p.dtype)).failure() ||
      (e = expect_result(op, "v", v, {B, T, H, D}, p.dtype)).failure() ||
      (e = expect_result(op, "eta", eta, {B, T, H}, f32)).failure() ||
      (e = expect_result(op, "g", g, {B, T, H}, f32)).failure() ||
      (e = expect_result(op, "w_in_final", w_in_f, {M, N, H, F, D}, f32)).failure() ||
      (e = expect_result(op, "w_out_final", w_out_f, {M, N, H, D, F}, f32)).failure() ||
      (e = expect_result(op, "p_in_final", p_in_f, {M, N, H, F, D}, f32)).failure() ||
      (e = expect_result(op, "p_out_final", p_out_f, {M, N, H, D, F}, f32)).failure() ||
      (e = expect_result(op, "acc_in_final", acc_in_f, {M, N, H, F, D}, f32)).failure() ||
      (e = expect_result(op, "acc_out_final", acc_out_f, {M, N, H, D, F}, f32)).failure() ||
      (e = expect_result(op, "acc_g_final", acc_g_f, {N, H}, f32)).failure())
    return e;
  if (!int64_counts(n_f->element_type(), n_f->dimensions(), N))
    return ffi::Error::InvalidArgument(
        "nlcore self_modifying_scan: n_final must be int64 [N] or int32 [N, 2]");
  nlcore_self_modifying_tensors_t t;
  sm_tensors(in, a, &t);
  t.k = k->untyped_data();
  t.v = v->untyped_data();
  t.eta = eta->untyped_data();
  t.g = g->untyped_data();
  t.w_in_final = w_in_f->untyped_data();
  t.w_out_final = w_out_f->untyped_data();
  t.p_in_final = p_in_f->untyped_data();
  t.p_out_final = p_out_f->untyped_data();
  t.acc_in_final = acc_in_f->untyped_data();
  t.acc_out_final = acc_out_f->untyped_data();
  t.acc_g_final = acc_g_f->untyped_data();
  t.n_final = n_f->untyped_data();
  size_t bytes = 0;
  nlcore_status_t st = nlcore_self_modifying_workspace_size(&p, 0, &bytes);
  if (st != NLCORE_STATUS_SUCCESS) return api_error(op, st);
  void* ws = nullptr;
  if ((e = scratch_alloc(scratch, op, bytes, &ws)).failure()) return e;
  st = nlcore_self_modifying_forward(&p, &t, ws, bytes, stream);
  return st == NLCORE_STATUS_SUCCESS ? ffi::Error::Success() : api_error(op, st);
}

ffi::Error SelfModifyingBackwardImpl(
    cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer x, ffi::AnyBuffer w_in,
    ffi::AnyBuffer w_out, ffi::AnyBuffer w_eta, ffi::AnyBuffer w_alpha, ffi::AnyBuffer b_eta,
    ffi::AnyBuffer b_alpha, ffi::AnyBuffer p_in, ffi::AnyBuffer p_out, ffi::AnyBuffer acc_in,
    ffi::AnyBuffer acc_out, ffi::AnyBuffer acc_g, ffi::AnyBuffer n, ffi::AnyBuffer cu,
    ffi::AnyBuffer grad_k, ffi::AnyBuffer grad_v, ffi::AnyBuffer grad_eta, ffi::AnyBuffer grad_g,
    ffi::AnyBuffer grad_w_in, ffi::AnyBuffer grad_w_out, ffi::AnyBuffer grad_p_in,
    ffi::AnyBuffer grad_p_out, ffi::AnyBuffer grad_acc_in, ffi::AnyBuffer grad_acc_out,
    ffi::AnyBuffer grad_acc_g, ffi::Result<ffi::AnyBuffer> dx, ffi::Result<ffi::AnyBuffer> dw_in,
    ffi::Result<ffi::AnyBuffer> dw_out, ffi::Result<ffi::AnyBuffer> dw_eta,
    ffi::Result<ffi::AnyBuffer> dw_alpha, ffi::Result<ffi::AnyBuffer> db_eta,
    ffi::Result<ffi::AnyBuffer> db_alpha, ffi::Result<ffi::AnyBuffer> dp_in,
    ffi::Result<ffi::AnyBuffer> dp_out, ffi::Result<ffi::AnyBuffer> dacc_in,
    ffi::Result<ffi::AnyBuffer> dacc_out, ffi::Result<ffi::AnyBuffer> dacc_g, int64_t chunk_size,
    float eta_max, float momentum, int32_t activation, int32_t dgd_erase, int32_t has_b_eta,
    int32_t has_b_alpha, int32_t has_initial_state, int32_t varlen, int64_t checkpoint_every,
    int32_t flags) {
  const SmIn in{x, w_in, w_out, w_eta, w_alpha, b_eta, b_alpha, p_in, p_out, acc_in, acc_out,
                acc_g, n, cu};
  const SmAttrs a{chunk_size, eta_max,     momentum,          activation, dgd_erase, has_b_eta,
                  has_b_alpha, has_initial_state, varlen, checkpoint_every, flags};
  nlcore_self_modifying_problem_t p;
  int64_t F = 0;
  ffi::Error e = sm_problem(in, a, &p, &F);
  if (e.failure()) return e;
  const char* op = "self_modifying_scan";
  const int64_t B = p.batch, T = p.seqlen, N = p.num_sequences, H = p.heads, D = p.head_dim;
  const int64_t M = kMemories;
  const nlcore_dtype_t f32 = NLCORE_DTYPE_FLOAT32;
  struct G { const ffi::AnyBuffer& b; const char* name; std::vector<int64_t> d; nlcore_dtype_t t; };
  const G given[] = {{grad_k, "grad_k", {B, T, H, D}, p.dtype},
                     {grad_v, "grad_v", {B, T, H, D}, p.dtype},
                     {grad_eta, "grad_eta", {B, T, H}, f32},
                     {grad_g, "grad_g", {B, T, H}, f32},
                     {grad_w_in, "grad_w_in", {M, N, H, F, D}, f32},
                     {grad_w_out, "grad_w_out", {M, N, H, D, F}, f32},
                     {grad_p_in, "grad_p_in", {M, N, H, F, D}, f32},
                     {grad_p_out, "grad_p_out", {M, N, H, D, F}, f32},
                     {grad_acc_in, "grad_acc_in", {M, N, H, F, D}, f32},
                     {grad_acc_out, "grad_acc_out", {M, N, H, D, F}, f32},
                     {grad_acc_g, "grad_acc_g", {N, H}, f32}};
  for (const G& f : given) {
    if ((e = expect_dims(op, f.name, f.b.dimensions(), f.d)).failure()) return e;
    if (to_nlcore(f.b.element_type()) != f.t)
      return ffi::Error::InvalidArgument(std::string("nlcore self_modifying_scan: ") + f.name +
                                         " has the wrong dtype");
  }
  const bool shared = p.weights_shared != 0;
  if ((e = expect_result(op, "dx", dx, {B, T, H, D}, p.dtype)).failure() ||
      (e = shared ? expect_result(op, "dw_in", dw_in, {M, H, F, D}, f32)
                  : expect_result(op, "dw_in", dw_in, {M, N, H, F, D}, f32)).failure() ||
      (e = shared ? expect_result(op, "dw_out", dw_out, {M, H, D, F}, f32)
                  : expect_result(op, "dw_out", dw_out, {M, N, H, D, F}, f32)).failure() ||
      (e = expect_result(op, "dw_eta", dw_eta, {H, D}, f32)).failure() ||
      (e = expect_result(op, "dw_alpha", dw_alpha, {H, D}, f32)).failure() ||
      (has_b_eta && (e = expect_result(op, "db_eta", db_eta, {H}, f32)).failure()) ||
      (has_b_alpha && (e = expect_result(op, "db_alpha", db_alpha, {H}, f32)).failure()))
    return e;
  if (has_initial_state &&
      ((e = expect_result(op, "dp_in", dp_in, {M, N, H, F, D}, f32)).failure() ||
       (e = expect_result(op, "dp_out", dp_out, {M, N, H, D, F}, f32)).failure() ||
       (e = expect_result(op, "dacc_in", dacc_in, {M, N, H, F, D}, f32)).failure() ||
       (e = expect_result(op, "dacc_out", dacc_out, {M, N, H, D, F}, f32)).failure() ||
       (e = expect_result(op, "dacc_g", dacc_g, {N, H}, f32)).failure()))
    return e;
  nlcore_self_modifying_tensors_t t;
  sm_tensors(in, a, &t);
  nlcore_self_modifying_grads_t gr{};
  gr.grad_k = grad_k.untyped_data();
  gr.grad_v = grad_v.untyped_data();
  gr.grad_eta = grad_eta.untyped_data();
  gr.grad_g = grad_g.untyped_data();
  gr.grad_w_in = grad_w_in.untyped_data();
  gr.grad_w_out = grad_w_out.untyped_data();
  gr.grad_p_in = grad_p_in.untyped_data();
  gr.grad_p_out = grad_p_out.untyped_data();
  gr.grad_acc_in = grad_acc_in.untyped_data();
  gr.grad_acc_out = grad_acc_out.untyped_data();
  gr.grad_acc_g = grad_acc_g.untyped_data();
  gr.dx = dx->untyped_data();
  gr.dw_in = dw_in->untyped_data();
  gr.dw_out = dw_out->untyped_data();
  gr.dw_eta = dw_eta->untyped_data();
  gr.dw_alpha = dw_alpha->untyped_data();
  gr.db_eta = data_if(db_eta, has_b_eta);
  gr.db_alpha = data_if(db_alpha, has_b_alpha);
  gr.dp_in = data_if(dp_in, has_initial_state);
  gr.dp_out = data_if(dp_out, has_initial_state);
  gr.dacc_in = data_if(dacc_in, has_initial_state);
  gr.dacc_out = data_if(dacc_out, has_initial_state);
  gr.dacc_g = data_if(dacc_g, has_initial_state);
  size_t bytes = 0;
  nlcore_status_t st = nlcore_self_modifying_workspace_size(&p, 1, &bytes);
  if (st != NLCORE_STATUS_SUCCESS) return api_error("self_modifying_scan backward", st);
  void* ws = nullptr;
  if ((e = scratch_alloc(scratch, op, bytes, &ws)).failure()) return e;
  st = nlcore_self_modifying_backward(&p, &t, &gr, ws, bytes, stream);
  return st == NLCORE_STATUS_SUCCESS ? ffi::Error::Success()
                                     : api_error("self_modifying_scan backward", st);
}

}  // namespace

// The exported handler symbols: C linkage from XLA_FFI_DEFINE_HANDLER_SYMBOL, default
// visibility from these declarations (the library builds with -fvisibility=hidden and a version
// script exporting Nlcore* only).
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* NlcoreDgdForward(
    XLA_FFI_CallFrame* call_frame);
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* NlcoreDgdBackward(
    XLA_FFI_CallFrame* call_frame);
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* NlcoreNewtonSchulzForward(
    XLA_FFI_CallFrame* call_frame);
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* NlcoreMemoryMlpForward(
    XLA_FFI_CallFrame* call_frame);
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* NlcoreMemoryMlpBackward(
    XLA_FFI_CallFrame* call_frame);
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* NlcoreSelfModifyingForward(
    XLA_FFI_CallFrame* call_frame);
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* NlcoreSelfModifyingBackward(
    XLA_FFI_CallFrame* call_frame);

XLA_FFI_DEFINE_HANDLER_SYMBOL(NlcoreDgdForward, DgdForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::ScratchAllocator>()
                                  .Arg<ffi::AnyBuffer>()  // q
                                  .Arg<ffi::AnyBuffer>()  // k
                                  .Arg<ffi::AnyBuffer>()  // v
                                  .Arg<ffi::AnyBuffer>()  // beta
                                  .Arg<ffi::AnyBuffer>()  // g (or a placeholder)
                                  .Arg<ffi::AnyBuffer>()  // erase (or a placeholder)
                                  .Arg<ffi::AnyBuffer>()  // initial_state (or a placeholder)
                                  .Arg<ffi::AnyBuffer>()  // cu_seqlens (or a placeholder)
                                  .Ret<ffi::AnyBuffer>()  // o
                                  .Ret<ffi::AnyBuffer>()  // final_state
                                  .Attr<int32_t>("has_g")
                                  .Attr<int32_t>("has_erase")
                                  .Attr<int32_t>("has_initial_state")
                                  .Attr<int32_t>("varlen")
                                  .Attr<int32_t>("read_before")
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(NlcoreDgdBackward, DgdBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::ScratchAllocator>()
                                  .Arg<ffi::AnyBuffer>()  // q
                                  .Arg<ffi::AnyBuffer>()  // k
                                  .Arg<ffi::AnyBuffer>()  // v
                                  .Arg<ffi::AnyBuffer>()  // beta
                                  .Arg<ffi::AnyBuffer>()  // g
                                  .Arg<ffi::AnyBuffer>()  // erase
                                  .Arg<ffi::AnyBuffer>()  // initial_state
                                  .Arg<ffi::AnyBuffer>()  // cu_seqlens
                                  .Arg<ffi::AnyBuffer>()  // grad_o
                                  .Arg<ffi::AnyBuffer>()  // grad_final_state (or a placeholder)
                                  .Ret<ffi::AnyBuffer>()  // dq
                                  .Ret<ffi::AnyBuffer>()  // dk
                                  .Ret<ffi::AnyBuffer>()  // dv
                                  .Ret<ffi::AnyBuffer>()  // dbeta
                                  .Ret<ffi::AnyBuffer>()  // dg (zero-size without g)
                                  .Ret<ffi::AnyBuffer>()  // derase (zero-size without erase)
                                  .Ret<ffi::AnyBuffer>()  // dinitial_state (zero-size without)
                                  .Attr<int32_t>("has_g")
                                  .Attr<int32_t>("has_erase")
                                  .Attr<int32_t>("has_initial_state")
                                  .Attr<int32_t>("varlen")
                                  .Attr<int32_t>("read_before")
                                  .Attr<float>("scale")
                                  .Attr<int32_t>("has_grad_final_state"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(NlcoreNewtonSchulzForward, NewtonSchulzForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::ScratchAllocator>()
                                  .Arg<ffi::AnyBuffer>()  // G
                                  .Ret<ffi::AnyBuffer>()  // O
                                  .Attr<ffi::Span<const float>>("coefficients")
                                  .Attr<float>("eps")
                                  .Attr<float>("norm_scale")
                                  .Attr<int32_t>("norm_additive")
                                  .Attr<int32_t>("compute_dtype")
                                  .Attr<int32_t>("flags"));

// memory_mlp_scan: 14 operands (x k v eta g w_in w_out p_in p_out acc_in acc_out acc_g n cu)
XLA_FFI_DEFINE_HANDLER_SYMBOL(NlcoreMemoryMlpForward, MemoryMlpForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::ScratchAllocator>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("chunk_size")
                                  .Attr<float>("momentum")
                                  .Attr<int32_t>("activation")
                                  .Attr<int32_t>("objective")
                                  .Attr<int32_t>("residual")
                                  .Attr<int32_t>("self_target")
                                  .Attr<int32_t>("dgd_erase")
                                  .Attr<int32_t>("has_g")
                                  .Attr<int32_t>("has_initial_state")
                                  .Attr<int32_t>("varlen")
                                  .Attr<int64_t>("checkpoint_every")
                                  .Attr<int32_t>("flags"));

// + grad_y and the 7 final-state gradients; 12 results (dx dk dv deta dg dw_in dw_out dp_in
// dp_out dacc_in dacc_out dacc_g)
XLA_FFI_DEFINE_HANDLER_SYMBOL(NlcoreMemoryMlpBackward, MemoryMlpBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::ScratchAllocator>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("chunk_size")
                                  .Attr<float>("momentum")
                                  .Attr<int32_t>("activation")
                                  .Attr<int32_t>("objective")
                                  .Attr<int32_t>("residual")
                                  .Attr<int32_t>("self_target")
                                  .Attr<int32_t>("dgd_erase")
                                  .Attr<int32_t>("has_g")
                                  .Attr<int32_t>("has_initial_state")
                                  .Attr<int32_t>("varlen")
                                  .Attr<int64_t>("checkpoint_every")
                                  .Attr<int32_t>("flags"));

// self_modifying_scan: 14 operands (x w_in w_out w_eta w_alpha b_eta b_alpha p_in p_out acc_in
// acc_out acc_g n cu); 12 results (k v eta g and the final state)
XLA_FFI_DEFINE_HANDLER_SYMBOL(NlcoreSelfModifyingForward, SelfModifyingForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::ScratchAllocator>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("chunk_size")
                                  .Attr<float>("eta_max")
                                  .Attr<float>("momentum")
                                  .Attr<int32_t>("activation")
                                  .Attr<int32_t>("dgd_erase")
                                  .Attr<int32_t>("has_b_eta")
                                  .Attr<int32_t>("has_b_alpha")
                                  .Attr<int32_t>("has_initial_state")
                                  .Attr<int32_t>("varlen")
                                  .Attr<int64_t>("checkpoint_every")
                                  .Attr<int32_t>("flags"));

// + the gradients of k, v, eta, g and of the 7 float final-state entries; 12 results (dx dw_in
// dw_out dw_eta dw_alpha db_eta db_alpha dp_in dp_out dacc_in dacc_out dacc_g)
XLA_FFI_DEFINE_HANDLER_SYMBOL(NlcoreSelfModifyingBackward, SelfModifyingBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::ScratchAllocator>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("chunk_size")
                                  .Attr<float>("eta_max")
                                  .Attr<float>("momentum")
                                  .Attr<int32_t>("activation")
                                  .Attr<int32_t>("dgd_erase")
                                  .Attr<int32_t>("has_b_eta")
                                  .Attr<int32_t>("has_b_alpha")
                                  .Attr<int32_t>("has_initial_state")
                                  .Attr<int32_t>("varlen")
                                  .Attr<int64_t>("checkpoint_every")
                                  .Attr<int32_t>("flags"));
