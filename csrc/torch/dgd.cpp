// nlcore::dgd — schema, argument checks, the CPU impls.
#include <torch/library.h>

#include <cmath>

#include "torch/checks.h"
#include "torch/dgd.h"

namespace nlcore::glue {
namespace {

void check_float(const at::Tensor& t, const char* name) { check_float_arg("dgd", t, name); }

void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* name) {
  glue::check_same_device("dgd", t, ref, name, "q");
}

}  // namespace

cpu::DgdInputs check_dgd_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& beta, const std::optional<at::Tensor>& g,
                              const std::optional<at::Tensor>& erase,
                              const std::optional<at::Tensor>& initial_state,
                              const std::optional<at::Tensor>& cu_seqlens, double scale,
                              int64_t chunk_size) {
  TORCH_CHECK_VALUE(q.dim() == 4, "dgd: q must be [B, T, H, K], got shape ", q.sizes());
  TORCH_CHECK_VALUE(k.sizes() == q.sizes(), "dgd: k must have q's shape ", q.sizes(), ", got ",
                    k.sizes());
  TORCH_CHECK_VALUE(v.dim() == 4 && v.size(0) == q.size(0) && v.size(1) == q.size(1),
                    "dgd: v must be [B, T, HV, V] with q's B and T (", q.size(0), ", ", q.size(1),
                    "), got shape ", v.sizes());
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), K = q.size(3), HV = v.size(2),
                V = v.size(3);
  TORCH_CHECK_VALUE(H >= 1 && HV >= 1 && HV % H == 0, "dgd: v's heads (", HV,
                    ") must be a positive multiple of q/k's heads (", H, ")");
  TORCH_CHECK_VALUE(K >= 1 && V >= 1, "dgd: head dims must be >= 1, got K = ", K, ", V = ", V);
  for (auto [t, name] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}, {&beta, "beta"}}) {
    check_float(*t, name);
    check_same_device(*t, q, name);
  }
  TORCH_CHECK_TYPE(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
                   "dgd: q, k and v must share one dtype, got ", dtype_name(q.scalar_type()), ", ",
                   dtype_name(k.scalar_type()), ", ", dtype_name(v.scalar_type()));
  const std::vector<int64_t> gate_shape = {B, T, HV};
  TORCH_CHECK_VALUE(beta.sizes() == at::IntArrayRef(gate_shape), "dgd: beta must be [B, T, HV] = ",
                    at::IntArrayRef(gate_shape), ", got ", beta.sizes());
  for (auto [t, name] : {std::pair{&g, "g"}, {&erase, "erase"}}) {
    if (!t->has_value()) continue;
    const at::Tensor& x = **t;
    check_float(x, name);
    check_same_device(x, q, name);
    TORCH_CHECK_VALUE(x.sizes() == at::IntArrayRef(gate_shape), "dgd: ", name,
                      " must be [B, T, HV] = ", at::IntArrayRef(gate_shape), ", got ", x.sizes());
  }
  const int64_t N =
      cu_seqlens.has_value() ? check_cu_seqlens("dgd", *cu_seqlens, q, "q", B, T) : B;
  if (initial_state.has_value()) {
    const at::Tensor& h0 = *initial_state;
    check_float(h0, "initial_state");
    check_same_device(h0, q, "initial_state");
    const std::vector<int64_t> want = {N, HV, K, V};
    TORCH_CHECK_VALUE(h0.sizes() == at::IntArrayRef(want), "dgd: initial_state must be [N, HV, K, V] = ",
                      at::IntArrayRef(want), ", got ", h0.sizes());
  }
  TORCH_CHECK_VALUE(std::isfinite(scale), "dgd: scale must be finite, got ", scale);
  TORCH_CHECK_VALUE(chunk_size >= 1, "dgd: chunk_size must be >= 1, got ", chunk_size);
  return cpu::DgdInputs{q, k, v, beta, g, erase, initial_state, cu_seqlens};
}

namespace {

std::tuple<at::Tensor, at::Tensor> dgd_cpu(const at::Tensor& q, const at::Tensor& k,
                                           const at::Tensor& v, const at::Tensor& beta,
                                           const std::optional<at::Tensor>& g,
                                           const std::optional<at::Tensor>& erase,
                                           const std::optional<at::Tensor>& initial_state,
                                           const std::optional<at::Tensor>& cu_seqlens,
                                           double scale, bool read_before, int64_t chunk_size) {
  NoAutocast no_autocast;  // our kernels pick their own precision
  auto in = check_dgd_args(q, k, v, beta, g, erase, initial_state, cu_seqlens, scale, chunk_size);
  return cpu::dgd_forward(in, cpu::DgdArgs{scale, read_before, chunk_size});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
dgd_backward_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const at::Tensor& beta, const std::optional<at::Tensor>& g,
                 const std::optional<at::Tensor>& erase,
                 const std::optional<at::Tensor>& initial_state,
                 const std::optional<at::Tensor>& cu_seqlens, const at::Tensor& grad_o,
                 const std::optional<at::Tensor>& grad_final_state, double scale, bool read_before,
                 int64_t chunk_size) {
  NoAutocast no_autocast;  // our kernels pick their own precision
  auto in = check_dgd_args(q, k, v, beta, g, erase, initial_state, cu_seqlens, scale, chunk_size);
  TORCH_CHECK_VALUE(grad_o.sizes() == v.sizes(), "dgd_backward: grad_o must have v's shape ",
                    v.sizes(), ", got ", grad_o.sizes());
  at::Tensor dfinal = grad_final_state.has_value() ? *grad_final_state : at::Tensor();
  auto r = cpu::dgd_backward(in, grad_o, dfinal, cpu::DgdArgs{scale, read_before, chunk_size});
  return {r[0], r[1], r[2], r[3], r[4], r[5], r[6]};
}

}  // namespace

void define_dgd(torch::Library& m) {
  m.def(
      "dgd(Tensor q, Tensor k, Tensor v, Tensor beta, Tensor? g, Tensor? erase, "
      "Tensor? initial_state, Tensor? cu_seqlens, float scale, bool read_before, "
      "int chunk_size=64) -> (Tensor, Tensor)");
  m.def(
      "dgd_backward(Tensor q, Tensor k, Tensor v, Tensor beta, Tensor? g, Tensor? erase, "
      "Tensor? initial_state, Tensor? cu_seqlens, Tensor grad_o, Tensor? grad_final_state, "
      "float scale, bool read_before, int chunk_size=64) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

}  // namespace nlcore::glue

TORCH_LIBRARY_IMPL(nlcore, CPU, m) {
  m.impl("dgd", &nlcore::glue::dgd_cpu);
  m.impl("dgd_backward", &nlcore::glue::dgd_backward_cpu);
}
