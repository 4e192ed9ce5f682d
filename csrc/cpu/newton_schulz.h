// Newton–Schulz on ATen tensors: the CPU kernel, and the device-generic backward.
#pragma once

#include <ATen/ATen.h>
#include <vector>

namespace nlcore::cpu {

struct NsArgs {
  std::vector<double> coefficients;  // [steps * 3]
  double eps;
  double norm_scale;
  bool norm_additive;
  at::ScalarType compute_dtype;
};

// O = NS(G) for G [..., m, n] on any device, with the GEMM structure and roundings of the
// CUDA general path (operands rounded to compute dtype, fp32 accumulation and combinations).
at::Tensor newton_schulz_forward(const at::Tensor& G, const NsArgs& args);

// dL/dG given dL/dO, by backward through the iteration (recomputes the forward).
at::Tensor newton_schulz_backward(const at::Tensor& grad, const at::Tensor& G,
                                  const NsArgs& args);

}  // namespace nlcore::cpu
