// Self-modifying memories (DESIGN §3.3) on ATen tensors: the four coupled MLP memories
// M_k, M_v, M_η, M_α of Hope advancing together on one chunk grid, and their explicit,
// checkpointed backward (second order, through the inner gradients and the coupling).
//
// Per sequence and head, memory m ∈ {k, v, η, α} has weights W1_m [F, D], W2_m [D, F],
// momentum buffers and open-chunk accumulators as in cpu/memory_mlp.h; Σg (a_g) and the
// open chunk's token count are shared by the four. For chunk c with rows X [c, D]:
//   read    Zx_m = X W1_mᵀ,  Hx_m = σ(Zx_m),  Rx_m = X + Hx_m W2_mᵀ      (at the chunk start)
//   derive  s_t = (‖Rx_k,t‖² + ε)^(-1/2),  k_t = s_t Rx_k,t      (ε = 1e-12)
//           v_t = Rx_v,t
//           a_t = w_η·Rx_η,t + b_η,  eta_t = eta_max · sigmoid(a_t)
//           b_t = w_α·Rx_α,t + b_α,  g_t = log sigmoid(b_t)
//   step    every memory takes the chunk step of cpu/memory_mlp.h with keys k, values v,
//           self_target (its own target M_m(v_t)), objective "l2", residual, rates eta,
//           log-retention g, and the given momentum / dgd_erase.
// Outputs: k, v (x's dtype), eta, g (the state dtype: fp32, fp64 for fp64 inputs).
//
// Backward of one chunk, given the gradients of the state after it and dk, dv, deta, dg of its
// outputs:
//   1. the memory_mlp chunk backward of every memory on its k and v rows (no x rows) gives
//      the chunk-start state gradients (update path) and dK_m, dV_m, dη_m, dg_m;
//      dk += Σ_m dK_m, dv += Σ_m dV_m, deta += Σ_m dη_m, dg += Σ_m dg_m
//   2. derive: dRx_k = s (dk − ⟨k, dk⟩ k),  dRx_v = dv,
//      da = deta · eta (1 − eta / eta_max),  dRx_η = da w_η,  dw_η += Σ_t da_t Rx_η,t,
//      db_η += Σ_t da_t;  db = dg (1 − exp(g)),  dRx_α = db w_α,  dw_α, db_α likewise
//   3. read: dX += Σ_m dRx_m,  dZx_m = σ'(Zx_m) ⊙ (dRx_m W2_m),  dW2_m += dRx_mᵀ Hx_m,
//      dX += Σ_m dZx_m W1_m,  dW1_m += dZx_mᵀ X
// Chunk-start states come from checkpoints every `checkpoint_every` chunks, as in the memory
// scan. Precision as in cpu/memory_mlp.h (bf16/fp16 inputs round every GEMM operand).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "cpu/memory_mlp.h"

namespace nlcore::cpu {

constexpr int64_t kSelfModMemories = 4;   // k, v, η, α
constexpr double kSelfModNormEps = 1e-12;  // ε of the key normalization

struct SelfModArgs {
  int64_t chunk_size;
  double eta_max;
  double momentum;
  MlpActivation activation;
  bool dgd_erase;
  int64_t checkpoint_every;
};

struct SelfModInputs {
  at::Tensor x;                  // [B, T, H, D]
  at::Tensor w_in, w_out;        // [4, H, F, D] / [4, H, D, F] shared, or [4, N, H, F, D] / ...
  at::Tensor w_eta, w_alpha;     // [H, D]
  std::optional<at::Tensor> b_eta, b_alpha;                 // [H]
  std::optional<at::Tensor> p_in, p_out, acc_in, acc_out;   // [4, N, H, F, D] / [4, N, H, D, F]
  std::optional<at::Tensor> acc_g;                          // [N, H]
  std::optional<at::Tensor> n;                              // [N] int64, 0 <= n < chunk_size
  std::optional<at::Tensor> cu_seqlens;                     // [N + 1], B == 1
};

// (k, v, eta, g, w_in, w_out, p_in, p_out, acc_in, acc_out, acc_g, n): k, v [B, T, H, D] in
// x's dtype, eta, g [B, T, H] and the state in fp32 (fp64 for fp64 inputs).
std::vector<at::Tensor> self_modifying_scan_forward(const SelfModInputs& in,
                                                    const SelfModArgs& args);

// (dx, dw_in, dw_out, dw_eta, dw_alpha, db_eta, db_alpha, dp_in, dp_out, dacc_in, dacc_out,
// dacc_g); db_* empty when the bias was not given, the state entries empty without an
// initial state. `d_out` = (dk, dv, deta, dg), `d_final` = gradients of the final (w_in,
// w_out, p_in, p_out, acc_in, acc_out, acc_g); undefined entries mean zero.
std::vector<at::Tensor> self_modifying_scan_backward(const SelfModInputs& in,
                                                     const std::vector<at::Tensor>& d_out,
                                                     const std::vector<at::Tensor>& d_final,
                                                     const SelfModArgs& args);

}  // namespace nlcore::cpu
