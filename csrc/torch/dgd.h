// Torch glue for nlcore::dgd: argument checks shared by the CPU and CUDA impls.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "cpu/dgd.h"

namespace nlcore::glue {

// Validates shapes, dtypes, devices and (CPU tensors, or NLCORE_DEBUG=1) cu_seqlens values;
// throws c10::ValueError / c10::TypeError naming the argument.
cpu::DgdInputs check_dgd_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& beta, const std::optional<at::Tensor>& g,
                              const std::optional<at::Tensor>& erase,
                              const std::optional<at::Tensor>& initial_state,
                              const std::optional<at::Tensor>& cu_seqlens, double scale,
                              int64_t chunk_size);

}  // namespace nlcore::glue
