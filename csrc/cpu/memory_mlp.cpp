// MLP memory scan on the CPU: the chunk loop and the checkpointed explicit backward written
// out in cpu/memory_mlp.h. All rows (batch entries) that share one chunk grid advance
// together as batched GEMMs; a chunk's x-, k- (and, with self_target, v-) token rows go
// through the memory in one GEMM per layer.
#include "cpu/memory_mlp.h"

#include <algorithm>
#include <cmath>

namespace nlcore::cpu {
namespace {

struct Prec {
  at::ScalarType work;
  bool round;  // round GEMM operands to `low`
  at::ScalarType low;
};

at::Tensor rnd(const Prec& p, const at::Tensor& t) {
  return p.round ? t.to(p.low).to(p.work) : t;
}
// GEMM with rounded operands (exact = the operand already holds input-dtype values).
// [R, H, m, k] × [R, H, k, n] as one bmm over R·H (at::matmul's broadcasting bookkeeping
// costs as much as the GEMM itself at C = 1).
at::Tensor mm(const Prec& p, const at::Tensor& a, const at::Tensor& b, bool a_exact = false,
              bool b_exact = false) {
  const at::Tensor A = a_exact ? a : rnd(p, a), B = b_exact ? b : rnd(p, b);
  const int64_t R = A.size(0), H = A.size(1);
  return at::bmm(A.reshape({R * H, A.size(2), A.size(3)}), B.reshape({R * H, B.size(2), B.size(3)}))
      .view({R, H, A.size(2), B.size(3)});
}
// c + a·b in one baddbmm (c [R, H, m, n], any strides).
at::Tensor mma(const Prec& p, const at::Tensor& c, const at::Tensor& a, const at::Tensor& b,
               bool a_exact = false, bool b_exact = false) {
  const at::Tensor A = a_exact ? a : rnd(p, a), B = b_exact ? b : rnd(p, b);
  const int64_t R = A.size(0), H = A.size(1);
  return at::baddbmm(c.reshape({R * H, c.size(2), c.size(3)}),
                     A.reshape({R * H, A.size(2), A.size(3)}),
                     B.reshape({R * H, B.size(2), B.size(3)}))
      .view({R, H, A.size(2), B.size(3)});
}
at::Tensor tr(const at::Tensor& t) { return t.transpose(-1, -2); }

struct Act {
  at::Tensor h, dh, d2h;  // σ(z), σ'(z), σ''(z) (the last only when asked)
};
Act activate(const at::Tensor& z, MlpActivation a, bool second) {
  Act r;
  if (a == MlpActivation::kSilu) {
    const at::Tensor s = at::sigmoid(z);
    r.h = z * s;
    r.dh = at::addcmul(s + r.h, r.h, s, -1);  // s (1 + z (1 − s)) = s + h − h s
    if (second) r.d2h = (s - s * s) * (2 + z - 2 * r.h);
  } else {
    const at::Tensor cdf = 0.5 * (1 + at::erf(z * M_SQRT1_2));
    const at::Tensor pdf = at::exp(-0.5 * z * z) * (0.5 * M_2_SQRTPI * M_SQRT1_2);
    r.h = z * cdf;
    r.dh = cdf + z * pdf;
    if (second) r.d2h = pdf * (2 - z * z);
  }
  return r;
}

// Weights, momentum buffers and open-chunk accumulators of R rows ([R, H, ...]); tensors are
// replaced, never mutated, so copies of a State are cheap snapshots. An undefined accumulator
// is zero (a chunk start): at C = 1 the per-token op count is what costs.
struct State {
  at::Tensor w1, w2, p1, p2, a1, a2, ag;
};

struct Chunk {
  int64_t s, e;
  bool complete;
};

std::vector<Chunk> chunk_grid(int64_t T, int64_t n0, int64_t C) {
  std::vector<Chunk> out;
  int64_t s = 0, n = n0;
  while (s < T) {
    const int64_t e = std::min(T, s + C - n);
    out.push_back({s, e, n + (e - s) == C});
    n = (n + e - s) % C;
    s = e;
  }
  return out;
}

// One group of rows sharing a chunk grid. U [R, H, T, nr, D]: per token the rows x, k and,
// with self_target, v (nr = 3), in the work dtype; V [R, H, T, D]; eta, g [R, H, T].
constexpr int64_t kX = 0, kK = 1, kV = 2;
struct Rows {
  at::Tensor U, V, eta, g;
  int64_t nr;
};

// A chunk's forward quantities, kept for its backward. Z, Hall, dHall, Out: [R, H, len·nr, ·].
struct Fwd {
  at::Tensor U, Z, Hall, dHall, Out, Zk, Hk, dHk, E, Eeta, Rr, Q1, K, eta, gsum;
  int64_t len;
};

at::Tensor rows_of(const at::Tensor& t, int64_t len, int64_t nr, int64_t r) {
  return t.unflatten(2, {len, nr}).select(3, r);  // [R, H, len, ·]
}

Fwd chunk_forward(const Rows& rw, const State& st, const Chunk& c, const MlpScanArgs& a,
                  const Prec& p) {
  Fwd f;
  f.len = c.e - c.s;
  const int64_t nr = rw.nr;
  f.U = rw.U.narrow(2, c.s, f.len).flatten(2, 3);              // [R, H, len·nr, D]
  f.Z = mm(p, f.U, tr(st.w1), true);                           // every row's pre-activation
  Act act = activate(f.Z, a.activation, false);
  f.Hall = act.h;
  f.dHall = act.dh;
  f.Out = a.residual ? mma(p, f.U, f.Hall, tr(st.w2))          // M(u) = [u +] W2 σ(W1 u)
                     : mm(p, f.Hall, tr(st.w2));
  f.K = rows_of(f.U, f.len, nr, kK);
  f.Zk = rows_of(f.Z, f.len, nr, kK);
  f.Hk = rows_of(f.Hall, f.len, nr, kK);
  f.dHk = rows_of(f.dHall, f.len, nr, kK);
  const at::Tensor target =
      a.self_target ? rows_of(f.Out, f.len, nr, kV) : rw.V.narrow(2, c.s, f.len);
  f.E = a.objective == MlpObjective::kL2 ? rows_of(f.Out, f.len, nr, kK) - target : -target;
  f.eta = rw.eta.narrow(2, c.s, f.len).unsqueeze(-1);          // [R, H, len, 1]
  f.Eeta = f.eta * f.E;
  f.Rr = mm(p, f.Eeta, st.w2);                                 // R = Eη W2   [len, F]
  f.Q1 = f.dHk * f.Rr;
  if (a.dgd_erase) f.Q1 = at::addcmul(f.Q1, f.eta, f.Zk);      // W1 Kᵀ diag(η) K = (ηZ)ᵀ K
  f.gsum = f.len == 1 ? rw.g.select(2, c.s) : rw.g.narrow(2, c.s, f.len).sum(-1);  // [R, H]
  return f;
}

// Accumulate the chunk's inner gradient and, when it completes, apply the update.
State chunk_update(const State& st, const Fwd& f, const Chunk& c, const MlpScanArgs& a,
                   const Prec& p) {
  State n = st;
  n.a1 = st.a1.defined() ? mma(p, st.a1, tr(f.Q1), f.K, false, true)  // G1 = A1 + Q1ᵀ K
                         : mm(p, tr(f.Q1), f.K, false, true);
  n.a2 = st.a2.defined() ? mma(p, st.a2, tr(f.Eeta), f.Hk) : mm(p, tr(f.Eeta), f.Hk);  // G2
  n.ag = st.ag.defined() ? st.ag + f.gsum : f.gsum;
  if (!c.complete) return n;
  const at::Tensor alpha = n.ag.exp().unsqueeze(-1).unsqueeze(-1);
  auto momentum = [&](const at::Tensor& P, const at::Tensor& G) {  // μ P − G
    return a.momentum == 0.0 ? -G : at::sub(P * a.momentum, G);
  };
  n.p1 = momentum(st.p1, n.a1);
  n.p2 = momentum(st.p2, n.a2);
  n.w1 = at::addcmul(n.p1, alpha, st.w1);                      // ᾱ W + P
  n.w2 = at::addcmul(n.p2, alpha, st.w2);
  n.a1 = n.a2 = n.ag = at::Tensor();
  return n;
}

struct Layout {
  int64_t B, T, H, D, F, N;
  Prec prec;
  bool shared;  // initial weights [H, F, D] broadcast over the sequences
};

Layout make_layout(const MlpScanInputs& in) {
  Layout L;
  L.B = in.x.size(0);
  L.T = in.x.size(1);
  L.H = in.x.size(2);
  L.D = in.x.size(3);
  L.F = in.w_in.size(-2);
  L.N = in.cu_seqlens ? in.cu_seqlens->numel() - 1 : L.B;
  L.shared = in.w_in.dim() == 3;
  const bool f64 = in.x.scalar_type() == at::kDouble || in.w_in.scalar_type() == at::kDouble;
  L.prec.work = f64 ? at::kDouble : at::kFloat;
  const at::ScalarType seq = in.x.scalar_type();
  L.prec.round = !f64 && (seq == at::kBFloat16 || seq == at::kHalf);
  L.prec.low = seq;
  return L;
}

// Groups of (sequence ids, batch rows, t0, t1, n0) sharing a chunk grid.
struct Group {
  std::vector<int64_t> seqs, rows;
  int64_t t0, t1, n0;
};

std::vector<Group> make_groups(const MlpScanInputs& in, const Layout& L,
                               const std::vector<int64_t>& n0) {
  std::vector<Group> out;
  const bool same_n = std::all_of(n0.begin(), n0.end(), [&](int64_t v) { return v == n0[0]; });
  if (!in.cu_seqlens) {
    if (same_n) {
      Group g{{}, {}, 0, L.T, L.N ? n0[0] : 0};
      for (int64_t b = 0; b < L.B; ++b) {
        g.seqs.push_back(b);
        g.rows.push_back(b);
      }
      out.push_back(g);
    } else {
      for (int64_t b = 0; b < L.B; ++b) out.push_back({{b}, {b}, 0, L.T, n0[b]});
    }
    return out;
  }
  at::Tensor cs = in.cu_seqlens->to(at::kCPU, at::kLong).contiguous();
  const int64_t* c = cs.data_ptr<int64_t>();
  for (int64_t i = 0; i < L.N; ++i) out.push_back({{i}, {0}, c[i], c[i + 1], n0[i]});
  return out;
}

std::vector<int64_t> initial_counts(const MlpScanInputs& in, const Layout& L) {
  std::vector<int64_t> n0(L.N, 0);
  if (in.n) {
    at::Tensor n = in.n->to(at::kCPU, at::kLong).contiguous();
    for (int64_t i = 0; i < L.N; ++i) n0[i] = n.data_ptr<int64_t>()[i];
  }
  return n0;
}

at::Tensor index_rows(const at::Tensor& t, const std::vector<int64_t>& idx) {
  return t.index_select(0, at::tensor(idx, at::TensorOptions().dtype(at::kLong)));
}

State initial_state(const MlpScanInputs& in, const Layout& L, const Group& gr) {
  const auto opt = in.x.options().dtype(L.prec.work);
  const int64_t R = static_cast<int64_t>(gr.seqs.size());
  auto weight = [&](const at::Tensor& w) {
    at::Tensor t = w.to(L.prec.work);
    if (t.dim() == 3) return t.unsqueeze(0).expand({R, t.size(0), t.size(1), t.size(2)});
    return index_rows(t, gr.seqs);
  };
  State s;
  s.w1 = weight(in.w_in);
  s.w2 = weight(in.w_out);
  if (in.p_in) {
    s.p1 = index_rows(in.p_in->to(L.prec.work), gr.seqs);
    s.p2 = index_rows(in.p_out->to(L.prec.work), gr.seqs);
    s.a1 = index_rows(in.acc_in->to(L.prec.work), gr.seqs);
    s.a2 = index_rows(in.acc_out->to(L.prec.work), gr.seqs);
    s.ag = index_rows(in.acc_g->to(L.prec.work), gr.seqs);
  } else {
    s.p1 = at::zeros({R, L.H, L.F, L.D}, opt);
    s.p2 = at::zeros({R, L.H, L.D, L.F}, opt);
  }
  return s;
}

Rows make_rows(const MlpScanInputs& in, const Layout& L, const Group& gr,
               const MlpScanArgs& a) {
  const int64_t len = gr.t1 - gr.t0;
  auto take = [&](const at::Tensor& t) {  // [B, T, H(, D)] -> [R, H, len(, D)]
    at::Tensor y = index_rows(t, gr.rows).narrow(1, gr.t0, len).to(L.prec.work);
    return y.transpose(1, 2);
  };
  Rows rw;
  rw.nr = a.self_target ? 3 : 2;
  std::vector<at::Tensor> parts = {take(in.x), take(in.k)};
  rw.V = take(in.v).contiguous();
  if (a.self_target) parts.push_back(rw.V);
  rw.U = at::stack(parts, 3).contiguous();  // [R, H, len, nr, D]
  rw.eta = take(in.eta).contiguous();
  rw.g = in.g ? take(*in.g).contiguous() : at::zeros_like(rw.eta);
  return rw;
}

}  // namespace

std::vector<at::Tensor> memory_mlp_scan_forward(const MlpScanInputs& in, const MlpScanArgs& a) {
  const Layout L = make_layout(in);
  const Prec& p = L.prec;
  const auto opt = in.x.options().dtype(p.work);
  at::Tensor y = at::empty({L.B, L.T, L.H, L.D}, in.x.options());
  std::vector<at::Tensor> fin = {at::empty({L.N, L.H, L.F, L.D}, opt),
                                 at::empty({L.N, L.H, L.D, L.F}, opt),
                                 at::empty({L.N, L.H, L.F, L.D}, opt),
                                 at::empty({L.N, L.H, L.D, L.F}, opt),
                                 at::empty({L.N, L.H, L.F, L.D}, opt),
                                 at::empty({L.N, L.H, L.D, L.F}, opt),
                                 at::empty({L.N, L.H}, opt)};
  at::Tensor n_out = at::empty({L.N}, in.x.options().dtype(at::kLong));
  const std::vector<int64_t> n0 = initial_counts(in, L);
  for (const Group& gr : make_groups(in, L, n0)) {
    State st = initial_state(in, L, gr);
    const int64_t len = gr.t1 - gr.t0;
    if (len > 0) {
      const Rows rw = make_rows(in, L, gr, a);
      at::Tensor yg = at::empty({static_cast<int64_t>(gr.rows.size()), L.H, len, L.D}, opt);
      for (const Chunk& c : chunk_grid(len, gr.n0, a.chunk_size)) {
        const Fwd f = chunk_forward(rw, st, c, a, p);
        yg.narrow(2, c.s, f.len).copy_(rows_of(f.Out, f.len, rw.nr, kX));  // read at the anchor
        st = chunk_update(st, f, c, a, p);
      }
      // [R, H, len, D] -> y rows (fixed-length group: all rows; varlen: the sequence's span)
      at::Tensor dst = in.cu_seqlens ? y.narrow(1, gr.t0, len) : y;
      if (!in.cu_seqlens && gr.rows.size() == 1) dst = y.narrow(0, gr.rows[0], 1);
      dst.copy_(yg.transpose(1, 2));
    }
    const at::Tensor idx = at::tensor(gr.seqs, at::TensorOptions().dtype(at::kLong));
    const at::Tensor parts[7] = {st.w1, st.w2, st.p1, st.p2, st.a1, st.a2, st.ag};
    for (int j = 0; j < 7; ++j) {
      if (parts[j].defined())
        fin[j].index_copy_(0, idx, parts[j].contiguous());
      else
        fin[j].index_fill_(0, idx, 0);
    }
    n_out.index_fill_(0, idx, (gr.n0 + len) % a.chunk_size);
  }
  fin.insert(fin.begin(), y);
  fin.push_back(n_out);
  return fin;
}

namespace {

// Gradients of one chunk-start state (and of the open-chunk accumulators it carried in).
struct Grad {
  at::Tensor w1, w2, p1, p2, a1, a2, ag;
};

// Backward of one chunk. `gn` holds the gradients of the state after the chunk: for a
// complete chunk those of (w1, w2, p1, p2); for the incomplete last chunk also those of the
// accumulators (a1, a2, ag) it leaves. Writes the token gradients into dU [R, H, len, nr, D],
// dV, deta, dg (views of the group's buffers) and returns the chunk-start state's gradients.
Grad chunk_backward(const State& st, const Fwd& f, const Chunk& c, const Grad& gn,
                    const MlpScanArgs& a, const Prec& p, const at::Tensor& dY,
                    at::Tensor dU, at::Tensor dV, at::Tensor deta, at::Tensor dg) {
  Grad gs;
  at::Tensor dG1, dG2, dsum;
  if (c.complete) {
    const at::Tensor alpha = (st.ag.defined() ? st.ag + f.gsum : f.gsum).exp();  // [R, H]
    const at::Tensor al = alpha.unsqueeze(-1).unsqueeze(-1);
    const at::Tensor t1 = gn.p1 + gn.w1, t2 = gn.p2 + gn.w2;
    dG1 = -t1;
    dG2 = -t2;
    gs.p1 = a.momentum * t1;
    gs.p2 = a.momentum * t2;
    gs.w1 = al * gn.w1;
    gs.w2 = al * gn.w2;
    dsum = alpha * ((gn.w1 * st.w1).sum({-1, -2}) + (gn.w2 * st.w2).sum({-1, -2}));
  } else {
    dG1 = gn.a1;
    dG2 = gn.a2;
    dsum = gn.ag;
    gs.w1 = gn.w1;
    gs.w2 = gn.w2;
    gs.p1 = gn.p1;
    gs.p2 = gn.p2;
  }
  gs.a1 = dG1;  // G = A + (this chunk's sum): the carried-in accumulators get dG
  gs.a2 = dG2;
  gs.ag = dsum;
  dg.copy_(dsum.unsqueeze(-1).expand_as(dg));

  const int64_t nr = f.U.size(2) / f.len;
  // Inner gradient: G1 = Q1ᵀ K, G2 = Eηᵀ H.
  const at::Tensor dQ1 = mm(p, f.K, tr(dG1), true);            // [len, F]
  const at::Tensor dK = mm(p, f.Q1, dG1);                      // [len, D]
  at::Tensor dZk = activate(f.Zk, a.activation, true).d2h * f.Rr * dQ1;  // σ''(Z) ⊙ R ⊙ dQ1
  const at::Tensor dR = f.dHk * dQ1;
  const at::Tensor dEeta = mma(p, mm(p, f.Hk, tr(dG2)), dR, tr(st.w2));
  const at::Tensor dHk = mm(p, f.Eeta, dG2);
  at::Tensor d_eta = (f.E * dEeta).sum(-1);
  if (a.dgd_erase) {
    dZk = at::addcmul(dZk, f.eta, dQ1);
    d_eta = d_eta + (f.Zk * dQ1).sum(-1);
  }
  const at::Tensor dE = f.eta * dEeta;

  // Gradients of the memory outputs, row by row: x rows get dY, k rows dPr, v rows dTg.
  const at::Tensor dPr = a.objective == MlpObjective::kL2 ? dE : at::zeros_like(dE);
  std::vector<at::Tensor> rows = {dY, dPr};
  if (a.self_target)
    rows.push_back(-dE);
  else
    dV.copy_(-dE);
  const at::Tensor dOut = at::stack(rows, 3).flatten(2, 3);     // [R, H, len·nr, D]
  at::Tensor dHall = mm(p, dOut, st.w2);                       // [len·nr, F]
  rows_of(dHall, f.len, nr, kK).add_(dHk);
  gs.w2 = mma(p, mma(p, gs.w2, tr(f.Eeta), dR), tr(dOut), f.Hall);
  at::Tensor dZ = dHall * f.dHall;
  rows_of(dZ, f.len, nr, kK).add_(dZk);
  const at::Tensor dUc = a.residual ? mma(p, dOut, dZ, st.w1) : mm(p, dZ, st.w1);
  gs.w1 = mma(p, gs.w1, tr(dZ), f.U, false, true);
  at::Tensor dUr = dUc.unflatten(2, {f.len, nr});
  dUr.select(3, kK).add_(dK);
  dU.copy_(dUr);
  deta.copy_(d_eta);
  return gs;
}

}  // namespace

std::vector<at::Tensor> memory_mlp_scan_backward(const MlpScanInputs& in, const at::Tensor& d_y,
                                                 const std::vector<at::Tensor>& d_final,
                                                 const MlpScanArgs& a) {
  const Layout L = make_layout(in);
  const Prec& p = L.prec;
  const auto opt = in.x.options().dtype(p.work);
  const int64_t nr = a.self_target ? 3 : 2;
  at::Tensor dx = at::zeros({L.B, L.T, L.H, L.D}, opt), dk = at::zeros_like(dx),
             dv = at::zeros_like(dx);
  at::Tensor deta = at::zeros({L.B, L.T, L.H}, opt), dg = at::zeros_like(deta);
  std::vector<at::Tensor> dstate = {at::zeros({L.N, L.H, L.F, L.D}, opt),
                                    at::zeros({L.N, L.H, L.D, L.F}, opt),
                                    at::zeros({L.N, L.H, L.F, L.D}, opt),
                                    at::zeros({L.N, L.H, L.D, L.F}, opt),
                                    at::zeros({L.N, L.H, L.F, L.D}, opt),
                                    at::zeros({L.N, L.H, L.D, L.F}, opt),
                                    at::zeros({L.N, L.H}, opt)};
  const at::Tensor dY_all = d_y.to(p.work);
  const std::vector<int64_t> n0 = initial_counts(in, L);
  for (const Group& gr : make_groups(in, L, n0)) {
    const int64_t R = static_cast<int64_t>(gr.seqs.size());
    const int64_t len = gr.t1 - gr.t0;
    const at::Tensor idx = at::tensor(gr.seqs, at::TensorOptions().dtype(at::kLong));
    auto dfin = [&](int j, std::vector<int64_t> shape) {
      if (j < static_cast<int>(d_final.size()) && d_final[j].defined())
        return d_final[j].to(p.work).index_select(0, idx);
      shape.insert(shape.begin(), R);
      return at::zeros(shape, opt);
    };
    Grad gn{dfin(0, {L.H, L.F, L.D}), dfin(1, {L.H, L.D, L.F}), dfin(2, {L.H, L.F, L.D}),
            dfin(3, {L.H, L.D, L.F}), dfin(4, {L.H, L.F, L.D}), dfin(5, {L.H, L.D, L.F}),
            dfin(6, {L.H})};
    State st0 = initial_state(in, L, gr);
    if (len > 0) {
      const Rows rw = make_rows(in, L, gr, a);
      const std::vector<Chunk> grid = chunk_grid(len, gr.n0, a.chunk_size);
      const int64_t nc = static_cast<int64_t>(grid.size());
      const int64_t every = std::max<int64_t>(1, a.checkpoint_every);
      // Pass 1: chunk-start states every `every` chunks — up to the last segment, which the
      // segment pass below recomputes anyway (a single segment needs no pass 1 at all).
      const int64_t nseg = (nc + every - 1) / every;
      std::vector<State> ckpt;
      State st = st0;
      for (int64_t j = 0; j < (nseg - 1) * every; ++j) {
        if (j % every == 0) ckpt.push_back(st);
        st = chunk_update(st, chunk_forward(rw, st, grid[j], a, p), grid[j], a, p);
      }
      ckpt.push_back(st);
      // Token gradients of the group, [R, H, len, ...].
      at::Tensor dU = at::zeros({R, L.H, len, nr, L.D}, opt);
      at::Tensor dVg = at::zeros({R, L.H, len, L.D}, opt);
      at::Tensor detag = at::zeros({R, L.H, len}, opt), dgg = at::zeros_like(detag);
      at::Tensor dYg = index_rows(dY_all, gr.rows).narrow(1, gr.t0, len).transpose(1, 2);
      // Pass 2: segments in reverse; recompute the segment's chunk-start states, walk back.
      for (int64_t s = nseg - 1; s >= 0; --s) {
        const int64_t j0 = s * every, j1 = std::min(nc, j0 + every);
        std::vector<State> states = {ckpt[s]};
        std::vector<Fwd> fwds;
        for (int64_t j = j0; j < j1; ++j) {
          fwds.push_back(chunk_forward(rw, states.back(), grid[j], a, p));
          if (j + 1 < j1)
            states.push_back(chunk_update(states.back(), fwds.back(), grid[j], a, p));
        }
        for (int64_t j = j1 - 1; j >= j0; --j) {
          const Chunk& c = grid[j];
          const State& sj = states[j - j0];
          const Fwd& f = fwds[j - j0];
          const int64_t cl = c.e - c.s;
          gn = chunk_backward(sj, f, c, gn, a, p, dYg.narrow(2, c.s, cl), dU.narrow(2, c.s, cl),
                              dVg.narrow(2, c.s, cl), detag.narrow(2, c.s, cl),
                              dgg.narrow(2, c.s, cl));
          if (j > 0) {  // accumulators carried into a later chunk are zero: no gradient
            gn.a1 = gn.a2 = gn.ag = at::Tensor();
          }
          fwds.pop_back();  // keep at most one segment's activations alive
          states.pop_back();
        }
      }
      if (a.self_target) dVg = dVg + dU.select(3, kV);
      // Scatter the group's token gradients back to [B, T, H, ...].
      auto put = [&](at::Tensor& dst, const at::Tensor& src) {  // src [R, H, len(, D)]
        at::Tensor s2 = src.transpose(1, 2);
        if (in.cu_seqlens) {
          dst.narrow(1, gr.t0, len).copy_(s2);
        } else {
          dst.index_copy_(0, at::tensor(gr.rows, at::TensorOptions().dtype(at::kLong)),
                          s2.contiguous());
        }
      };
      put(dx, dU.select(3, kX));
      put(dk, dU.select(3, kK));
      put(dv, dVg);
      put(deta, detag);
      put(dg, dgg);
    }
    const at::Tensor parts[7] = {gn.w1, gn.w2, gn.p1, gn.p2, gn.a1, gn.a2, gn.ag};
    for (int j = 0; j < 7; ++j)
      if (parts[j].defined()) dstate[j].index_copy_(0, idx, parts[j].contiguous());
  }
  std::vector<at::Tensor> out(12);
  out[0] = dx.to(in.x.scalar_type());
  out[1] = dk.to(in.k.scalar_type());
  out[2] = dv.to(in.v.scalar_type());
  out[3] = deta.to(in.eta.scalar_type());
  const at::Tensor empty = at::empty({0}, opt);
  out[4] = in.g ? dg.to(in.g->scalar_type()) : empty;
  out[5] = (L.shared ? dstate[0].sum(0) : dstate[0]).to(in.w_in.scalar_type());
  out[6] = (L.shared ? dstate[1].sum(0) : dstate[1]).to(in.w_out.scalar_type());
  for (int j = 2; j < 7; ++j) {
    const std::optional<at::Tensor>* src[] = {nullptr, nullptr, &in.p_in, &in.p_out,
                                              &in.acc_in, &in.acc_out, &in.acc_g};
    out[j + 5] = in.p_in ? dstate[j].to((*src[j])->scalar_type()) : empty;
  }
  return out;
}

}  // namespace nlcore::cpu
