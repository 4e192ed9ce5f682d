// MLP memory scan (DESIGN §3.2) on ATen tensors: the chunk loop of the CUDA kernels and its
// explicit, checkpointed backward (second order: through the inner gradient).
//
// Per sequence and head, chunk c with weights W1 = W_in [F, D], W2 = W_out [D, F], momentum
// buffers P1, P2, accumulators A1 [F, D], A2 [D, F], a_g (open-chunk sums; zero at a chunk
// start unless the initial state carries an open chunk) and the chunk's c tokens as rows
// X, K, V [c, D], η, g [c]:
//   read     Zx = X W1ᵀ,  Hx = σ(Zx),  Y = [X +] Hx W2ᵀ
//   target   Tg = [V +] σ(V W1ᵀ) W2ᵀ   (self_target)  or  Tg = V
//   keys     Z = K W1ᵀ,  H = σ(Z),  Pr = [K +] H W2ᵀ
//   error    E = Pr − Tg ("l2")  or  E = −Tg ("dot");   Eη = diag(η) E
//   inner    R = Eη W2,  Q1 = σ'(Z) ⊙ R [+ diag(η) Z  if dgd_erase]
//            G1 = A1 + Q1ᵀ K,  G2 = A2 + Eηᵀ H,  Σg = a_g + Σ_t g_t
// (the dgd_erase term W1 Kᵀ diag(η) K of §3.2 is (diag(η) Z)ᵀ K, since Z = K W1ᵀ).
// A complete chunk applies ᾱ = exp(Σg), P ← μ P − G, W ← ᾱ W + P and clears the
// accumulators; an incomplete (last) chunk leaves W, P and returns (G1, G2, Σg, n) as the
// accumulators.
//
// Backward of one complete chunk, from the gradients (dW1', dW2', dP1', dP2') of the state
// after it and dY of its reads:
//   T1 = dP1' + dW1',  dG1 = −T1,  dP1 = μ T1,  dW1 = ᾱ dW1'     (same for 2)
//   dΣg = ᾱ (⟨dW1', W1⟩ + ⟨dW2', W2⟩)  → dg_t = dΣg for every token, and d a_g = dΣg
// (an incomplete chunk: dG, dΣg are the final accumulators' gradients, dW, dP pass through);
// d A1 = dG1, d A2 = dG2, then through the inner gradient:
//   dQ1 = K dG1ᵀ,  dK += Q1 dG1,  [dgd_erase: dZ += diag(η) dQ1,  dη_t += ⟨Z_t, dQ1_t⟩]
//   dR = σ'(Z) ⊙ dQ1,  dZ += σ''(Z) ⊙ R ⊙ dQ1
//   dEη = H dG2ᵀ + dR W2ᵀ,  dH = Eη dG2,  dW2 += Eηᵀ dR
//   dη_t += ⟨E_t, dEη_t⟩,  dE = diag(η) dEη,  dPr = dE ("l2" only),  dTg = −dE
//   dK += dPr [residual],  dH += dPr W2,  dW2 += dPrᵀ H,  dZ += σ'(Z) ⊙ dH
//   dK += dZ W1,  dW1 += dZᵀ K
//   target (self_target): dV += dTg [residual], dZv = σ'(Zv) ⊙ (dTg W2), dW2 += dTgᵀ Hv,
//            dV += dZv W1, dW1 += dZvᵀ V;   otherwise dV = dTg
//   read: dX += dY [residual], dZx = σ'(Zx) ⊙ (dY W2), dW2 += dYᵀ Hx, dX += dZx W1,
//         dW1 += dZxᵀ X
// σ = SiLU: σ' = s (1 + z (1 − s)), σ'' = s (1 − s) (2 + z (1 − 2 s)), s = sigmoid(z);
// σ = GELU (erf): σ' = Φ(z) + z φ(z), σ'' = φ(z) (2 − z²).
// The backward walks chunks in reverse; the chunk-start states come from checkpoints saved
// every `checkpoint_every` chunks by a state-only forward pass, re-run segment by segment.
//
// Precision (DESIGN §2): bf16/fp16 inputs round every GEMM operand — weights included — to the
// input dtype and accumulate in fp32; σ, σ', σ'', the accumulators and the updates stay fp32.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <vector>

namespace nlcore::cpu {

enum class MlpActivation { kSilu = 0, kGelu = 1 };
enum class MlpObjective { kL2 = 0, kDot = 1 };

struct MlpScanArgs {
  int64_t chunk_size;
  double momentum;
  MlpActivation activation;
  bool residual;
  MlpObjective objective;
  bool self_target;
  bool dgd_erase;
  int64_t checkpoint_every;  // chunks between the backward's saved states (>= 1)
};

struct MlpScanInputs {
  at::Tensor x, k, v, eta;             // [B, T, H, D] ×3, [B, T, H]
  std::optional<at::Tensor> g;         // [B, T, H]
  at::Tensor w_in, w_out;              // [H, F, D] / [H, D, F] shared, or [N, H, F, D] / [N, H, D, F]
  // Initial state beyond the weights: all given or all absent (then zeros, n = 0).
  std::optional<at::Tensor> p_in, p_out, acc_in, acc_out;  // [N, H, F, D] / [N, H, D, F]
  std::optional<at::Tensor> acc_g;                          // [N, H]
  std::optional<at::Tensor> n;                              // [N] int64, 0 <= n < chunk_size
  std::optional<at::Tensor> cu_seqlens;                     // [N + 1], B == 1
};

// y [B, T, H, D] in x's dtype, then the final state (w_in, w_out, p_in, p_out, acc_in,
// acc_out, acc_g, n) with weights in fp32 (fp64 for fp64 inputs).
std::vector<at::Tensor> memory_mlp_scan_forward(const MlpScanInputs& in, const MlpScanArgs& args);

// Gradients (dx, dk, dv, deta, dg, dw_in, dw_out, dp_in, dp_out, dacc_in, dacc_out, dacc_g);
// dg is empty without g, the initial-state entries empty without an initial state, dw_in and
// dw_out have w_in's / w_out's shape (summed over the batch when shared). `d_final` holds the
// gradients of the final (w_in, w_out, p_in, p_out, acc_in, acc_out, acc_g); undefined
// entries mean zero.
std::vector<at::Tensor> memory_mlp_scan_backward(const MlpScanInputs& in, const at::Tensor& d_y,
                                                 const std::vector<at::Tensor>& d_final,
                                                 const MlpScanArgs& args);

}  // namespace nlcore::cpu
