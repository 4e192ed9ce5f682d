// nlcore::newton_schulz — checks and the CPU impls (forward; backward on every device).
#include "torch/newton_schulz.h"

#include <torch/library.h>

#include <cmath>

#include "torch/checks.h"

namespace nlcore::glue {

cpu::NsArgs check_newton_schulz_args(const at::Tensor& G, at::ArrayRef<double> coefficients,
                                     double eps, double norm_scale, bool norm_additive,
                                     at::ScalarType compute_dtype) {
  TORCH_CHECK_VALUE(G.dim() >= 2, "newton_schulz: G must have at least 2 dims [..., m, n], got ",
                    G.dim(), "-D tensor of shape ", G.sizes());
  TORCH_CHECK_VALUE(G.size(-2) >= 1 && G.size(-1) >= 1,
                    "newton_schulz: G's matrices must be non-empty (m, n >= 1), got shape ",
                    G.sizes());
  TORCH_CHECK_TYPE(is_sequence_dtype(G.scalar_type()),
                   "newton_schulz: G must be float32, bfloat16, float16 or float64, got ",
                   dtype_name(G.scalar_type()));
  TORCH_CHECK_TYPE(compute_dtype == at::kBFloat16 || compute_dtype == at::kHalf ||
                       compute_dtype == at::kFloat,
                   "newton_schulz: compute_dtype must be bfloat16, float16 or float32, got ",
                   dtype_name(compute_dtype));
  TORCH_CHECK_VALUE(!coefficients.empty() && coefficients.size() % 3 == 0,
                    "newton_schulz: coefficients must hold 3 values per step, got ",
                    coefficients.size());
  for (double v : coefficients)
    TORCH_CHECK_VALUE(std::isfinite(v), "newton_schulz: coefficients must be finite, got ", v);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "newton_schulz: eps must be >= 0, got ", eps);
  TORCH_CHECK_VALUE(std::isfinite(norm_scale) && norm_scale > 0,
                    "newton_schulz: norm_scale must be > 0, got ", norm_scale);
  return cpu::NsArgs{coefficients.vec(), eps, norm_scale, norm_additive, compute_dtype};
}

namespace {

at::Tensor newton_schulz_cpu(const at::Tensor& G, at::ArrayRef<double> coefficients, double eps,
                             double norm_scale, bool norm_additive,
                             at::ScalarType compute_dtype, int64_t flags) {
  auto args = check_newton_schulz_args(G, coefficients, eps, norm_scale, norm_additive,
                                       compute_dtype);
  NoAutocast no_autocast;  // our kernels pick their own precision
  return cpu::newton_schulz_forward(G, args);
}

at::Tensor newton_schulz_backward_any(const at::Tensor& grad, const at::Tensor& G,
                                      at::ArrayRef<double> coefficients, double eps,
                                      double norm_scale, bool norm_additive,
                                      at::ScalarType compute_dtype) {
  auto args = check_newton_schulz_args(G, coefficients, eps, norm_scale, norm_additive,
                                       compute_dtype);
  TORCH_CHECK_VALUE(grad.sizes() == G.sizes(), "newton_schulz_backward: grad has shape ",
                    grad.sizes(), " but G has shape ", G.sizes());
  TORCH_CHECK_VALUE(grad.device() == G.device(), "newton_schulz_backward: grad is on ",
                    grad.device(), " but G is on ", G.device());
  NoAutocast no_autocast;  // our kernels pick their own precision
  return cpu::newton_schulz_backward(grad, G, args);
}

}  // namespace

void define_newton_schulz(torch::Library& m) {
  m.def(
      "newton_schulz(Tensor G, float[] coefficients, float eps, float norm_scale, "
      "bool norm_additive, ScalarType compute_dtype, int flags=0) -> Tensor");
  m.def(
      "newton_schulz_backward(Tensor grad, Tensor G, float[] coefficients, float eps, "
      "float norm_scale, bool norm_additive, ScalarType compute_dtype) -> Tensor");
}

}  // namespace nlcore::glue

TORCH_LIBRARY_IMPL(nlcore, CPU, m) {
  m.impl("newton_schulz", &nlcore::glue::newton_schulz_cpu);
}

TORCH_LIBRARY_IMPL(nlcore, CompositeExplicitAutograd, m) {
  m.impl("newton_schulz_backward", &nlcore::glue::newton_schulz_backward_any);
}
