// DGD linear memory on the CPU: the chunk form of DESIGN §3.1, step for step the algorithm of
// the CUDA kernels.
//
// Per sequence and value head, tokens are split into chunks of C (zero-padded at the end: a
// padded token has k = v = q = 0, beta = a = g = 0 and leaves the state untouched). Inside a
// chunk with start state S0, Gc = cumsum(g) (inclusive), Gp = Gc − g (= G_{t-1}):
//   Γ_ti = exp(Gp_t − Gc_i) (i < t),  L = diag(a) (Γ ⊙ K Kᵀ),  c = a ⊙ exp(Gp)
//   Wv = (I + L)⁻¹ diag(beta) V,  Wk = (I + L)⁻¹ diag(c) K        — chunk-local, parallel
//   W = Wv − Wk S0,  S_end = exp(Gc_C) S0 + Kᵀ diag(exp(Gc_C − Gc)) W — sequential
//   O = scale (diag(exp(Gq)) Q S0 + (M ⊙ Q Kᵀ) W)                  — parallel
// with Gq = Gc, M_ti = exp(Gc_t − Gc_i) (i ≤ t) for read="after" and Gq = Gp, M = Γ for
// read="before". Precision contract: every GEMM operand is rounded to the input dtype (the
// fp32 state included) and accumulates in fp32; gates, cumsums, the triangular solve and the
// state update are fp32.
#include "cpu/dgd.h"

#include "cpu/simd.h"

#include <ATen/Parallel.h>

