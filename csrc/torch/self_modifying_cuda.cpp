// nlcore::self_modifying_scan on CUDA: a thin call into the framework-free C API
// (csrc/include/nlcore/self_modifying.h). Arguments are checked by the shared glue
// (torch/self_modifying.h); this file rejects float64, makes the contiguous fp32 copies the C API
// wants, allocates outputs and the workspace on the current stream and translates the status.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "nlcore/self_modifying.h"
#include "torch/checks.h"
#include "torch/cuda_status.h"
#include "torch/self_modifying.h"

namespace nlcore::glue {
namespace {

using Opt = std::optional<at::Tensor>;
constexpr int64_t kM = NLCORE_SELF_MODIFYING_MEMORIES;

struct Prepared {
  nlcore_self_modifying_problem_t p{};
  nlcore_self_modifying_tensors_t t{};
  // contiguous: x in its dtype; weights, biases and state in fp32; n in int64
  at::Tensor x, w_in, w_out, w_eta, w_alpha, b_eta, b_alpha, p_in, p_out, acc_in, acc_out,
      acc_g, n, cu;
  int64_t N, F;
  bool has_init, shared;
};

void reject_f64(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() != at::kDouble, "self_modifying_scan: float64 is not "
                   "supported on CUDA (", name, " is float64 on ", t.device(),
                   "); use float32, bfloat16 or float16");
}

Prepared prepare(const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& w_out,
                 const at::Tensor& w_eta, const at::Tensor& w_alpha, const Opt& b_eta,
                 const Opt& b_alpha, const Opt& p_in, const Opt& p_out, const Opt& acc_in,
                 const Opt& acc_out, const Opt& acc_g, const Opt& n, const Opt& cu_seqlens,
                 int64_t chunk_size, double eta_max, double momentum,
                 c10::string_view activation, bool dgd_erase, int64_t checkpoint_every) {
  const cpu::SelfModArgs a = parse_self_modifying_args(
      chunk_size, eta_max, momentum, std::string(activation), dgd_erase, checkpoint_every);
  // shapes, dtypes, devices; cu_seqlens and n values for CPU tensors or NLCORE_DEBUG=1 only
  (void)check_self_modifying_args(x, w_in, w_out, w_eta, w_alpha, b_eta, b_alpha, p_in, p_out,
                                  acc_in, acc_out, acc_g, n, cu_seqlens, chunk_size);
  reject_f64(x, "x");
  reject_f64(w_in, "w_in");
  reject_f64(w_out, "w_out");
  reject_f64(w_eta, "w_eta");
  reject_f64(w_alpha, "w_alpha");
  for (auto [t, name] : {std::pair{&b_eta, "b_eta"}, {&b_alpha, "b_alpha"}, {&p_in, "p_in"},
                         {&p_out, "p_out"}, {&acc_in, "acc_in"}, {&acc_out, "acc_out"},
                         {&acc_g, "acc_g"}})
    if (t->has_value()) reject_f64(**t, name);

  Prepared r;
  auto f32 = [](const at::Tensor& t) { return t.to(at::kFloat).contiguous(); };
  r.x = x.contiguous();
  r.w_in = f32(w_in);
  r.w_out = f32(w_out);
  r.w_eta = f32(w_eta);
  r.w_alpha = f32(w_alpha);
  if (b_eta) r.b_eta = f32(*b_eta);
  if (b_alpha) r.b_alpha = f32(*b_alpha);
  r.has_init = p_in.has_value();
  if (r.has_init) {
    r.p_in = f32(*p_in);
    r.p_out = f32(*p_out);
    r.acc_in = f32(*acc_in);
    r.acc_out = f32(*acc_out);
    r.acc_g = f32(*acc_g);
    r.n = n->to(at::kLong).contiguous();
  }
  if (cu_seqlens) r.cu = cu_seqlens->contiguous();
  r.N = cu_seqlens ? cu_seqlens->numel() - 1 : x.size(0);
  r.F = w_in.size(-2);
  r.shared = w_in.dim() == 4;  // [4, H, F, D]; per sequence: [4, N, H, F, D]

  nlcore_self_modifying_problem_t& p = r.p;
  p.batch = x.size(0);
  p.seqlen = x.size(1);
  p.num_sequences = r.N;
  p.heads = static_cast<int32_t>(x.size(2));
  p.head_dim = static_cast<int32_t>(x.size(3));
  p.hidden_dim = static_cast<int32_t>(r.F);
  p.dtype = to_nlcore_dtype(x.scalar_type());
  p.chunk_size = a.chunk_size;
  p.eta_max = static_cast<float>(a.eta_max);
  p.momentum = static_cast<float>(a.momentum);
  p.activation = a.activation == cpu::MlpActivation::kGelu ? NLCORE_SELF_MODIFYING_ACT_GELU
                                                           : NLCORE_SELF_MODIFYING_ACT_SILU;
  p.dgd_erase = a.dgd_erase ? 1 : 0;
  p.weights_shared = r.shared ? 1 : 0;
  p.has_initial_state = r.has_init ? 1 : 0;
  p.checkpoint_every = a.checkpoint_every;
  p.cu_seqlens = cu_seqlens ? r.cu.data_ptr() : nullptr;
  p.cu_seqlens_dtype = (cu_seqlens && cu_seqlens->scalar_type() == at::kInt)
                           ? NLCORE_DTYPE_INT32
                           : NLCORE_DTYPE_INT64;
  p.flags = NLCORE_SELF_MODIFYING_FLAG_DEFAULT;

  nlcore_self_modifying_tensors_t& t = r.t;
  t.x = r.x.data_ptr();
  t.w_in = r.w_in.data_ptr();
  t.w_out = r.w_out.data_ptr();
  t.w_eta = r.w_eta.data_ptr();
  t.w_alpha = r.w_alpha.data_ptr();
  t.b_eta = b_eta ? r.b_eta.data_ptr() : nullptr;
  t.b_alpha = b_alpha ? r.b_alpha.data_ptr() : nullptr;
  if (r.has_init) {
    t.p_in = r.p_in.data_ptr();
    t.p_out = r.p_out.data_ptr();
    t.acc_in = r.acc_in.data_ptr();
    t.acc_out = r.acc_out.data_ptr();
    t.acc_g = r.acc_g.data_ptr();
    t.n = r.n.data_ptr();
  }
  return r;
}

// [4, N, H, rows, cols] fp32: the stacked per-sequence state shape.
std::vector<int64_t> state_shape(const Prepared& r, int64_t rows, int64_t cols) {
  return {kM, r.N, r.p.heads, rows, cols};
}

// Initial weights as the per-sequence state: shared [4, H, ...] broadcast over the sequences.
at::Tensor per_sequence(const Prepared& r, const at::Tensor& w) {
  return r.shared ? w.unsqueeze(1) : w;
}

at::Tensor workspace(const nlcore_self_modifying_problem_t& p, int32_t backward,
                     const at::Tensor& like, size_t* bytes) {
  check_status(nlcore_self_modifying_workspace_size(&p, backward, bytes), "self_modifying_scan");
  return at::empty({static_cast<int64_t>(*bytes > 0 ? *bytes : 1)},
                   like.options().dtype(at::kByte));
}

cudaStream_t stream_of(const at::Tensor& x) {
  return c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
}

std::vector<at::Tensor> scan_cuda(const at::Tensor& x, const at::Tensor& w_in,
                                  const at::Tensor& w_out, const at::Tensor& w_eta,
                                  const at::Tensor& w_alpha, const Opt& b_eta,
                                  const Opt& b_alpha, const Opt& p_in, const Opt& p_out,
                                  const Opt& acc_in, const Opt& acc_out, const Opt& acc_g,
                                  const Opt& n, const Opt& cu_seqlens, int64_t chunk_size,
                                  double eta_max, double momentum, c10::string_view activation,
                                  bool dgd_erase, int64_t checkpoint_every) {
  NoAutocast no_autocast;
  c10::cuda::CUDAGuard guard(x.device());
  Prepared r = prepare(x, w_in, w_out, w_eta, w_alpha, b_eta, b_alpha, p_in, p_out, acc_in,
                       acc_out, acc_g, n, cu_seqlens, chunk_size, eta_max, momentum, activation,
                       dgd_erase, checkpoint_every);
  const int64_t H = r.p.heads, D = r.p.head_dim, F = r.F;
  const auto fopt = x.options().dtype(at::kFloat);
  at::Tensor k = at::empty_like(r.x, at::MemoryFormat::Contiguous);
  at::Tensor v = at::empty_like(r.x, at::MemoryFormat::Contiguous);
  at::Tensor eta = at::empty({x.size(0), x.size(1), H}, fopt);
  at::Tensor g = at::empty({x.size(0), x.size(1), H}, fopt);
  at::Tensor wi = at::empty(state_shape(r, F, D), fopt), wo = at::empty(state_shape(r, D, F), fopt);
  at::Tensor pi = at::empty(state_shape(r, F, D), fopt), po = at::empty(state_shape(r, D, F), fopt);
  at::Tensor ai = at::empty(state_shape(r, F, D), fopt), ao = at::empty(state_shape(r, D, F), fopt);
  at::Tensor ag = at::empty({r.N, H}, fopt);
  at::Tensor nf = at::empty({r.N}, x.options().dtype(at::kLong));
  auto result = [&]() -> std::vector<at::Tensor> {
    return {k, v, eta, g, wi, wo, pi, po, ai, ao, ag, nf};
  };
  if (r.p.seqlen == 0 || r.p.batch == 0 || r.N == 0) {  // nothing to run: the state passes through
    k.zero_(); v.zero_(); eta.zero_(); g.zero_();
    wi.copy_(per_sequence(r, r.w_in).expand_as(wi));
    wo.copy_(per_sequence(r, r.w_out).expand_as(wo));
    if (r.has_init) {
      pi.copy_(r.p_in); po.copy_(r.p_out); ai.copy_(r.acc_in); ao.copy_(r.acc_out);
      ag.copy_(r.acc_g); nf.copy_(r.n);
    } else {
      pi.zero_(); po.zero_(); ai.zero_(); ao.zero_(); ag.zero_(); nf.zero_();
    }
    return result();
  }
  nlcore_self_modifying_tensors_t& t = r.t;
  t.k = k.data_ptr();
  t.v = v.data_ptr();
  t.eta = eta.data_ptr();
  t.g = g.data_ptr();
  t.w_in_final = wi.data_ptr();
  t.w_out_final = wo.data_ptr();
  t.p_in_final = pi.data_ptr();
  t.p_out_final = po.data_ptr();
  t.acc_in_final = ai.data_ptr();
  t.acc_out_final = ao.data_ptr();
  t.acc_g_final = ag.data_ptr();
  t.n_final = nf.data_ptr();
  size_t bytes = 0;
  at::Tensor ws = workspace(r.p, 0, x, &bytes);
  check_status(nlcore_self_modifying_forward(&r.p, &t, ws.data_ptr(), bytes, stream_of(x)),
               "self_modifying_scan");
  return result();
}

// An optional gradient of the shape `want` on x's device, as a contiguous tensor of `dtype`
// (undefined when absent).
at::Tensor grad_arg(const Opt& t, at::IntArrayRef want, at::ScalarType dtype,
                    const at::Tensor& x, const char* name) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  TORCH_CHECK_VALUE(t->sizes() == want, "self_modifying_scan_backward: ", name,
                    " must have shape ", want, ", got ", t->sizes());
  TORCH_CHECK_VALUE(t->device() == x.device(), "self_modifying_scan_backward: ", name,
                    " is on ", t->device(), " but x is on ", x.device());
  return t->to(dtype).contiguous();
}

