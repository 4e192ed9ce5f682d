// Torch glue for nlcore::m3_muon_pre_ / m3_muon_post_: argument checks shared by the CPU and
// CUDA impls (throw c10::ValueError / c10::TypeError naming the list, the index and what was
// seen).
#pragma once

#include <ATen/ATen.h>

namespace nlcore::glue {

void check_m3_muon_pre_args(at::TensorList momentum, at::TensorList slow_sum, at::TensorList fast,
                            at::TensorList grads, double beta1);

void check_m3_muon_post_args(at::TensorList params, at::TensorList updates,
                             at::TensorList slow_update, at::ArrayRef<double> lr, double decay,
                             double alpha);

}  // namespace nlcore::glue
