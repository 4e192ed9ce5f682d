// nlcore::memory_mlp_scan on CUDA: a thin call into the framework-free C API
// (csrc/include/nlcore/memory_mlp.h). Arguments are checked by the shared glue
// (torch/memory_mlp.h); this file rejects float64, makes the contiguous fp32 copies the C API
// wants, allocates outputs and the workspace on the current stream and translates the status.
// `kernel` = 2 ("persistent") sets NLCORE_MEMORY_MLP_FLAG_PERSISTENT (the forward's persistent
// cluster kernel where the device runs it; the backward is step one either way).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "nlcore/memory_mlp.h"
#include "torch/checks.h"
#include "torch/cuda_status.h"
#include "torch/memory_mlp.h"

namespace nlcore::glue {
namespace {

using Opt = std::optional<at::Tensor>;

struct Prepared {
  nlcore_memory_mlp_problem_t p{};
  nlcore_memory_mlp_tensors_t t{};
  // contiguous: x, k, v in their dtype; gates, weights and state in fp32; n in int64
  at::Tensor x, k, v, eta, g, w_in, w_out, p_in, p_out, acc_in, acc_out, acc_g, n, cu;
  int64_t N, F;
  bool has_init;
};

void reject_f64(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() != at::kDouble, "memory_mlp_scan: float64 is not supported on "
                   "CUDA (", name, " is float64 on ", t.device(),
                   "); use float32, bfloat16 or float16");
}

Prepared prepare(const at::Tensor& x, const at::Tensor& k, const at::Tensor& v,
                 const at::Tensor& eta, const Opt& g, const at::Tensor& w_in,
                 const at::Tensor& w_out, const Opt& p_in, const Opt& p_out, const Opt& acc_in,
                 const Opt& acc_out, const Opt& acc_g, const Opt& n, const Opt& cu_seqlens,
                 int64_t chunk_size, double momentum, c10::string_view activation, bool residual,
                 c10::string_view objective, bool self_target, bool dgd_erase,
                 int64_t checkpoint_every, int64_t kernel) {
  const cpu::MlpScanArgs a = parse_memory_mlp_args(
      chunk_size, momentum, std::string(activation), residual, std::string(objective),
      self_target, dgd_erase, checkpoint_every);
  check_memory_mlp_kernel(kernel);
  check_memory_mlp_counts(check_memory_mlp_args(x, k, v, eta, g, w_in, w_out, p_in, p_out,
                                                acc_in, acc_out, acc_g, n, cu_seqlens),
                          chunk_size);  // n's range: CPU values or NLCORE_DEBUG=1 only
  reject_f64(x, "x");
  reject_f64(eta, "eta");
  reject_f64(w_in, "w_in");
  reject_f64(w_out, "w_out");
  if (g) reject_f64(*g, "g");
  for (auto [t, name] : {std::pair{&p_in, "p_in"}, {&p_out, "p_out"}, {&acc_in, "acc_in"},
                         {&acc_out, "acc_out"}, {&acc_g, "acc_g"}})
    if (t->has_value()) reject_f64(**t, name);

  Prepared r;
  auto f32 = [](const at::Tensor& t) { return t.to(at::kFloat).contiguous(); };
  r.x = x.contiguous();
  r.k = k.contiguous();
  r.v = v.contiguous();
  r.eta = f32(eta);
  if (g) r.g = f32(*g);
  r.w_in = f32(w_in);
  r.w_out = f32(w_out);
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

  nlcore_memory_mlp_problem_t& p = r.p;
  p.batch = x.size(0);
  p.seqlen = x.size(1);
  p.num_sequences = r.N;
  p.heads = static_cast<int32_t>(x.size(2));
  p.head_dim = static_cast<int32_t>(x.size(3));
  p.hidden_dim = static_cast<int32_t>(r.F);
  p.dtype = to_nlcore_dtype(x.scalar_type());
  p.gate_dtype = NLCORE_DTYPE_FLOAT32;
  p.chunk_size = a.chunk_size;
  p.momentum = static_cast<float>(a.momentum);
  p.activation = a.activation == cpu::MlpActivation::kGelu ? NLCORE_MEMORY_MLP_ACT_GELU
                                                           : NLCORE_MEMORY_MLP_ACT_SILU;
  p.objective = a.objective == cpu::MlpObjective::kDot ? NLCORE_MEMORY_MLP_OBJECTIVE_DOT
                                                       : NLCORE_MEMORY_MLP_OBJECTIVE_L2;
  p.residual = a.residual ? 1 : 0;
  p.self_target = a.self_target ? 1 : 0;
  p.dgd_erase = a.dgd_erase ? 1 : 0;
  p.has_g = g.has_value() ? 1 : 0;
  p.weights_shared = w_in.dim() == 3 ? 1 : 0;
  p.has_initial_state = r.has_init ? 1 : 0;
  p.checkpoint_every = a.checkpoint_every;
  p.cu_seqlens = cu_seqlens ? r.cu.data_ptr() : nullptr;
  p.cu_seqlens_dtype = (cu_seqlens && cu_seqlens->scalar_type() == at::kInt)
                           ? NLCORE_DTYPE_INT32
                           : NLCORE_DTYPE_INT64;
  p.flags = kernel == kMlpKernelPersistent ? NLCORE_MEMORY_MLP_FLAG_PERSISTENT
                                           : NLCORE_MEMORY_MLP_FLAG_DEFAULT;

  nlcore_memory_mlp_tensors_t& t = r.t;
  t.x = r.x.data_ptr();
  t.k = r.k.data_ptr();
  t.v = r.v.data_ptr();
  t.eta = r.eta.data_ptr();
  t.g = g ? r.g.data_ptr() : nullptr;
  t.w_in = r.w_in.data_ptr();
  t.w_out = r.w_out.data_ptr();
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

// [N, H, rows, cols] fp32: the per-sequence state shape.
std::vector<int64_t> state_shape(const Prepared& r, int64_t rows, int64_t cols) {
  return {r.N, r.p.heads, rows, cols};
}

at::Tensor workspace(const nlcore_memory_mlp_problem_t& p, int32_t backward,
                     const at::Tensor& like, size_t* bytes) {
  check_status(nlcore_memory_mlp_workspace_size(&p, backward, bytes), "memory_mlp_scan");
  return at::empty({static_cast<int64_t>(*bytes > 0 ? *bytes : 1)},
                   like.options().dtype(at::kByte));
}

cudaStream_t stream_of(const at::Tensor& x) {
  return c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
}

std::vector<at::Tensor> scan_cuda(const at::Tensor& x, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& eta, const Opt& g, const at::Tensor& w_in,
                                  const at::Tensor& w_out, const Opt& p_in, const Opt& p_out,
                                  const Opt& acc_in, const Opt& acc_out, const Opt& acc_g,
                                  const Opt& n, const Opt& cu_seqlens, int64_t chunk_size,
                                  double momentum, c10::string_view activation, bool residual,
                                  c10::string_view objective, bool self_target, bool dgd_erase,
                                  int64_t checkpoint_every, int64_t kernel) {
  NoAutocast no_autocast;
  c10::cuda::CUDAGuard guard(x.device());
  Prepared r = prepare(x, k, v, eta, g, w_in, w_out, p_in, p_out, acc_in, acc_out, acc_g, n,
                       cu_seqlens, chunk_size, momentum, activation, residual, objective,
                       self_target, dgd_erase, checkpoint_every, kernel);
  const int64_t H = r.p.heads, D = r.p.head_dim, F = r.F;
  const auto fopt = x.options().dtype(at::kFloat);
  at::Tensor y = at::empty_like(r.x, at::MemoryFormat::Contiguous);
  at::Tensor wi = at::empty(state_shape(r, F, D), fopt), wo = at::empty(state_shape(r, D, F), fopt);
  at::Tensor pi = at::empty(state_shape(r, F, D), fopt), po = at::empty(state_shape(r, D, F), fopt);
  at::Tensor ai = at::empty(state_shape(r, F, D), fopt), ao = at::empty(state_shape(r, D, F), fopt);
  at::Tensor ag = at::empty({r.N, H}, fopt);
  at::Tensor nf = at::empty({r.N}, x.options().dtype(at::kLong));
  if (r.p.seqlen == 0 || r.p.batch == 0 || r.N == 0) {  // nothing to run: the state passes through
    wi.copy_(r.w_in.expand_as(wi));
    wo.copy_(r.w_out.expand_as(wo));
    if (r.has_init) {
      pi.copy_(r.p_in); po.copy_(r.p_out); ai.copy_(r.acc_in); ao.copy_(r.acc_out);
      ag.copy_(r.acc_g); nf.copy_(r.n);
    } else {
      pi.zero_(); po.zero_(); ai.zero_(); ao.zero_(); ag.zero_(); nf.zero_();
    }
    return {y, wi, wo, pi, po, ai, ao, ag, nf};
  }
  nlcore_memory_mlp_tensors_t& t = r.t;
  t.y = y.data_ptr();
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
  check_status(nlcore_memory_mlp_forward(&r.p, &t, ws.data_ptr(), bytes, stream_of(x)),
               "memory_mlp_scan");
  return {y, wi, wo, pi, po, ai, ao, ag, nf};
}

std::vector<at::Tensor> scan_backward_cuda(
    const at::Tensor& x, const at::Tensor& k, const at::Tensor& v, const at::Tensor& eta,
    const Opt& g, const at::Tensor& w_in, const at::Tensor& w_out, const Opt& p_in,
    const Opt& p_out, const Opt& acc_in, const Opt& acc_out, const Opt& acc_g, const Opt& n,
    const Opt& cu_seqlens, int64_t chunk_size, double momentum, c10::string_view activation,
    bool residual, c10::string_view objective, bool self_target, bool dgd_erase,
    int64_t checkpoint_every, int64_t kernel, const at::Tensor& grad_y, const Opt& grad_w_in,
    const Opt& grad_w_out, const Opt& grad_p_in, const Opt& grad_p_out, const Opt& grad_acc_in,
    const Opt& grad_acc_out, const Opt& grad_acc_g) {
  NoAutocast no_autocast;
  c10::cuda::CUDAGuard guard(x.device());
  Prepared r = prepare(x, k, v, eta, g, w_in, w_out, p_in, p_out, acc_in, acc_out, acc_g, n,
                       cu_seqlens, chunk_size, momentum, activation, residual, objective,
                       self_target, dgd_erase, checkpoint_every, kernel);
  const int64_t H = r.p.heads, D = r.p.head_dim, F = r.F;
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes(), "memory_mlp_scan_backward: grad_y must have "
                    "x's shape ", x.sizes(), ", got ", grad_y.sizes());
  TORCH_CHECK_VALUE(grad_y.device() == x.device(), "memory_mlp_scan_backward: grad_y is on ",
                    grad_y.device(), " but x is on ", x.device());
  at::Tensor gy = grad_y.to(x.scalar_type()).contiguous();
  // Gradients of the final state, in the final state's shapes ([N, H, ...], fp32).
  const std::vector<int64_t> s_in = state_shape(r, F, D), s_out = state_shape(r, D, F);
  const std::vector<int64_t> s_g = {r.N, H};
  const Opt* gf_opt[7] = {&grad_w_in, &grad_w_out, &grad_p_in, &grad_p_out,
                          &grad_acc_in, &grad_acc_out, &grad_acc_g};
  const char* gf_names[7] = {"grad_w_in", "grad_w_out", "grad_p_in", "grad_p_out",
                             "grad_acc_in", "grad_acc_out", "grad_acc_g"};
  const std::vector<int64_t>* gf_shapes[7] = {&s_in, &s_out, &s_in, &s_out, &s_in, &s_out, &s_g};
  at::Tensor gf[7];
  for (int i = 0; i < 7; ++i) {
    if (!gf_opt[i]->has_value()) continue;
    const at::Tensor& t = **gf_opt[i];
    TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(*gf_shapes[i]), "memory_mlp_scan_backward: ",
                      gf_names[i], " must have the final state's shape ",
                      at::IntArrayRef(*gf_shapes[i]), ", got ", t.sizes());
    TORCH_CHECK_VALUE(t.device() == x.device(), "memory_mlp_scan_backward: ", gf_names[i],
                      " is on ", t.device(), " but x is on ", x.device());
    gf[i] = t.to(at::kFloat).contiguous();
  }
  const auto fopt = x.options().dtype(at::kFloat);
  at::Tensor dx = at::empty_like(r.x), dk = at::empty_like(r.k), dv = at::empty_like(r.v);
  at::Tensor deta = at::empty_like(r.eta);
  at::Tensor dg = g ? at::empty_like(r.g) : at::empty({0}, x.options());
  at::Tensor dwi = at::empty(r.w_in.sizes(), fopt), dwo = at::empty(r.w_out.sizes(), fopt);
  at::Tensor dpi, dpo, dai, dao, dag;
  if (r.has_init) {
    dpi = at::empty(s_in, fopt); dpo = at::empty(s_out, fopt);
    dai = at::empty(s_in, fopt); dao = at::empty(s_out, fopt);
    dag = at::empty(s_g, fopt);
  } else {
    for (at::Tensor* d : {&dpi, &dpo, &dai, &dao, &dag}) *d = at::empty({0}, x.options());
  }
  // gradients come back in each input's own dtype
  auto back = [](const at::Tensor& d, const Opt& t) { return t ? d.to(t->scalar_type()) : d; };
  auto finish = [&]() -> std::vector<at::Tensor> {
    return {dx, dk, dv, deta.to(eta.scalar_type()), back(dg, g),
            dwi.to(w_in.scalar_type()), dwo.to(w_out.scalar_type()), back(dpi, p_in),
            back(dpo, p_out), back(dai, acc_in), back(dao, acc_out), back(dag, acc_g)};
  };
  if (r.p.seqlen == 0 || r.p.batch == 0 || r.N == 0) {  // the state passes through
    dx.zero_(); dk.zero_(); dv.zero_(); deta.zero_(); dg.zero_();
    auto pass = [&](at::Tensor& d, const at::Tensor& gfin, bool sum) {
      if (!gfin.defined()) { d.zero_(); return; }
      d.copy_(sum ? gfin.sum(0) : gfin);
    };
    pass(dwi, gf[0], r.p.weights_shared != 0);
    pass(dwo, gf[1], r.p.weights_shared != 0);
    if (r.has_init) {
      pass(dpi, gf[2], false); pass(dpo, gf[3], false); pass(dai, gf[4], false);
      pass(dao, gf[5], false); pass(dag, gf[6], false);
    }
    return finish();
  }
  nlcore_memory_mlp_grads_t gr{};
  gr.grad_y = gy.data_ptr();
  gr.grad_w_in = gf[0].defined() ? gf[0].data_ptr() : nullptr;
  gr.grad_w_out = gf[1].defined() ? gf[1].data_ptr() : nullptr;
  gr.grad_p_in = gf[2].defined() ? gf[2].data_ptr() : nullptr;
  gr.grad_p_out = gf[3].defined() ? gf[3].data_ptr() : nullptr;
  gr.grad_acc_in = gf[4].defined() ? gf[4].data_ptr() : nullptr;
  gr.grad_acc_out = gf[5].defined() ? gf[5].data_ptr() : nullptr;
  gr.grad_acc_g = gf[6].defined() ? gf[6].data_ptr() : nullptr;
  gr.dx = dx.data_ptr();
  gr.dk = dk.data_ptr();
  gr.dv = dv.data_ptr();
  gr.deta = deta.data_ptr();
  gr.dg = g ? dg.data_ptr() : nullptr;
  gr.dw_in = dwi.data_ptr();
  gr.dw_out = dwo.data_ptr();
  if (r.has_init) {
    gr.dp_in = dpi.data_ptr();
    gr.dp_out = dpo.data_ptr();
    gr.dacc_in = dai.data_ptr();
    gr.dacc_out = dao.data_ptr();
    gr.dacc_g = dag.data_ptr();
  }
  size_t bytes = 0;
  at::Tensor ws = workspace(r.p, 1, x, &bytes);
  check_status(nlcore_memory_mlp_backward(&r.p, &r.t, &gr, ws.data_ptr(), bytes, stream_of(x)),
               "memory_mlp_scan_backward");
  return finish();
}

