// Torch glue for nlcore::newton_schulz: argument checking shared by the CPU and CUDA impls.
#pragma once

#include <ATen/ATen.h>

#include "cpu/newton_schulz.h"

namespace nlcore::glue {

// Validates the op's arguments and packs them; throws c10::ValueError / c10::TypeError.
cpu::NsArgs check_newton_schulz_args(const at::Tensor& G, at::ArrayRef<double> coefficients,
                                     double eps, double norm_scale, bool norm_additive,
                                     at::ScalarType compute_dtype);

}  // namespace nlcore::glue
