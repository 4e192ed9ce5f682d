// nlcore::memory_mlp_scan — schema, argument checks, the CPU impls.
#include "torch/memory_mlp.h"

#include <torch/library.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "torch/checks.h"

namespace nlcore::glue {
namespace {

constexpr const char* kOp = "memory_mlp_scan";

void check_float(const at::Tensor& t, const char* name) { check_float_arg(kOp, t, name); }

void check_device(const at::Tensor& t, const at::Tensor& ref, const char* name) {
  check_same_device(kOp, t, ref, name, "x");
}

void check_shape(const at::Tensor& t, at::IntArrayRef want, const char* name, const char* what) {
  check_shape_arg(kOp, t, want, name, what);
}

}  // namespace

cpu::MlpScanInputs check_memory_mlp_args(
    const at::Tensor& x, const at::Tensor& k, const at::Tensor& v, const at::Tensor& eta,
    const std::optional<at::Tensor>& g, const at::Tensor& w_in, const at::Tensor& w_out,
    const std::optional<at::Tensor>& p_in, const std::optional<at::Tensor>& p_out,
    const std::optional<at::Tensor>& acc_in, const std::optional<at::Tensor>& acc_out,
    const std::optional<at::Tensor>& acc_g, const std::optional<at::Tensor>& n,
    const std::optional<at::Tensor>& cu_seqlens) {
  TORCH_CHECK_VALUE(x.dim() == 4, kOp, ": x must be [B, T, H, D], got shape ", x.sizes());
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3);
  TORCH_CHECK_VALUE(H >= 1 && D >= 1, kOp, ": x must have H >= 1 heads and D >= 1, got ",
                    x.sizes());
  check_shape(k, x.sizes(), "k", "x's shape [B, T, H, D]");
  check_shape(v, x.sizes(), "v", "x's shape [B, T, H, D]");
  for (auto [t, name] : {std::pair{&x, "x"}, {&k, "k"}, {&v, "v"}, {&eta, "eta"},
                         {&w_in, "w_in"}, {&w_out, "w_out"}}) {
    check_float(*t, name);
    check_device(*t, x, name);
  }
  TORCH_CHECK_TYPE(x.scalar_type() == k.scalar_type() && x.scalar_type() == v.scalar_type(), kOp,
                   ": x, k and v must share one dtype, got ", dtype_name(x.scalar_type()), ", ",
                   dtype_name(k.scalar_type()), ", ", dtype_name(v.scalar_type()));
  const std::vector<int64_t> tok = {B, T, H};
  check_shape(eta, tok, "eta", "[B, T, H]");
  if (g) {
    check_float(*g, "g");
    check_device(*g, x, "g");
    check_shape(*g, tok, "g", "[B, T, H]");
  }
  const int64_t N = cu_seqlens ? check_cu_seqlens(kOp, *cu_seqlens, x, "x", B, T) : B;
  // Weights: [H, F, D] / [H, D, F] shared, or [N, H, F, D] / [N, H, D, F].
  TORCH_CHECK_VALUE((w_in.dim() == 3 || w_in.dim() == 4) && w_in.size(-1) == D &&
                        w_in.size(-3) == H && w_in.size(-2) >= 1 &&
                        (w_in.dim() == 3 || w_in.size(0) == N),
                    kOp, ": w_in must be [H, F, D] or [N, H, F, D] with H = ", H, ", D = ", D,
                    ", N = ", N, ", got shape ", w_in.sizes());
  const int64_t F = w_in.size(-2);
  std::vector<int64_t> want_out = {H, D, F};
  if (w_in.dim() == 4) want_out.insert(want_out.begin(), N);
  check_shape(w_out, want_out, "w_out", w_in.dim() == 4 ? "[N, H, D, F]" : "[H, D, F]");
  const bool any = p_in || p_out || acc_in || acc_out || acc_g || n;
  const bool all = p_in && p_out && acc_in && acc_out && acc_g && n;
  TORCH_CHECK_VALUE(any == all, kOp,
                    ": the initial state's p_in, p_out, acc_in, acc_out, acc_g and n must be "
                    "given together");
  if (all) {
    TORCH_CHECK_VALUE(w_in.dim() == 4, kOp,
                      ": with an initial state the weights must be per sequence [N, H, F, D], "
                      "got w_in of shape ", w_in.sizes());
    const std::vector<int64_t> s_in = {N, H, F, D}, s_out = {N, H, D, F}, s_g = {N, H};
    for (auto [t, name, shape] :
         {std::tuple{&p_in, "p_in", &s_in}, {&p_out, "p_out", &s_out}, {&acc_in, "acc_in", &s_in},
          {&acc_out, "acc_out", &s_out}, {&acc_g, "acc_g", &s_g}}) {
      check_float(**t, name);
      check_device(**t, x, name);
      check_shape(**t, *shape, name, "the state shape");
    }
    TORCH_CHECK_TYPE(n->scalar_type() == at::kLong || n->scalar_type() == at::kInt, kOp,
                     ": n must be an int64 tensor, got ", dtype_name(n->scalar_type()));
    check_device(*n, x, "n");
    check_shape(*n, {N}, "n", "[N]");
  }
  return cpu::MlpScanInputs{x, k, v, eta, g, w_in, w_out, p_in, p_out, acc_in, acc_out,
                            acc_g, n, cu_seqlens};
}