// Which forward scan_cuda runs for these arguments (no launch): ([path, cluster_size,
// smem_bytes], reason) from nlcore_memory_mlp_forward_path on x's device.
std::tuple<std::vector<int64_t>, std::string> scan_path_cuda(
    const at::Tensor& x, const at::Tensor& k, const at::Tensor& v, const at::Tensor& eta,
    const Opt& g, const at::Tensor& w_in, const at::Tensor& w_out, const Opt& p_in,
    const Opt& p_out, const Opt& acc_in, const Opt& acc_out, const Opt& acc_g, const Opt& n,
    const Opt& cu_seqlens, int64_t chunk_size, double momentum, c10::string_view activation,
    bool residual, c10::string_view objective, bool self_target, bool dgd_erase,
    int64_t checkpoint_every, int64_t kernel) {
  NoAutocast no_autocast;
  c10::cuda::CUDAGuard guard(x.device());
  Prepared r = prepare(x, k, v, eta, g, w_in, w_out, p_in, p_out, acc_in, acc_out, acc_g, n,
                       cu_seqlens, chunk_size, momentum, activation, residual, objective,
                       self_target, dgd_erase, checkpoint_every, kernel);
  if (r.p.seqlen == 0 || r.p.batch == 0 || r.N == 0)
    return {std::vector<int64_t>{0, 0, 0}, std::string("empty problem: no kernel runs")};
  nlcore_memory_mlp_path_t path{};
  check_status(nlcore_memory_mlp_forward_path(&r.p, &path), "memory_mlp_scan_path");
  return {std::vector<int64_t>{path.path, path.cluster_size, path.smem_bytes},
          std::string(path.reason != nullptr ? path.reason : "")};
}

}  // namespace
}  // namespace nlcore::glue

TORCH_LIBRARY_IMPL(nlcore, CUDA, m) {
  m.impl("memory_mlp_scan", &nlcore::glue::scan_cuda);
  m.impl("memory_mlp_scan_backward", &nlcore::glue::scan_backward_cuda);
  m.impl("memory_mlp_scan_path", &nlcore::glue::scan_path_cuda);
}
