// nlcore::m3_muon_pre_ / m3_muon_post_ — schemas, checks and the CPU impls (ATen, per tensor).
// The elementwise step of the M3 optimizer's muon variant (DESIGN §4, nlcore/m3.h):
//   pre:  m1 = lerp(m1, g, 1 - beta1);  s = s + g;  fast = nesterov ? lerp(g, m1, beta1) : m1
//   post: p = p * decay;  p = p - lr[i] * (u + alpha * o2)
// Arithmetic in fp32 (fp64 for float64 tensors on CPU), one rounding per result.
#include "torch/m3.h"

#include <torch/library.h>

#include <cmath>

#include "torch/checks.h"

namespace nlcore::glue {
namespace {

bool is_m3_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kDouble;
}

// Every list has the reference list's length; tensor i of each list has the shape, dtype and
// device of reference[i]; all tensors on one device.
void check_lists(const char* op, std::initializer_list<std::pair<const char*, at::TensorList>> ls) {
  const auto& ref = *ls.begin();
  const int64_t n = static_cast<int64_t>(ref.second.size());
  for (const auto& l : ls)
    TORCH_CHECK_VALUE(static_cast<int64_t>(l.second.size()) == n, op, ": ", l.first, " has ",
                      l.second.size(), " tensors but ", ref.first, " has ", n);
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& r = ref.second[i];
    TORCH_CHECK_VALUE(r.defined(), op, ": ", ref.first, "[", i, "] is undefined");
    TORCH_CHECK_TYPE(is_m3_dtype(r.scalar_type()), op, ": ", ref.first, "[", i,
                     "] must be float32, bfloat16 or float16 (float64 on CPU), got ",
                     dtype_name(r.scalar_type()));
    TORCH_CHECK_VALUE(r.device() == ref.second[0].device(), op, ": ", ref.first, "[", i,
                      "] is on ", r.device(), " but ", ref.first, "[0] is on ",
                      ref.second[0].device());
    for (const auto& l : ls) {
      const at::Tensor& t = l.second[i];
      TORCH_CHECK_VALUE(t.defined(), op, ": ", l.first, "[", i, "] is undefined");
      TORCH_CHECK_VALUE(t.sizes() == r.sizes(), op, ": ", l.first, "[", i, "] has shape ",
                        t.sizes(), " but ", ref.first, "[", i, "] has shape ", r.sizes());
      TORCH_CHECK_TYPE(t.scalar_type() == r.scalar_type(), op, ": ", l.first, "[", i, "] is ",
                       dtype_name(t.scalar_type()), " but ", ref.first, "[", i, "] is ",
                       dtype_name(r.scalar_type()));
      TORCH_CHECK_VALUE(t.device() == r.device(), op, ": ", l.first, "[", i, "] is on ",
                        t.device(), " but ", ref.first, "[", i, "] is on ", r.device());
    }
  }
}

void check_finite(const char* op, const char* name, double v) {
  TORCH_CHECK_VALUE(std::isfinite(v), op, ": ", name, " must be finite, got ", v);
}

}  // namespace

void check_m3_muon_pre_args(at::TensorList momentum, at::TensorList slow_sum, at::TensorList fast,
                            at::TensorList grads, double beta1) {
  check_lists("m3_muon_pre_", {{"momentum", momentum},
                               {"slow_sum", slow_sum},
                               {"fast", fast},
                               {"grads", grads}});
  check_finite("m3_muon_pre_", "beta1", beta1);
}

void check_m3_muon_post_args(at::TensorList params, at::TensorList updates,
                             at::TensorList slow_update, at::ArrayRef<double> lr, double decay,
                             double alpha) {
  check_lists("m3_muon_post_",
              {{"params", params}, {"updates", updates}, {"slow_update", slow_update}});
  TORCH_CHECK_VALUE(lr.size() == params.size(), "m3_muon_post_: lr has ", lr.size(),
                    " values but params has ", params.size(), " tensors");
  for (size_t i = 0; i < lr.size(); ++i)
    TORCH_CHECK_VALUE(std::isfinite(lr[i]), "m3_muon_post_: lr[", i, "] must be finite, got ",
                      lr[i]);
  check_finite("m3_muon_post_", "decay", decay);
  check_finite("m3_muon_post_", "alpha", alpha);
}

namespace {

void m3_muon_pre_cpu(at::TensorList momentum, at::TensorList slow_sum, at::TensorList fast,
                     at::TensorList grads, double beta1, bool nesterov) {
  check_m3_muon_pre_args(momentum, slow_sum, fast, grads, beta1);
  NoAutocast no_autocast;
  // lerp_ / add_ compute in the opmath type (fp32 for 16-bit dtypes) and round once.
  for (size_t i = 0; i < momentum.size(); ++i) {
    at::Tensor m1 = momentum[i], s = slow_sum[i], f = fast[i];
    const at::Tensor& g = grads[i];
    m1.lerp_(g, 1.0 - beta1);
    s.add_(g);
    if (nesterov)
      f.copy_(at::lerp(g, m1, beta1));
    else
      f.copy_(m1);
  }
}

void m3_muon_post_cpu(at::TensorList params, at::TensorList updates, at::TensorList slow_update,
                      at::ArrayRef<double> lr, double decay, double alpha) {
  check_m3_muon_post_args(params, updates, slow_update, lr, decay, alpha);
  NoAutocast no_autocast;
  for (size_t i = 0; i < params.size(); ++i) {
    at::Tensor p = params[i];
    const at::Tensor& u = updates[i];
    const at::Tensor& o2 = slow_update[i];
    const bool wide = p.scalar_type() == at::kFloat || p.scalar_type() == at::kDouble;
    if (wide) {  // in place: the same ops (and roundings) as the optimizer's foreach path
      if (decay != 1.0) p.mul_(decay);
      p.add_(alpha != 0.0 ? u.add(o2, alpha) : u, -lr[i]);
    } else {  // 16-bit: fp32 throughout, one rounding
      at::Tensor pf = p.to(at::kFloat);
      if (decay != 1.0) pf.mul_(decay);
      at::Tensor uf = u.to(at::kFloat);
      if (alpha != 0.0) uf.add_(o2.to(at::kFloat), alpha);
      pf.add_(uf, -lr[i]);
      p.copy_(pf);
    }
  }
}

}  // namespace

void define_m3(torch::Library& m) {
  m.def(
      "m3_muon_pre_(Tensor(a!)[] momentum, Tensor(b!)[] slow_sum, Tensor(c!)[] fast, "
      "Tensor[] grads, float beta1, bool nesterov) -> ()");
  m.def(
      "m3_muon_post_(Tensor(a!)[] params, Tensor[] updates, Tensor[] slow_update, float[] lr, "
      "float decay, float alpha) -> ()");
}

}  // namespace nlcore::glue

TORCH_LIBRARY_IMPL(nlcore, CPU, m) {
  m.impl("m3_muon_pre_", &nlcore::glue::m3_muon_pre_cpu);
  m.impl("m3_muon_post_", &nlcore::glue::m3_muon_post_cpu);
}