cpu::MlpScanArgs parse_memory_mlp_args(int64_t chunk_size, double momentum,
                                       const std::string& activation, bool residual,
                                       const std::string& objective, bool self_target,
                                       bool dgd_erase, int64_t checkpoint_every) {
  TORCH_CHECK_VALUE(chunk_size >= 1, kOp, ": chunk_size must be an int >= 1, got ", chunk_size);
  TORCH_CHECK_VALUE(std::isfinite(momentum), kOp, ": momentum must be finite, got ", momentum);
  TORCH_CHECK_VALUE(activation == "silu" || activation == "gelu", kOp,
                    ": activation must be 'silu' or 'gelu', got '", activation, "'");
  TORCH_CHECK_VALUE(objective == "l2" || objective == "dot", kOp,
                    ": objective must be 'l2' or 'dot', got '", objective, "'");
  TORCH_CHECK_VALUE(checkpoint_every >= 1, kOp, ": checkpoint_every must be >= 1, got ",
                    checkpoint_every);
  return cpu::MlpScanArgs{chunk_size,
                          momentum,
                          activation == "silu" ? cpu::MlpActivation::kSilu
                                               : cpu::MlpActivation::kGelu,
                          residual,
                          objective == "l2" ? cpu::MlpObjective::kL2 : cpu::MlpObjective::kDot,
                          self_target,
                          dgd_erase,
                          checkpoint_every};
}

void check_memory_mlp_kernel(int64_t kernel) {
  TORCH_CHECK_VALUE(kernel == kMlpKernelAuto || kernel == kMlpKernelStep ||
                        kernel == kMlpKernelPersistent,
                    kOp, ": kernel must be 0 (\"auto\"), 1 (\"step\") or 2 (\"persistent\"), got ",
                    kernel);
}

void check_memory_mlp_counts(const cpu::MlpScanInputs& in, int64_t chunk_size) {
  if (!in.n || !(in.n->device().is_cpu() || debug_checks())) return;
  const at::Tensor n = in.n->to(at::kCPU, at::kLong).contiguous();
  const int64_t* p = n.data_ptr<int64_t>();
  for (int64_t i = 0; i < n.numel(); ++i)
    TORCH_CHECK_VALUE(p[i] >= 0 && p[i] < chunk_size, kOp, ": n[", i, "] = ", p[i],
                      " must be in [0, chunk_size = ", chunk_size, ")");
}

