// Newton–Schulz with ATen: CPU forward (the twin of the CUDA general path: three GEMMs per
// step with the a/b/c combination applied in fp32 after each), and the backward through
// the iteration, written once for every device.
#include "cpu/newton_schulz.h"

namespace nlcore::cpu {
namespace {

// How the iteration stores X, A, B between GEMMs:
//  - float64 G: float64, nothing rounded;
//  - bf16 compute: bf16 tensors and ATen's bf16 GEMMs, which accumulate in fp32 and apply
//    baddbmm's beta·C + alpha·AB in fp32 before one rounding — exactly the contract;
//  - fp16 / fp32 compute: fp32 GEMMs on operands rounded to the compute dtype (the CPU has
//    no fast fp16 GEMM; for fp32 compute nothing is rounded).
struct Plan {
  at::ScalarType work;     // dtype X/A/B are held in
  bool round;              // round to `compute` after each GEMM (fp32 work only)
  at::ScalarType compute;
};

Plan make_plan(const at::Tensor& G, const NsArgs& args) {
  if (G.scalar_type() == at::kDouble) return {at::kDouble, false, at::kDouble};
  if (args.compute_dtype == at::kBFloat16) return {at::kBFloat16, false, at::kBFloat16};
  return {at::kFloat, args.compute_dtype != at::kFloat, args.compute_dtype};
}

at::Tensor round_to(const at::Tensor& t, const Plan& p) {
  return p.round ? t.to(p.compute).to(p.work) : t;
}

at::ScalarType accum_dtype(const Plan& p) {
  return p.work == at::kDouble ? at::kDouble : at::kFloat;
}

// [..., m, n] -> [batch, m', n'] with m' <= n' (transposed when m > n), in the work dtype.
at::Tensor as_wide_batch(const at::Tensor& t, bool transposed, at::ScalarType work) {
  const int64_t m = t.size(-2), n = t.size(-1);
  at::Tensor X = t.reshape({-1, m, n}).to(work);
  return transposed ? X.transpose(1, 2) : X;  // GEMMs take the strided view as it is
}

at::Tensor back_to_shape(const at::Tensor& X, bool transposed, const at::Tensor& like) {
  at::Tensor out = at::empty(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
  out.view({-1, like.size(-2), like.size(-1)}).copy_(transposed ? X.transpose(1, 2) : X);
  return out;
}

// denominators [batch, 1, 1] of the normalization, from the unrounded input Y.
at::Tensor norm_denominator(const at::Tensor& norm, const NsArgs& args) {
  at::Tensor scaled = norm * args.norm_scale;
  return args.norm_additive ? scaled + args.eps : at::clamp_min(scaled, args.eps);
}

// The normalized start X0 (in the plan's storage dtype) of the wide-batch input Y.
struct Start {
  at::Tensor Y;      // [batch, m, n], m <= n, accumulation dtype, unrounded
  at::Tensor norm;   // [batch, 1, 1] ‖Y‖_F
  at::Tensor denom;  // [batch, 1, 1] normalization denominator
  at::Tensor X0;
};

Start normalize(const at::Tensor& G, bool transposed, const NsArgs& args, const Plan& p) {
  Start st;
  st.Y = as_wide_batch(G, transposed, accum_dtype(p));
  st.norm = at::linalg_vector_norm(st.Y, 2, {1, 2}, /*keepdim=*/true);
  st.denom = norm_denominator(st.norm, args);
  st.X0 = round_to((st.Y / st.denom).to(p.work), p);
  return st;
}

// `steps` iterations from X; when `xs`/`as` are given, records each step's X and A (the
// linearization points of the backward) as stored.
at::Tensor iterate(at::Tensor X, const NsArgs& args, const Plan& p,
                   std::vector<at::Tensor>* xs = nullptr, std::vector<at::Tensor>* as = nullptr) {
  const int64_t steps = static_cast<int64_t>(args.coefficients.size() / 3);
  for (int64_t s = 0; s < steps; ++s) {
    const double a = args.coefficients[3 * s], b = args.coefficients[3 * s + 1],
                 c = args.coefficients[3 * s + 2];
    at::Tensor A = round_to(at::bmm(X, X.transpose(1, 2)), p);
    if (xs) {
      xs->push_back(X);
      as->push_back(A);
      if (s + 1 == steps) break;  // the last output is not needed by the backward
    }
    at::Tensor B = round_to(at::baddbmm(A, A, A, /*beta=*/b, /*alpha=*/c), p);
    X = round_to(at::baddbmm(X, B, X, /*beta=*/a, /*alpha=*/1.0), p);
  }
  return X;
}

}  // namespace

at::Tensor newton_schulz_forward(const at::Tensor& G, const NsArgs& args) {
  if (G.numel() == 0) return at::empty_like(G, at::MemoryFormat::Contiguous);
  const Plan p = make_plan(G, args);
  const bool transposed = G.size(-2) > G.size(-1);
  return back_to_shape(iterate(normalize(G, transposed, args, p).X0, args, p), transposed, G);
}

// One step is X' = a X + (b A + c A²) X with A = X Xᵀ (symmetric). For an upstream
// gradient Ḡ = dL/dX', with S = Ḡ Xᵀ + X Ḡᵀ (symmetric):
//   X̄ = a Ḡ + b A Ḡ + c A² Ḡ + (b S + c (S A + (S A)ᵀ)) X
// (the last term is (Ā + Āᵀ) X for Ā = b Ḡ Xᵀ + c (Ḡ Xᵀ A + A Ḡ Xᵀ), folded into one GEMM).
// The normalization X0 = Y / d(‖Y‖) gives Ȳ = X̄0 / d − d'(‖Y‖) ⟨Y, X̄0⟩ Y / (‖Y‖ d²).
// Roundings are straight-through (their derivative is taken as 1); the linearization points
// are the rounded values the forward used. The backward's GEMMs follow the same contract as
// the forward's (operands in the compute dtype, fp32 accumulation); Ḡ is carried in fp32.
at::Tensor newton_schulz_backward(const at::Tensor& grad, const at::Tensor& G,
                                  const NsArgs& args) {
  if (G.numel() == 0) return at::zeros_like(G, at::MemoryFormat::Contiguous);
  const Plan p = make_plan(G, args);
  const bool transposed = G.size(-2) > G.size(-1);
  const Start st = normalize(G, transposed, args, p);
  std::vector<at::Tensor> xs, as;
  iterate(st.X0, args, p, &xs, &as);

  const at::ScalarType acc = accum_dtype(p);
  // GEMM in the plan's operand dtype, result in the accumulation dtype.
  auto mm = [&](const at::Tensor& x, const at::Tensor& y) {
    return round_to(at::bmm(x.to(p.work), y.to(p.work)), p).to(acc);
  };
  // a private copy: Ḡ is updated in place below and must not alias `grad`
  at::Tensor Gb = as_wide_batch(grad, transposed, acc).clone(at::MemoryFormat::Contiguous);
  for (int64_t s = static_cast<int64_t>(xs.size()) - 1; s >= 0; --s) {
    const double a = args.coefficients[3 * s], b = args.coefficients[3 * s + 1],
                 c = args.coefficients[3 * s + 2];
    const at::Tensor& Xs = xs[s];
    const at::Tensor& A = as[s];
    const at::Tensor Gw = Gb.to(p.work);
    at::Tensor AG = mm(A, Gw);
    at::Tensor S = mm(Gw, Xs.transpose(1, 2));
    S.add_(S.transpose(1, 2).clone());
    at::Tensor SA = mm(S, A);
    at::Tensor M = at::add(SA, SA.transpose(1, 2)).mul_(c).add_(S, b);
    Gb.mul_(a).add_(AG, b).add_(mm(A, AG), c).add_(mm(M, Xs));
  }

  // Normalization.
  const at::Tensor& norm = st.norm;
  const at::Tensor& denom = st.denom;
  at::Tensor dot = (st.Y * Gb).sum(at::IntArrayRef{1, 2}, /*keepdim=*/true);
  at::Tensor active = args.norm_additive
                          ? at::ones_like(norm)
                          : (norm * args.norm_scale > args.eps).to(norm.scalar_type());
  at::Tensor safe_norm = at::where(norm > 0, norm, at::ones_like(norm));
  at::Tensor Ybar =
      Gb / denom - st.Y * (active * args.norm_scale * dot / (safe_norm * denom * denom));
  return back_to_shape(Ybar, transposed, G);
}

}  // namespace nlcore::cpu
