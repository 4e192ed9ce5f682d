// Newton–Schulz with ATen: CPU forward (the twin of the CUDA general path: three GEMMs per
// step with the a/b/c combination applied in fp32 after each), and the backward through
// the iteration, written once for every device.
#include "cpu/newton_schulz.h"

namespace nlcore::cpu {
namespace {

// Work dtype of the iteration: float64 when G is float64 (then nothing is rounded), else
// float32 with operands rounded to the compute dtype.
struct Plan {
  at::ScalarType work;
  bool round;
  at::ScalarType compute;
};

Plan make_plan(const at::Tensor& G, const NsArgs& args) {
  if (G.scalar_type() == at::kDouble) return {at::kDouble, false, at::kDouble};
  bool round = args.compute_dtype != at::kFloat;
  return {at::kFloat, round, args.compute_dtype};
}

at::Tensor round_to(const at::Tensor& t, const Plan& p) {
  return p.round ? t.to(p.compute).to(p.work) : t;
}

// [..., m, n] -> [batch, m', n'] with m' <= n' (transposed when m > n), in the work dtype.
at::Tensor as_wide_batch(const at::Tensor& t, bool transposed, at::ScalarType work) {
  const int64_t m = t.size(-2), n = t.size(-1);
  at::Tensor X = t.reshape({-1, m, n}).to(work);
  return transposed ? X.transpose(1, 2).contiguous() : X.contiguous();
}

at::Tensor back_to_shape(const at::Tensor& X, bool transposed, const at::Tensor& like) {
  at::Tensor Y = transposed ? X.transpose(1, 2) : X;
  return Y.to(like.scalar_type()).reshape(like.sizes()).contiguous();
}

// denominators [batch, 1, 1] of the normalization, from the unrounded input Y.
at::Tensor norm_denominator(const at::Tensor& norm, const NsArgs& args) {
  at::Tensor scaled = norm * args.norm_scale;
  return args.norm_additive ? scaled + args.eps : at::clamp_min(scaled, args.eps);
}

}  // namespace

at::Tensor newton_schulz_forward(const at::Tensor& G, const NsArgs& args) {
  const Plan p = make_plan(G, args);
  const bool transposed = G.size(-2) > G.size(-1);
  if (G.numel() == 0) return at::empty_like(G, at::MemoryFormat::Contiguous);
  at::Tensor X = as_wide_batch(G, transposed, p.work);
  at::Tensor norm = at::linalg_vector_norm(X, 2, {1, 2}, /*keepdim=*/true);
  X = round_to(X / norm_denominator(norm, args), p);
  const int64_t steps = static_cast<int64_t>(args.coefficients.size() / 3);
  for (int64_t s = 0; s < steps; ++s) {
    const double a = args.coefficients[3 * s], b = args.coefficients[3 * s + 1],
                 c = args.coefficients[3 * s + 2];
    at::Tensor A = round_to(at::bmm(X, X.transpose(1, 2)), p);
    at::Tensor B = round_to(at::baddbmm(A, A, A, /*beta=*/b, /*alpha=*/c), p);
    X = round_to(at::baddbmm(X, B, X, /*beta=*/a, /*alpha=*/1.0), p);
  }
  return back_to_shape(X, transposed, G);
}

// One step is X' = a X + (b A + c A²) X with A = X Xᵀ (symmetric). For an upstream
// gradient Ḡ = dL/dX':
//   X̄ = a Ḡ + b A Ḡ + c A² Ḡ + (Ā + Āᵀ) X,   Ā = b Ḡ Xᵀ + c (Ḡ Xᵀ A + A Ḡ Xᵀ).
// The normalization X0 = Y / d(‖Y‖) gives Ȳ = X̄0 / d − d'(‖Y‖) ⟨Y, X̄0⟩ Y / (‖Y‖ d²).
// Roundings are straight-through (their derivative is taken as 1) and the linearization
// points are the rounded values the forward actually used.
at::Tensor newton_schulz_backward(const at::Tensor& grad, const at::Tensor& G,
                                  const NsArgs& args) {
  const Plan p = make_plan(G, args);
  const bool transposed = G.size(-2) > G.size(-1);
  if (G.numel() == 0) return at::zeros_like(G, at::MemoryFormat::Contiguous);
  const int64_t steps = static_cast<int64_t>(args.coefficients.size() / 3);

  at::Tensor Y = as_wide_batch(G, transposed, p.work);
  at::Tensor norm = at::linalg_vector_norm(Y, 2, {1, 2}, /*keepdim=*/true);
  at::Tensor denom = norm_denominator(norm, args);
  std::vector<at::Tensor> xs, as;  // X_s and A_s of each step, as the forward used them
  xs.reserve(steps);
  as.reserve(steps);
  at::Tensor X = round_to(Y / denom, p);
  for (int64_t s = 0; s < steps; ++s) {
    const double a = args.coefficients[3 * s], b = args.coefficients[3 * s + 1],
                 c = args.coefficients[3 * s + 2];
    at::Tensor A = round_to(at::bmm(X, X.transpose(1, 2)), p);
    xs.push_back(X);
    as.push_back(A);
    if (s + 1 < steps) {
      at::Tensor B = round_to(at::baddbmm(A, A, A, b, c), p);
      X = round_to(at::baddbmm(X, B, X, a, 1.0), p);
    }
  }

  at::Tensor Gb = as_wide_batch(grad, transposed, p.work);
  for (int64_t s = steps - 1; s >= 0; --s) {
    const double a = args.coefficients[3 * s], b = args.coefficients[3 * s + 1],
                 c = args.coefficients[3 * s + 2];
    const at::Tensor& Xs = xs[s];
    const at::Tensor& A = as[s];
    at::Tensor AG = at::bmm(A, Gb);
    at::Tensor GXt = at::bmm(Gb, Xs.transpose(1, 2));
    at::Tensor Abar = at::baddbmm(at::bmm(A, GXt), GXt, A, c, c).add_(GXt, b);
    at::Tensor Xbar = Gb * a + AG * b + at::bmm(A, AG) * c;
    Xbar.add_(at::bmm(Abar + Abar.transpose(1, 2), Xs));
    Gb = Xbar;
  }

  // Normalization.
  at::Tensor dot = (Y * Gb).sum({1, 2}, /*keepdim=*/true);
  at::Tensor active = args.norm_additive ? at::ones_like(norm)
                                         : (norm * args.norm_scale > args.eps).to(p.work);
  at::Tensor safe_norm = at::where(norm > 0, norm, at::ones_like(norm));
  at::Tensor Ybar =
      Gb / denom - Y * (active * args.norm_scale * dot / (safe_norm * denom * denom));
  return back_to_shape(Ybar, transposed, G);
}

}  // namespace nlcore::cpu
