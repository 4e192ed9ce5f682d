// nlcore::self_modifying_scan — schema, argument checks, the CPU impls.
#include "torch/self_modifying.h"

#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "torch/checks.h"

namespace nlcore::glue {
namespace {

constexpr const char* kOp = "self_modifying_scan";
using Opt = std::optional<at::Tensor>;

void check_float(const at::Tensor& t, const char* name, const at::Tensor& x) {
  check_float_arg(kOp, t, name);
  check_same_device(kOp, t, x, name, "x");
}

void check_shape(const at::Tensor& t, at::IntArrayRef want, const char* name, const char* what) {
  check_shape_arg(kOp, t, want, name, what);
}

}  // namespace

cpu::SelfModInputs check_self_modifying_args(
    const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& w_out,
    const at::Tensor& w_eta, const at::Tensor& w_alpha, const Opt& b_eta, const Opt& b_alpha,
    const Opt& p_in, const Opt& p_out, const Opt& acc_in, const Opt& acc_out, const Opt& acc_g,
    const Opt& n, const Opt& cu_seqlens, int64_t chunk_size) {
  TORCH_CHECK_VALUE(x.dim() == 4, kOp, ": x must be [B, T, H, D], got shape ", x.sizes());
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3);
  TORCH_CHECK_VALUE(H >= 1 && D >= 1, kOp, ": x must have H >= 1 heads and D >= 1, got ",
                    x.sizes());
  for (auto [t, name] : {std::pair{&x, "x"}, {&w_in, "w_in"}, {&w_out, "w_out"},
                         {&w_eta, "w_eta"}, {&w_alpha, "w_alpha"}})
    check_float(*t, name, x);
  const int64_t N = cu_seqlens ? check_cu_seqlens(kOp, *cu_seqlens, x, "x", B, T) : B;
  // Weights: [4, H, F, D] / [4, H, D, F] shared, or [4, N, H, F, D] / [4, N, H, D, F].
  const int64_t M = cpu::kSelfModMemories;
  TORCH_CHECK_VALUE((w_in.dim() == 4 || w_in.dim() == 5) && w_in.size(0) == M &&
                        w_in.size(-1) == D && w_in.size(-3) == H && w_in.size(-2) >= 1 &&
                        (w_in.dim() == 4 || w_in.size(1) == N),
                    kOp, ": w_in must be [4, H, F, D] or [4, N, H, F, D] (memories k, v, eta, "
                    "alpha) with H = ", H, ", D = ", D, ", N = ", N, ", got shape ",
                    w_in.sizes());
  const int64_t F = w_in.size(-2);
  std::vector<int64_t> want_out = {M, H, D, F};
  if (w_in.dim() == 5) want_out.insert(want_out.begin() + 1, N);
  check_shape(w_out, want_out, "w_out", w_in.dim() == 5 ? "[4, N, H, D, F]" : "[4, H, D, F]");
  check_shape(w_eta, {H, D}, "w_eta", "[H, D]");
  check_shape(w_alpha, {H, D}, "w_alpha", "[H, D]");
  for (auto [t, name] : {std::pair{&b_eta, "b_eta"}, {&b_alpha, "b_alpha"}}) {
    if (!t->has_value()) continue;
    check_float(**t, name, x);
    check_shape(**t, {H}, name, "[H]");
  }
  const bool any = p_in || p_out || acc_in || acc_out || acc_g || n;
  const bool all = p_in && p_out && acc_in && acc_out && acc_g && n;
  TORCH_CHECK_VALUE(any == all, kOp,
                    ": the initial state's p_in, p_out, acc_in, acc_out, acc_g and n must be "
                    "given together");
  if (all) {
    TORCH_CHECK_VALUE(w_in.dim() == 5, kOp,
                      ": with an initial state the weights must be per sequence [4, N, H, F, D], "
                      "got w_in of shape ", w_in.sizes());
    const std::vector<int64_t> s_in = {M, N, H, F, D}, s_out = {M, N, H, D, F}, s_g = {N, H};
    for (auto [t, name, shape] :
         {std::tuple{&p_in, "p_in", &s_in}, {&p_out, "p_out", &s_out}, {&acc_in, "acc_in", &s_in},
          {&acc_out, "acc_out", &s_out}, {&acc_g, "acc_g", &s_g}}) {
      check_float(**t, name, x);
      check_shape(**t, *shape, name, "the state shape");
    }
    TORCH_CHECK_TYPE(n->scalar_type() == at::kLong || n->scalar_type() == at::kInt, kOp,
                     ": n must be an int64 tensor, got ", dtype_name(n->scalar_type()));
    TORCH_CHECK_VALUE(n->device() == x.device(), kOp, ": n is on ", n->device(), " but x is on ",
                      x.device());
    check_shape(*n, {N}, "n", "[N]");
    if (n->device().is_cpu() || debug_checks()) {  // reads the values
      const at::Tensor c = n->to(at::kCPU, at::kLong).contiguous();
      const int64_t* v = c.data_ptr<int64_t>();
      for (int64_t i = 0; i < N; ++i)
        TORCH_CHECK_VALUE(v[i] >= 0 && v[i] < chunk_size, kOp, ": n[", i, "] = ", v[i],
                          " must be in [0, chunk_size = ", chunk_size, ")");
    }
  }
  return cpu::SelfModInputs{x,     w_in,  w_out,   w_eta, w_alpha, b_eta, b_alpha, p_in,
                            p_out, acc_in, acc_out, acc_g, n,      cu_seqlens};
}