namespace nlcore::cpu {
namespace {

using at::indexing::Slice;

struct Prec {
  at::ScalarType work;  // fp32, or fp64 for fp64 inputs
  bool round;           // round GEMM operands to `low`
  at::ScalarType low;
};

at::Tensor rnd(const Prec& p, const at::Tensor& t) {
  return p.round ? t.to(p.low).to(p.work) : t;
}
// GEMM whose operands are rounded (pass exact=true for an operand that already holds
// input-dtype values, e.g. q, k, v).
at::Tensor mm(const Prec& p, const at::Tensor& a, const at::Tensor& b, bool a_exact = false,
              bool b_exact = false) {
  return at::matmul(a_exact ? a : rnd(p, a), b_exact ? b : rnd(p, b));
}

// (I + L)⁻¹ for a batch of unit lower-triangular matrices [..., C, C] (only the strictly lower
// part of `IL` is read), by forward substitution on the rows of the inverse:
//   A_i = e_i − Σ_{j<i} L_ij A_j,   A_j nonzero only in columns ≤ j.
// C³/6 multiply-adds per matrix, in the work dtype. LAPACK's batched trsm costs ~20 µs per
// 64×64 matrix here, mostly per-matrix overhead; this loop plus one batched GEMM to apply the
// inverse is several times faster (bench_dgd, CPU rows).
template <typename scalar_t>
void unit_lower_inverse_one(const scalar_t* l, scalar_t* a, int64_t C) {
  for (int64_t i = 0; i < C; ++i) {
    scalar_t* ai = a + i * C;
    ai[i] = scalar_t(1);
    for (int64_t j = 0; j < i; ++j) {
      const scalar_t s = -l[i * C + j];
      const scalar_t* aj = a + j * C;
      for (int64_t c = 0; c <= j; ++c) ai[c] += s * aj[c];
    }
  }
}


NLCORE_CPU_CLONES void unit_lower_inverse_f32(const float* l, float* a, int64_t C, int64_t n) {
  for (int64_t b = 0; b < n; ++b) unit_lower_inverse_one(l + b * C * C, a + b * C * C, C);
}
NLCORE_CPU_CLONES void unit_lower_inverse_f64(const double* l, double* a, int64_t C, int64_t n) {
  for (int64_t b = 0; b < n; ++b) unit_lower_inverse_one(l + b * C * C, a + b * C * C, C);
}

at::Tensor unit_lower_inverse(const at::Tensor& IL) {
  const at::Tensor X = IL.contiguous();
  const int64_t C = X.size(-1);
  const int64_t nb = C == 0 ? 0 : X.numel() / (C * C);
  at::Tensor out = at::zeros_like(X);
  const bool f64 = X.scalar_type() == at::kDouble;
  TORCH_CHECK(f64 || X.scalar_type() == at::kFloat, "nlcore dgd: internal work dtype ",
              X.scalar_type());
  at::parallel_for(0, nb, 16, [&](int64_t b0, int64_t b1) {
    const int64_t off = b0 * C * C;
    if (f64)
      unit_lower_inverse_f64(X.const_data_ptr<double>() + off,
                             out.mutable_data_ptr<double>() + off, C, b1 - b0);
    else
      unit_lower_inverse_f32(X.const_data_ptr<float>() + off, out.mutable_data_ptr<float>() + off,
                             C, b1 - b0);
  });
  return out;
}

// One batch of equal-length sequences, chunked: [BH, NC, C, D] and [BH, NC, C].
struct Chunks {
  at::Tensor Q, K, V, beta, a, g;
  int64_t T, NC, C;
};

at::Tensor pad_chunk(const at::Tensor& x, int64_t NC, int64_t C) {
  // x: [BH, T, D] or [BH, T] -> [BH, NC, C(, D)]
  const int64_t T = x.size(1);
  at::Tensor y = x;
  if (NC * C != T) {
    std::vector<int64_t> shape = x.sizes().vec();
    shape[1] = NC * C;
    y = at::zeros(shape, x.options());
    y.narrow(1, 0, T).copy_(x);
  }
  std::vector<int64_t> shape = {x.size(0), NC, C};
  if (x.dim() == 3) shape.push_back(x.size(2));
  return y.reshape(shape);
}

at::Tensor unchunk(const at::Tensor& x, int64_t T) {  // [BH, NC, C(, D)] -> [BH, T(, D)]
  std::vector<int64_t> shape = {x.size(0), x.size(1) * x.size(2)};
  if (x.dim() == 4) shape.push_back(x.size(3));
  return x.reshape(shape).narrow(1, 0, T);
}

// Chunk-local quantities shared by forward and backward.
struct Prep {
  at::Tensor Gc, Gp, Gam, KK, Ainv, c, Wv, Wk, eC, d, M, Dq, strict;
};

Prep prepare(const Chunks& ch, const Prec& p, bool read_before) {
  Prep r;
  const int64_t C = ch.C;
  r.strict = at::ones({C, C}, ch.g.options().dtype(at::kBool)).tril(-1);
  r.Gc = ch.g.cumsum(-1);
  r.Gp = r.Gc - ch.g;
  // Γ_ti = exp(Gp_t − Gc_i) for i < t, else 0. The discarded upper triangle may overflow to
  // inf before tril_ replaces it (a select, not a product: no inf·0).
  r.Gam = (r.Gp.unsqueeze(-1) - r.Gc.unsqueeze(-2)).exp_().tril_(-1);
  r.KK = mm(p, ch.K, ch.K.transpose(-1, -2), true, true);
  r.Ainv = unit_lower_inverse(ch.a.unsqueeze(-1) * r.Gam * r.KK);  // (I + L)⁻¹, fp32
  r.c = ch.a * r.Gp.exp();
  r.Wv = at::matmul(r.Ainv, ch.beta.unsqueeze(-1) * ch.V);
  r.Wk = at::matmul(r.Ainv, r.c.unsqueeze(-1) * ch.K);
  const at::Tensor last = r.Gc.select(-1, C - 1);
  r.eC = last.exp();                           // [BH, NC]
  r.d = (last.unsqueeze(-1) - r.Gc).exp();     // [BH, NC, C]
  if (read_before) {
    r.M = r.Gam;
    r.Dq = r.Gp.exp();
  } else {
    // M_ti = exp(Gc_t − Gc_i) = Γ_ti · exp(g_t) for i < t, 1 on the diagonal.
    r.M = r.Gam * ch.g.exp().unsqueeze(-1);
    r.M.diagonal(0, -2, -1).fill_(1.0);
    r.Dq = r.Gc.exp();
  }
  return r;
}

// Sequential state passing: chunk-start states S0s [BH, NC, K, V], chunk W [BH, NC, C, V],
// final state [BH, K, V].
std::tuple<at::Tensor, at::Tensor, at::Tensor> pass_states(const Chunks& ch, const Prep& r,
                                                           const Prec& p, at::Tensor S) {
  const int64_t BH = ch.K.size(0), K = ch.K.size(3), V = ch.V.size(3);
  at::Tensor S0s = at::empty({BH, ch.NC, K, V}, S.options());
  at::Tensor W = at::empty({BH, ch.NC, ch.C, V}, S.options());
  for (int64_t n = 0; n < ch.NC; ++n) {
    S0s.select(1, n).copy_(S);
    at::Tensor Wn = r.Wv.select(1, n) - mm(p, r.Wk.select(1, n), S);
    W.select(1, n).copy_(Wn);
    const at::Tensor Kn = ch.K.select(1, n);
    S = r.eC.select(1, n).view({BH, 1, 1}) * S +
        mm(p, Kn.transpose(-1, -2), r.d.select(1, n).unsqueeze(-1) * Wn, true, false);
  }
  return {S0s, W, S};
}

struct Layout {  // inputs moved to head-major work tensors [B, HV, T, D] / [B, HV, T]
  at::Tensor q, k, v, beta, a, g;
  int64_t B, T, H, HV, K, V, group, N;
  bool has_g, has_erase;
  Prec prec;
};

Layout make_layout(const DgdInputs& in) {
  Layout L;
  L.B = in.q.size(0);
  L.T = in.q.size(1);
  L.H = in.q.size(2);
  L.K = in.q.size(3);
  L.HV = in.v.size(2);
  L.V = in.v.size(3);
  L.group = L.HV / L.H;
  L.N = in.cu_seqlens ? in.cu_seqlens->numel() - 1 : L.B;
  L.has_g = in.g.has_value();
  L.has_erase = in.erase.has_value();
  const bool f64 = in.q.scalar_type() == at::kDouble || in.v.scalar_type() == at::kDouble;
  L.prec.work = f64 ? at::kDouble : at::kFloat;
  const at::ScalarType seq = in.v.scalar_type();
  L.prec.round = !f64 && (seq == at::kBFloat16 || seq == at::kHalf);
  L.prec.low = seq;
  auto heads = [&](const at::Tensor& x, bool expand) {
    at::Tensor y = x.to(L.prec.work);
    if (expand && L.group > 1) y = y.repeat_interleave(L.group, 2);
    return y.transpose(1, 2).contiguous();
  };
  L.q = heads(in.q, true);
  L.k = heads(in.k, true);
  L.v = heads(in.v, false);
  L.beta = heads(in.beta, false);
  L.a = L.has_erase ? heads(*in.erase, false) : L.beta;
  L.g = L.has_g ? heads(*in.g, false) : at::zeros_like(L.beta);
  return L;
}

// Sequences as (batch row, t0, t1).
std::vector<std::tuple<int64_t, int64_t, int64_t>> sequences(const DgdInputs& in,
                                                              const Layout& L) {
  std::vector<std::tuple<int64_t, int64_t, int64_t>> seqs;
  if (!in.cu_seqlens) {
    for (int64_t b = 0; b < L.B; ++b) seqs.emplace_back(b, 0, L.T);
    return seqs;
  }
  at::Tensor cs = in.cu_seqlens->to(at::kCPU, at::kLong).contiguous();
  const int64_t* c = cs.data_ptr<int64_t>();
  for (int64_t n = 0; n < L.N; ++n) seqs.emplace_back(0, c[n], c[n + 1]);
  return seqs;
}

// The [BH, T, D] slices of one group of sequences (all rows of the batch when fixed-length,
// one sequence when varlen).
struct Group {
  int64_t b0, nb, t0, t1, n0;
};

std::vector<Group> groups(const DgdInputs& in, const Layout& L) {
  std::vector<Group> out;
  if (!in.cu_seqlens) {
    out.push_back({0, L.B, 0, L.T, 0});
    return out;
  }
  int64_t n = 0;
  for (auto [b, t0, t1] : sequences(in, L)) out.push_back({b, 1, t0, t1, n++});
  return out;
}

Chunks chunks_of(const Layout& L, const Group& gr, int64_t C) {
  Chunks ch;
  ch.T = gr.t1 - gr.t0;
  // A sequence shorter than a chunk is one chunk of its own length: decoding (T = 1) costs
  // one rank-1 step, the recurrent form, instead of a padded chunk.
  ch.C = std::max<int64_t>(1, std::min(C, ch.T));
  ch.NC = std::max<int64_t>(1, (ch.T + ch.C - 1) / ch.C);
  auto take = [&](const at::Tensor& x) {  // [B, HV, T(, D)] -> [nb*HV, T_g(, D)] -> chunked
    at::Tensor y = x.narrow(0, gr.b0, gr.nb).narrow(2, gr.t0, ch.T);
    std::vector<int64_t> shape = {gr.nb * L.HV, ch.T};
    if (y.dim() == 4) shape.push_back(y.size(3));
    return pad_chunk(y.reshape(shape), ch.NC, ch.C);
  };
  ch.Q = take(L.q);
  ch.K = take(L.k);
  ch.V = take(L.v);
  ch.beta = take(L.beta);
  ch.a = take(L.a);
  ch.g = take(L.g);
  return ch;
}

at::Tensor start_state(const DgdInputs& in, const Layout& L, const Group& gr) {
  if (!in.initial_state)
    return at::zeros({gr.nb * L.HV, L.K, L.V}, L.q.options());
  return in.initial_state->narrow(0, gr.n0, gr.nb).to(L.prec.work).reshape({gr.nb * L.HV, L.K, L.V});
}

// [B, HV, T(, D)] work tensor -> [B, T, H, D] gradient of an input that was expanded to HV
// heads (GVA): sum over each group of value heads.
at::Tensor fold_heads(const at::Tensor& x, const Layout& L, bool expanded) {
  at::Tensor y = x.transpose(1, 2);  // [B, T, HV(, D)]
  if (expanded && L.group > 1) {
    std::vector<int64_t> shape = {L.B, L.T, L.H, L.group};
    if (y.dim() == 4) shape.push_back(y.size(3));
    y = y.reshape(shape).sum(3);
  }
  return y;
}

// Chunks per forward block: the chunk-local temporaries of one block ([BH, n, C, C] and
// [BH, n, C, D] floats) are kept near 2¹⁶ elements so they stay in cache and come from the
// allocator's free lists rather than fresh pages. Whole-sequence temporaries made the forward
// memory-bound: 1.2× → 2× against the fla-style baseline at B=1, T=4096, H=4, K=V=64 on the
// 2-core CI VM (2¹⁵–2¹⁸ measured alike).
int64_t forward_block(const Chunks& ch, int64_t BH) {
  constexpr int64_t kBlockElems = int64_t(1) << 16;
  const int64_t per_chunk = BH * ch.C * std::max<int64_t>(ch.C, ch.K.size(-1));
  return std::max<int64_t>(1, kBlockElems / std::max<int64_t>(1, per_chunk));
}

Chunks slice_chunks(const Chunks& ch, int64_t n0, int64_t n) {
  Chunks s;
  s.Q = ch.Q.narrow(1, n0, n);
  s.K = ch.K.narrow(1, n0, n);
  s.V = ch.V.narrow(1, n0, n);
  s.beta = ch.beta.narrow(1, n0, n);
  s.a = ch.a.narrow(1, n0, n);
  s.g = ch.g.narrow(1, n0, n);
  s.C = ch.C;
  s.NC = n;
  s.T = std::min(ch.T - n0 * ch.C, n * ch.C);
  return s;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> dgd_forward(const DgdInputs& in, const DgdArgs& args) {
  const Layout L = make_layout(in);
  const Prec& p = L.prec;
  // Written block by block in its final layout and dtype (every token belongs to a sequence).
  at::Tensor o = at::empty({L.B, L.T, L.HV, L.V}, in.v.options());
  at::Tensor final_state = at::empty({L.N, L.HV, L.K, L.V}, L.q.options());
  for (const Group& gr : groups(in, L)) {
    at::Tensor S = start_state(in, L, gr);
    if (gr.t1 > gr.t0) {
      const Chunks ch = chunks_of(L, gr, args.chunk_size);
      const int64_t blk = forward_block(ch, gr.nb * L.HV);
      for (int64_t n0 = 0; n0 < ch.NC; n0 += blk) {
        const Chunks sub = slice_chunks(ch, n0, std::min(blk, ch.NC - n0));
        const Prep r = prepare(sub, p, args.read_before);
        auto [S0s, W, S_end] = pass_states(sub, r, p, S);
        at::Tensor P = mm(p, sub.Q, sub.K.transpose(-1, -2), true, true).mul_(r.M);
        at::Tensor O = mm(p, sub.Q, S0s, true, false).mul_(r.Dq.unsqueeze(-1));
        O.add_(mm(p, P, W)).mul_(args.scale);  // [BH, n, C, V]
        o.narrow(0, gr.b0, gr.nb).narrow(1, gr.t0 + n0 * ch.C, sub.T)
            .copy_(unchunk(O, sub.T).reshape({gr.nb, L.HV, sub.T, L.V}).transpose(1, 2));
        S = S_end;
      }
    }
    final_state.narrow(0, gr.n0, gr.nb).copy_(S.reshape({gr.nb, L.HV, L.K, L.V}));
  }
  return {o, final_state};
}

// Backward, per group of sequences: recompute the chunk preparation and the chunk-start
// states, pass dS = dL/dS_end backwards through the chunks (sequential), then every chunk's
// gradients in parallel:
//   dW  = scale (M ⊙ Q Kᵀ)ᵀ dO + diag(d) K dS
//   dU  = (I + L)⁻ᵀ dW          (U = diag(beta) V − diag(c) K S0, W = (I + L)⁻¹ U)
//   dL  = −strict_lower(dU Wᵀ)
//   dS0 = scale Qᵀ diag(exp(Gq)) dO + exp(Gc_C) dS − Kᵀ diag(c) dU      (→ previous chunk)
//   dQ  = scale diag(exp(Gq)) dO S0ᵀ + (dP ⊙ M) K,      dP = scale dO Wᵀ
//   dK  = (dP ⊙ M)ᵀ Q + (dKK + dKKᵀ) K + diag(d) W dSᵀ − diag(c) dU S0ᵀ,  dKK = dL ⊙ diag(a) Γ
//   dV  = diag(beta) dU,  dbeta = rowsum(V ⊙ dU),  da = dc exp(Gp) + rowsum(dL ⊙ Γ ⊙ KKᵀ)
// and the log-decays through Gc / Gp into g by reverse cumulative sums.
std::vector<at::Tensor> dgd_backward(const DgdInputs& in, const at::Tensor& d_o,
                                     const at::Tensor& d_final, const DgdArgs& args) {
  const Layout L = make_layout(in);
  const Prec& p = L.prec;
  const at::Tensor dO_all = d_o.to(p.work).transpose(1, 2).contiguous();  // [B, HV, T, V]
  at::Tensor dq = at::zeros_like(L.q), dk = at::zeros_like(L.k), dv = at::zeros_like(L.v);
  at::Tensor dbeta = at::zeros_like(L.beta), da = at::zeros_like(L.beta), dg = at::zeros_like(L.beta);
  at::Tensor dh0 = at::zeros({L.N, L.HV, L.K, L.V}, L.q.options());
  const double s = args.scale;

  for (const Group& gr : groups(in, L)) {
    const int64_t BH = gr.nb * L.HV;
    at::Tensor dS = d_final.defined()
                        ? d_final.narrow(0, gr.n0, gr.nb).to(p.work).reshape({BH, L.K, L.V})
                        : at::zeros({BH, L.K, L.V}, L.q.options());
    if (gr.t1 == gr.t0) {
      dh0.narrow(0, gr.n0, gr.nb).copy_(dS.reshape({gr.nb, L.HV, L.K, L.V}));
      continue;
    }
    const Chunks ch = chunks_of(L, gr, args.chunk_size);
    const Prep r = prepare(ch, p, args.read_before);
    auto [S0s, W, S_end] = pass_states(ch, r, p, start_state(in, L, gr));
    (void)S_end;
    at::Tensor dO = pad_chunk(dO_all.narrow(0, gr.b0, gr.nb).narrow(2, gr.t0, ch.T)
                                  .reshape({BH, ch.T, L.V}), ch.NC, ch.C);
    const at::Tensor QK = mm(p, ch.Q, ch.K.transpose(-1, -2), true, true);
    const at::Tensor P = r.M * QK;
    const at::Tensor dOq = r.Dq.unsqueeze(-1) * dO;

    // Parallel parts of dW and dS0, then the sequential pass of dS through the chunks.
    const at::Tensor dW_o = mm(p, P.transpose(-1, -2), dO) * s;
    const at::Tensor dS0_o = mm(p, ch.Q.transpose(-1, -2), dOq, true, false) * s;
    at::Tensor dSe = at::empty_like(S0s);  // dL/dS at the end of each chunk
    for (int64_t n = ch.NC - 1; n >= 0; --n) {
      dSe.select(1, n).copy_(dS);
      const at::Tensor Kn = ch.K.select(1, n);
      at::Tensor dWn = dW_o.select(1, n) + r.d.select(1, n).unsqueeze(-1) * mm(p, Kn, dS, true);
      dS = dS0_o.select(1, n) + r.eC.select(1, n).view({BH, 1, 1}) * dS -
           mm(p, r.Wk.select(1, n).transpose(-1, -2), dWn);
    }
    dh0.narrow(0, gr.n0, gr.nb).copy_(dS.reshape({gr.nb, L.HV, L.K, L.V}));

    // Every chunk at once.
    const at::Tensor KdS = mm(p, ch.K, dSe, true);                       // [BH, NC, C, V]
    const at::Tensor dW = dW_o + r.d.unsqueeze(-1) * KdS;
    const at::Tensor dU = at::matmul(r.Ainv.transpose(-1, -2), dW);  // (I + L)⁻ᵀ dW, fp32
    const at::Tensor dL = -(mm(p, dU, W.transpose(-1, -2))).masked_fill(r.strict.logical_not(), 0);
    const at::Tensor dP = mm(p, dO, W.transpose(-1, -2)) * s;
    const at::Tensor dQK = dP * r.M;
    const at::Tensor aG = ch.a.unsqueeze(-1) * r.Gam;
    const at::Tensor dKK = dL * aG;
    const at::Tensor cdU = r.c.unsqueeze(-1) * dU;

    at::Tensor dQc = mm(p, dOq, S0s.transpose(-1, -2)) * s + mm(p, dQK, ch.K, false, true);
    at::Tensor dKc = mm(p, dQK.transpose(-1, -2), ch.Q, false, true) +
                     mm(p, dKK + dKK.transpose(-1, -2), ch.K, false, true) +
                     r.d.unsqueeze(-1) * mm(p, W, dSe.transpose(-1, -2)) -
                     mm(p, cdU, S0s.transpose(-1, -2));
    at::Tensor dVc = ch.beta.unsqueeze(-1) * dU;
    at::Tensor dbc = (ch.V * dU).sum(-1);
    const at::Tensor KS0 = mm(p, ch.K, S0s, true);
    const at::Tensor dc = -(KS0 * dU).sum(-1);
    at::Tensor dac = dc * r.Gp.exp() + (dL * r.Gam * r.KK).sum(-1);

    // Log-decay gradients.
    at::Tensor dGam = dL * ch.a.unsqueeze(-1) * r.KK;
    if (args.read_before) dGam = dGam + dP * QK;  // M = Γ
    at::Tensor GG = dGam * r.Gam;
    at::Tensor dGp = GG.sum(-1) + dc * r.c;
    at::Tensor dGc = -GG.sum(-2);
    const at::Tensor dDq = (mm(p, ch.Q, S0s, true) * dO).sum(-1) * s * r.Dq;
    if (args.read_before) {
      dGp = dGp + dDq;
    } else {
      const at::Tensor MM = dP * QK * r.M;
      dGc = dGc + MM.sum(-1) - MM.sum(-2) + dDq;
    }
    const at::Tensor dd = (KdS * W).sum(-1) * r.d;                       // [BH, NC, C]
    const at::Tensor deC = (S0s * dSe).sum(at::IntArrayRef{-1, -2}) * r.eC;             // [BH, NC]
    dGc = dGc - dd;
    dGc.select(-1, ch.C - 1).add_(dd.sum(-1) + deC);
    // Gc_t = Σ_{s≤t} g_s, Gp_t = Σ_{s<t} g_s (within the chunk).
    const at::Tensor rc_c = dGc.flip(-1).cumsum(-1).flip(-1);
    const at::Tensor rc_p = dGp.flip(-1).cumsum(-1).flip(-1) - dGp;
    at::Tensor dgc = rc_c + rc_p;

    auto put = [&](at::Tensor& dst, const at::Tensor& src) {
      at::Tensor u = unchunk(src, ch.T);
      std::vector<int64_t> shape = {gr.nb, L.HV, ch.T};
      if (u.dim() == 3) shape.push_back(u.size(2));
      dst.narrow(0, gr.b0, gr.nb).narrow(2, gr.t0, ch.T).copy_(u.reshape(shape));
    };
    put(dq, dQc);
    put(dk, dKc);
    put(dv, dVc);
    put(dbeta, dbc);
    put(da, dac);
    put(dg, dgc);
  }

  std::vector<at::Tensor> out(7);
  out[0] = fold_heads(dq, L, true).to(in.q.scalar_type()).contiguous();
  out[1] = fold_heads(dk, L, true).to(in.k.scalar_type()).contiguous();
  out[2] = fold_heads(dv, L, false).to(in.v.scalar_type()).contiguous();
  at::Tensor db = L.has_erase ? dbeta : dbeta + da;
  out[3] = fold_heads(db, L, false).to(in.beta.scalar_type()).contiguous();
  auto empty = at::empty({0}, L.q.options());
  out[4] = L.has_g ? fold_heads(dg, L, false).to(in.g->scalar_type()).contiguous() : empty;
  out[5] = L.has_erase ? fold_heads(da, L, false).to(in.erase->scalar_type()).contiguous() : empty;
  out[6] = in.initial_state ? dh0.to(in.initial_state->scalar_type()) : empty;
  return out;
}

}  // namespace nlcore::cpu
