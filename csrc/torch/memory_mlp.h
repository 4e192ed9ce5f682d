// Torch glue for nlcore::memory_mlp_scan: argument checks and parsing shared by the CPU and
// CUDA impls.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "cpu/memory_mlp.h"

namespace nlcore::glue {

// Validates shapes, dtypes, devices, flags and (CPU tensors, or NLCORE_DEBUG=1) cu_seqlens
// and n values; throws c10::ValueError / c10::TypeError naming the argument.
cpu::MlpScanInputs check_memory_mlp_args(
    const at::Tensor& x, const at::Tensor& k, const at::Tensor& v, const at::Tensor& eta,
    const std::optional<at::Tensor>& g, const at::Tensor& w_in, const at::Tensor& w_out,
    const std::optional<at::Tensor>& p_in, const std::optional<at::Tensor>& p_out,
    const std::optional<at::Tensor>& acc_in, const std::optional<at::Tensor>& acc_out,
    const std::optional<at::Tensor>& acc_g, const std::optional<at::Tensor>& n,
    const std::optional<at::Tensor>& cu_seqlens);

// Range check of the initial state's open-chunk counts n (0 <= n < chunk_size); reads the
// values, so it runs for CPU tensors or under NLCORE_DEBUG=1 only.
void check_memory_mlp_counts(const cpu::MlpScanInputs& in, int64_t chunk_size);

// The op's `kernel` argument (Python: kernel="auto" | "step" | "persistent"): which CUDA forward
// runs. "auto" is step one until a GPU run has shown the persistent kernel correct and faster
// (DESIGN §7); "persistent" sets NLCORE_MEMORY_MLP_FLAG_PERSISTENT (falls back to step one where
// it cannot run). The CPU op and the CUDA backward ignore it (after this check).
constexpr int64_t kMlpKernelAuto = 0;
constexpr int64_t kMlpKernelStep = 1;
constexpr int64_t kMlpKernelPersistent = 2;
void check_memory_mlp_kernel(int64_t kernel);

// Parses and checks the scalar arguments ("silu"/"gelu", "l2"/"dot", chunk_size >= 1, ...).
cpu::MlpScanArgs parse_memory_mlp_args(int64_t chunk_size, double momentum,
                                       const std::string& activation, bool residual,
                                       const std::string& objective, bool self_target,
                                       bool dgd_erase, int64_t checkpoint_every);

}  // namespace nlcore::glue