const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

std::vector<at::Tensor> scan_backward_cuda(
    const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& w_out,
    const at::Tensor& w_eta, const at::Tensor& w_alpha, const Opt& b_eta, const Opt& b_alpha,
    const Opt& p_in, const Opt& p_out, const Opt& acc_in, const Opt& acc_out, const Opt& acc_g,
    const Opt& n, const Opt& cu_seqlens, int64_t chunk_size, double eta_max, double momentum,
    c10::string_view activation, bool dgd_erase, int64_t checkpoint_every, const Opt& grad_k,
    const Opt& grad_v, const Opt& grad_eta, const Opt& grad_g, const Opt& grad_w_in,
    const Opt& grad_w_out, const Opt& grad_p_in, const Opt& grad_p_out, const Opt& grad_acc_in,
    const Opt& grad_acc_out, const Opt& grad_acc_g) {
  NoAutocast no_autocast;
  c10::cuda::CUDAGuard guard(x.device());
  Prepared r = prepare(x, w_in, w_out, w_eta, w_alpha, b_eta, b_alpha, p_in, p_out, acc_in,
                       acc_out, acc_g, n, cu_seqlens, chunk_size, eta_max, momentum, activation,
                       dgd_erase, checkpoint_every);
  const int64_t H = r.p.heads, D = r.p.head_dim, F = r.F;
  const std::vector<int64_t> tok = {x.size(0), x.size(1), H};
  const at::Tensor gk = grad_arg(grad_k, x.sizes(), x.scalar_type(), x, "grad_k");
  const at::Tensor gv = grad_arg(grad_v, x.sizes(), x.scalar_type(), x, "grad_v");
  const at::Tensor ge = grad_arg(grad_eta, tok, at::kFloat, x, "grad_eta");
  const at::Tensor gg = grad_arg(grad_g, tok, at::kFloat, x, "grad_g");
  // gradients of the final state, in the final state's shapes ([4, N, H, ...] / [N, H], fp32)
  const std::vector<int64_t> s_in = state_shape(r, F, D), s_out = state_shape(r, D, F);
  const std::vector<int64_t> s_g = {r.N, H};
  const Opt* gf_opt[7] = {&grad_w_in, &grad_w_out, &grad_p_in, &grad_p_out,
                          &grad_acc_in, &grad_acc_out, &grad_acc_g};
  const char* gf_names[7] = {"grad_w_in", "grad_w_out", "grad_p_in", "grad_p_out",
                             "grad_acc_in", "grad_acc_out", "grad_acc_g"};
  const std::vector<int64_t>* gf_shapes[7] = {&s_in, &s_out, &s_in, &s_out, &s_in, &s_out, &s_g};
  at::Tensor gf[7];
  for (int i = 0; i < 7; ++i) gf[i] = grad_arg(*gf_opt[i], *gf_shapes[i], at::kFloat, x, gf_names[i]);

  const auto fopt = x.options().dtype(at::kFloat);
  at::Tensor dx = at::empty_like(r.x);
  at::Tensor dwi = at::empty(r.w_in.sizes(), fopt), dwo = at::empty(r.w_out.sizes(), fopt);
  at::Tensor dwe = at::empty({H, D}, fopt), dwa = at::empty({H, D}, fopt);
  // absent entries: empty fp32 (the state dtype), as the op's fake impl returns them
  at::Tensor dbe = at::empty({b_eta ? H : 0}, fopt), dba = at::empty({b_alpha ? H : 0}, fopt);
  at::Tensor dpi, dpo, dai, dao, dag;
  if (r.has_init) {
    dpi = at::empty(s_in, fopt); dpo = at::empty(s_out, fopt);
    dai = at::empty(s_in, fopt); dao = at::empty(s_out, fopt);
    dag = at::empty(s_g, fopt);
  } else {
    for (at::Tensor* d : {&dpi, &dpo, &dai, &dao, &dag}) *d = at::empty({0}, fopt);
  }
  // gradients come back in each input's own dtype
  auto back = [](const at::Tensor& d, const Opt& t) { return t ? d.to(t->scalar_type()) : d; };
  auto finish = [&]() -> std::vector<at::Tensor> {
    return {dx, dwi.to(w_in.scalar_type()), dwo.to(w_out.scalar_type()),
            dwe.to(w_eta.scalar_type()), dwa.to(w_alpha.scalar_type()), back(dbe, b_eta),
            back(dba, b_alpha), back(dpi, p_in), back(dpo, p_out), back(dai, acc_in),
            back(dao, acc_out), back(dag, acc_g)};
  };
  if (r.p.seqlen == 0 || r.p.batch == 0 || r.N == 0) {  // the state passes through
    dx.zero_(); dwe.zero_(); dwa.zero_(); dbe.zero_(); dba.zero_();
    auto pass = [&](at::Tensor& d, const at::Tensor& gfin, bool sum) {
      if (!gfin.defined()) { d.zero_(); return; }
      d.copy_(sum ? gfin.sum(1) : gfin);
    };
    pass(dwi, gf[0], r.shared);
    pass(dwo, gf[1], r.shared);
    if (r.has_init) {
      pass(dpi, gf[2], false); pass(dpo, gf[3], false); pass(dai, gf[4], false);
      pass(dao, gf[5], false); pass(dag, gf[6], false);
    }
    return finish();
  }
  nlcore_self_modifying_grads_t gr{};
  gr.grad_k = ptr_or_null(gk);
  gr.grad_v = ptr_or_null(gv);
  gr.grad_eta = ptr_or_null(ge);
  gr.grad_g = ptr_or_null(gg);
  gr.grad_w_in = ptr_or_null(gf[0]);
  gr.grad_w_out = ptr_or_null(gf[1]);
  gr.grad_p_in = ptr_or_null(gf[2]);
  gr.grad_p_out = ptr_or_null(gf[3]);
  gr.grad_acc_in = ptr_or_null(gf[4]);
  gr.grad_acc_out = ptr_or_null(gf[5]);
  gr.grad_acc_g = ptr_or_null(gf[6]);
  gr.dx = dx.data_ptr();
  gr.dw_in = dwi.data_ptr();
  gr.dw_out = dwo.data_ptr();
  gr.dw_eta = dwe.data_ptr();
  gr.dw_alpha = dwa.data_ptr();
  gr.db_eta = b_eta ? dbe.data_ptr() : nullptr;
  gr.db_alpha = b_alpha ? dba.data_ptr() : nullptr;
  if (r.has_init) {
    gr.dp_in = dpi.data_ptr();
    gr.dp_out = dpo.data_ptr();
    gr.dacc_in = dai.data_ptr();
    gr.dacc_out = dao.data_ptr();
    gr.dacc_g = dag.data_ptr();
  }
  size_t bytes = 0;
  at::Tensor ws = workspace(r.p, 1, x, &bytes);
  check_status(
      nlcore_self_modifying_backward(&r.p, &r.t, &gr, ws.data_ptr(), bytes, stream_of(x)),
      "self_modifying_scan_backward");
  return finish();
}

}  // namespace
}  // namespace nlcore::glue

TORCH_LIBRARY_IMPL(nlcore, CUDA, m) {
  m.impl("self_modifying_scan", &nlcore::glue::scan_cuda);
  m.impl("self_modifying_scan_backward", &nlcore::glue::scan_backward_cuda);
}
