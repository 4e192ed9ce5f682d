// Torch glue for nlcore::self_modifying_scan: schema and the argument checks shared by the
// CPU and CUDA impls.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "cpu/self_modifying.h"

// Inputs of both ops. Outputs of the forward: k, v, eta, g, then the final state (w_in, w_out,
// p_in, p_out, acc_in, acc_out, acc_g, n). The backward appends the output gradients
// (grad_k, grad_v, grad_eta, grad_g: undefined = zero) and the final state's gradients and
// returns dx, dw_in, dw_out, dw_eta, dw_alpha, db_eta, db_alpha, dp_in, dp_out, dacc_in,
// dacc_out, dacc_g (empty tensors where the input was not given).
#define NLCORE_SELF_MOD_INPUTS                                                                 \
  "Tensor x, Tensor w_in, Tensor w_out, Tensor w_eta, Tensor w_alpha, Tensor? b_eta, "         \
  "Tensor? b_alpha, Tensor? p_in, Tensor? p_out, Tensor? acc_in, Tensor? acc_out, "            \
  "Tensor? acc_g, Tensor? n, Tensor? cu_seqlens, int chunk_size, float eta_max, "              \
  "float momentum, str activation, bool dgd_erase, int checkpoint_every"
#define NLCORE_SELF_MOD_GRADS                                                                  \
  "Tensor? grad_k, Tensor? grad_v, Tensor? grad_eta, Tensor? grad_g, Tensor? grad_w_in, "      \
  "Tensor? grad_w_out, Tensor? grad_p_in, Tensor? grad_p_out, Tensor? grad_acc_in, "           \
  "Tensor? grad_acc_out, Tensor? grad_acc_g"

namespace nlcore::glue {

// Validates shapes, dtypes, devices and (CPU tensors, or NLCORE_DEBUG=1) the values of
// cu_seqlens and n; throws c10::ValueError / c10::TypeError naming the argument.
cpu::SelfModInputs check_self_modifying_args(
    const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& w_out,
    const at::Tensor& w_eta, const at::Tensor& w_alpha, const std::optional<at::Tensor>& b_eta,
    const std::optional<at::Tensor>& b_alpha, const std::optional<at::Tensor>& p_in,
    const std::optional<at::Tensor>& p_out, const std::optional<at::Tensor>& acc_in,
    const std::optional<at::Tensor>& acc_out, const std::optional<at::Tensor>& acc_g,
    const std::optional<at::Tensor>& n, const std::optional<at::Tensor>& cu_seqlens,
    int64_t chunk_size);

// Parses and checks the scalar arguments (chunk_size >= 1, eta_max > 0 finite, momentum
// finite, "silu"/"gelu", checkpoint_every >= 1).
cpu::SelfModArgs parse_self_modifying_args(int64_t chunk_size, double eta_max, double momentum,
                                           const std::string& activation, bool dgd_erase,
                                           int64_t checkpoint_every);

}  // namespace nlcore::glue