namespace {

using Opt = std::optional<at::Tensor>;

std::vector<at::Tensor> scan_cpu(const at::Tensor& x, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& eta, const Opt& g, const at::Tensor& w_in,
                                 const at::Tensor& w_out, const Opt& p_in, const Opt& p_out,
                                 const Opt& acc_in, const Opt& acc_out, const Opt& acc_g,
                                 const Opt& n, const Opt& cu_seqlens, int64_t chunk_size,
                                 double momentum, c10::string_view activation, bool residual,
                                 c10::string_view objective, bool self_target, bool dgd_erase,
                                 int64_t checkpoint_every, int64_t kernel) {
  NoAutocast no_autocast;
  const cpu::MlpScanArgs a = parse_memory_mlp_args(
      chunk_size, momentum, std::string(activation), residual, std::string(objective),
      self_target, dgd_erase, checkpoint_every);
  check_memory_mlp_kernel(kernel);  // CUDA-only choice: the CPU op has one algorithm
  const cpu::MlpScanInputs in = check_memory_mlp_args(x, k, v, eta, g, w_in, w_out, p_in, p_out,
                                                      acc_in, acc_out, acc_g, n, cu_seqlens);
  check_memory_mlp_counts(in, chunk_size);
  return cpu::memory_mlp_scan_forward(in, a);
}

// The path query on CPU tensors: the CPU op (path −1), after the same checks as the op.
std::tuple<std::vector<int64_t>, std::string> scan_path_cpu(
    const at::Tensor& x, const at::Tensor& k, const at::Tensor& v, const at::Tensor& eta,
    const Opt& g, const at::Tensor& w_in, const at::Tensor& w_out, const Opt& p_in,
    const Opt& p_out, const Opt& acc_in, const Opt& acc_out, const Opt& acc_g, const Opt& n,
    const Opt& cu_seqlens, int64_t chunk_size, double momentum, c10::string_view activation,
    bool residual, c10::string_view objective, bool self_target, bool dgd_erase,
    int64_t checkpoint_every, int64_t kernel) {
  parse_memory_mlp_args(chunk_size, momentum, std::string(activation), residual,
                        std::string(objective), self_target, dgd_erase, checkpoint_every);
  check_memory_mlp_kernel(kernel);
  check_memory_mlp_args(x, k, v, eta, g, w_in, w_out, p_in, p_out, acc_in, acc_out, acc_g, n,
                        cu_seqlens);
  return {std::vector<int64_t>{-1, 0, 0}, std::string("CPU tensors: the CPU op")};
}

std::vector<at::Tensor> scan_backward_cpu(
    const at::Tensor& x, const at::Tensor& k, const at::Tensor& v, const at::Tensor& eta,
    const Opt& g, const at::Tensor& w_in, const at::Tensor& w_out, const Opt& p_in,
    const Opt& p_out, const Opt& acc_in, const Opt& acc_out, const Opt& acc_g, const Opt& n,
    const Opt& cu_seqlens, int64_t chunk_size, double momentum, c10::string_view activation,
    bool residual, c10::string_view objective, bool self_target, bool dgd_erase,
    int64_t checkpoint_every, int64_t kernel, const at::Tensor& grad_y, const Opt& grad_w_in,
    const Opt& grad_w_out, const Opt& grad_p_in, const Opt& grad_p_out, const Opt& grad_acc_in,
    const Opt& grad_acc_out, const Opt& grad_acc_g) {
  NoAutocast no_autocast;
  const cpu::MlpScanArgs a = parse_memory_mlp_args(
      chunk_size, momentum, std::string(activation), residual, std::string(objective),
      self_target, dgd_erase, checkpoint_every);
  check_memory_mlp_kernel(kernel);
  const cpu::MlpScanInputs in = check_memory_mlp_args(x, k, v, eta, g, w_in, w_out, p_in, p_out,
                                                      acc_in, acc_out, acc_g, n, cu_seqlens);
  check_memory_mlp_counts(in, chunk_size);
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes(), "memory_mlp_scan_backward: grad_y must have "
                    "x's shape ", x.sizes(), ", got ", grad_y.sizes());
  std::vector<at::Tensor> d_final;
  for (const Opt* t : {&grad_w_in, &grad_w_out, &grad_p_in, &grad_p_out, &grad_acc_in,
                       &grad_acc_out, &grad_acc_g})
    d_final.push_back(t->has_value() ? **t : at::Tensor());
  return cpu::memory_mlp_scan_backward(in, grad_y, d_final, a);
}

}  // namespace

#define NLCORE_MLP_SCAN_INPUTS                                                                 \
  "Tensor x, Tensor k, Tensor v, Tensor eta, Tensor? g, Tensor w_in, Tensor w_out, "           \
  "Tensor? p_in, Tensor? p_out, Tensor? acc_in, Tensor? acc_out, Tensor? acc_g, Tensor? n, "   \
  "Tensor? cu_seqlens, int chunk_size, float momentum, str activation, bool residual, "        \
  "str objective, bool self_target, bool dgd_erase, int checkpoint_every, int kernel"

void define_memory_mlp(torch::Library& m) {
  // Outputs: y and the final state (w_in, w_out, p_in, p_out, acc_in, acc_out, acc_g, n).
  m.def("memory_mlp_scan(" NLCORE_MLP_SCAN_INPUTS ") -> Tensor[]");
  // Outputs: dx, dk, dv, deta, dg, dw_in, dw_out, dp_in, dp_out, dacc_in, dacc_out, dacc_g.
  m.def("memory_mlp_scan_backward(" NLCORE_MLP_SCAN_INPUTS
        ", Tensor grad_y, Tensor? grad_w_in, Tensor? grad_w_out, Tensor? grad_p_in, "
        "Tensor? grad_p_out, Tensor? grad_acc_in, Tensor? grad_acc_out, Tensor? grad_acc_g) "
        "-> Tensor[]");
  // Which forward the op runs for these arguments: ([path, cluster_size, smem_bytes], reason),
  // path −1 = the CPU op, 0 = CUDA step one, 1 = CUDA persistent (nlcore_memory_mlp_forward_path).
  m.def("memory_mlp_scan_path(" NLCORE_MLP_SCAN_INPUTS ") -> (int[], str)");
}

}  // namespace nlcore::glue

TORCH_LIBRARY_IMPL(nlcore, CPU, m) {
  m.impl("memory_mlp_scan", &nlcore::glue::scan_cpu);
  m.impl("memory_mlp_scan_backward", &nlcore::glue::scan_backward_cpu);
  m.impl("memory_mlp_scan_path", &nlcore::glue::scan_path_cpu);
}
