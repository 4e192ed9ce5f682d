// DGD linear memory (DESIGN §3.1) on ATen tensors: the chunk-parallel algorithm of the CUDA
// kernels — chunk-local preparation (parallel over chunks), sequential state passing,
// chunk-local outputs (parallel) — and its backward with recomputation.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

namespace nlcore::cpu {

struct DgdArgs {
  double scale;
  bool read_before;
  int64_t chunk_size;
};

struct DgdInputs {
  at::Tensor q, k, v, beta;                 // [B, T, H, K], [B, T, H, K], [B, T, HV, V], [B, T, HV]
  std::optional<at::Tensor> g, erase;       // [B, T, HV]
  std::optional<at::Tensor> initial_state;  // [N, HV, K, V]
  std::optional<at::Tensor> cu_seqlens;     // [N + 1] (CPU values), B == 1
};

// (o [B, T, HV, V] in v's dtype, final_state [N, HV, K, V] in fp32 / fp64)
std::tuple<at::Tensor, at::Tensor> dgd_forward(const DgdInputs& in, const DgdArgs& args);

// Gradients (dq, dk, dv, dbeta, dg, derase, dinitial_state); absent inputs get an empty
// tensor. d_final may be undefined (no gradient flows into the final state).
std::vector<at::Tensor> dgd_backward(const DgdInputs& in, const at::Tensor& d_o,
                                     const at::Tensor& d_final, const DgdArgs& args);

}  // namespace nlcore::cpu