cpu::SelfModArgs parse_self_modifying_args(int64_t chunk_size, double eta_max, double momentum,
                                           const std::string& activation, bool dgd_erase,
                                           int64_t checkpoint_every) {
  TORCH_CHECK_VALUE(chunk_size >= 1, kOp, ": chunk_size must be an int >= 1, got ", chunk_size);
  TORCH_CHECK_VALUE(std::isfinite(eta_max) && eta_max > 0, kOp,
                    ": eta_max must be a finite number > 0, got ", eta_max);
  TORCH_CHECK_VALUE(std::isfinite(momentum), kOp, ": momentum must be finite, got ", momentum);
  TORCH_CHECK_VALUE(activation == "silu" || activation == "gelu", kOp,
                    ": activation must be 'silu' or 'gelu', got '", activation, "'");
  TORCH_CHECK_VALUE(checkpoint_every >= 1, kOp, ": checkpoint_every must be >= 1, got ",
                    checkpoint_every);
  return cpu::SelfModArgs{chunk_size, eta_max, momentum,
                          activation == "silu" ? cpu::MlpActivation::kSilu
                                               : cpu::MlpActivation::kGelu,
                          dgd_erase, checkpoint_every};
}

namespace {

std::vector<at::Tensor> scan_cpu(const at::Tensor& x, const at::Tensor& w_in,
                                 const at::Tensor& w_out, const at::Tensor& w_eta,
                                 const at::Tensor& w_alpha, const Opt& b_eta, const Opt& b_alpha,
                                 const Opt& p_in, const Opt& p_out, const Opt& acc_in,
                                 const Opt& acc_out, const Opt& acc_g, const Opt& n,
                                 const Opt& cu_seqlens, int64_t chunk_size, double eta_max,
                                 double momentum, c10::string_view activation, bool dgd_erase,
                                 int64_t checkpoint_every) {
  NoAutocast no_autocast;
  const cpu::SelfModArgs a = parse_self_modifying_args(
      chunk_size, eta_max, momentum, std::string(activation), dgd_erase, checkpoint_every);
  return cpu::self_modifying_scan_forward(
      check_self_modifying_args(x, w_in, w_out, w_eta, w_alpha, b_eta, b_alpha, p_in, p_out,
                                acc_in, acc_out, acc_g, n, cu_seqlens, chunk_size),
      a);
}

std::vector<at::Tensor> scan_backward_cpu(
    const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& w_out,
    const at::Tensor& w_eta, const at::Tensor& w_alpha, const Opt& b_eta, const Opt& b_alpha,
    const Opt& p_in, const Opt& p_out, const Opt& acc_in, const Opt& acc_out, const Opt& acc_g,
    const Opt& n, const Opt& cu_seqlens, int64_t chunk_size, double eta_max, double momentum,
    c10::string_view activation, bool dgd_erase, int64_t checkpoint_every, const Opt& grad_k,
    const Opt& grad_v, const Opt& grad_eta, const Opt& grad_g, const Opt& grad_w_in,
    const Opt& grad_w_out, const Opt& grad_p_in, const Opt& grad_p_out, const Opt& grad_acc_in,
    const Opt& grad_acc_out, const Opt& grad_acc_g) {
  NoAutocast no_autocast;
  const cpu::SelfModArgs a = parse_self_modifying_args(
      chunk_size, eta_max, momentum, std::string(activation), dgd_erase, checkpoint_every);
  const cpu::SelfModInputs in =
      check_self_modifying_args(x, w_in, w_out, w_eta, w_alpha, b_eta, b_alpha, p_in, p_out,
                                acc_in, acc_out, acc_g, n, cu_seqlens, chunk_size);
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3);
  auto get = [](const Opt& t) { return t.has_value() ? *t : at::Tensor(); };
  std::vector<at::Tensor> d_out = {get(grad_k), get(grad_v), get(grad_eta), get(grad_g)};
  const std::vector<int64_t> tok = {B, T, H, D};
  for (auto [t, name, nd] : {std::tuple{&grad_k, "grad_k", 4}, {&grad_v, "grad_v", 4},
                             {&grad_eta, "grad_eta", 3}, {&grad_g, "grad_g", 3}})
    if (t->has_value())
      TORCH_CHECK_VALUE((*t)->sizes() == at::IntArrayRef(tok.data(), nd),
                        "self_modifying_scan_backward: ", name, " must be ",
                        at::IntArrayRef(tok.data(), nd), ", got ", (*t)->sizes());
  std::vector<at::Tensor> d_final;
  for (const Opt* t : {&grad_w_in, &grad_w_out, &grad_p_in, &grad_p_out, &grad_acc_in,
                       &grad_acc_out, &grad_acc_g})
    d_final.push_back(get(*t));
  return cpu::self_modifying_scan_backward(in, d_out, d_final, a);
}

}  // namespace

void define_self_modifying(torch::Library& m) {
  m.def("self_modifying_scan(" NLCORE_SELF_MOD_INPUTS ") -> Tensor[]");
  m.def("self_modifying_scan_backward(" NLCORE_SELF_MOD_INPUTS ", " NLCORE_SELF_MOD_GRADS
        ") -> Tensor[]");
}

}  // namespace nlcore::glue

TORCH_LIBRARY_IMPL(nlcore, CPU, m) {
  m.impl("self_modifying_scan", &nlcore::glue::scan_cpu);
  m.impl("self_modifying_scan_backward", &nlcore::glue::scan_backward_cpu);
}
