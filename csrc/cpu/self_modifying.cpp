// Self-modifying memories on the CPU (math and backward in cpu/self_modifying.h). The four
// memories run as 4·H heads of the MLP memory's chunk step (cpu/mlp_chunk.h), memory-major
// (head m·H + h); the open chunk's log-retention sum is carried per head copy (the four copies
// stay equal) and returned from memory k's copy. Per chunk: the reads of x by all four memories
// in one GEMM per layer, the derived k, v, eta, g, then the chunk step on the k and v rows.
#include "cpu/self_modifying.h"

#include "cpu/mlp_chunk.h"

namespace nlcore::cpu {
namespace {

using namespace mlp;
constexpr int64_t M = kSelfModMemories;

struct Layout {
  int64_t B, T, H, D, F, N;
  Prec prec;
  bool shared;
};

Layout make_layout(const SelfModInputs& in) {
  Layout L;
  L.B = in.x.size(0);
  L.T = in.x.size(1);
  L.H = in.x.size(2);
  L.D = in.x.size(3);
  L.F = in.w_in.size(-2);
  L.N = in.cu_seqlens ? in.cu_seqlens->numel() - 1 : L.B;
  L.shared = in.w_in.dim() == 4;
  L.prec = make_prec(in.x.scalar_type(), in.w_in.scalar_type());
  return L;
}

// Public [4, N, H, ...] (or shared [4, H, ...]) <-> internal [N, 4·H, ...] (or [4·H, ...]).
at::Tensor to_heads(const at::Tensor& t) {
  if (t.dim() == 4) return t.reshape({M * t.size(1), t.size(2), t.size(3)});
  return t.transpose(0, 1).reshape({t.size(1), M * t.size(2), t.size(3), t.size(4)});
}
at::Tensor from_heads(const at::Tensor& t, int64_t H) {  // [N, 4·H, a, b] -> [4, N, H, a, b]
  return t.view({t.size(0), M, H, t.size(2), t.size(3)}).transpose(0, 1).contiguous();
}
at::Tensor repeat_heads(const at::Tensor& t) {  // [R, H, ...] -> [R, 4·H, ...]
  std::vector<int64_t> reps(t.dim(), 1);
  reps[1] = M;
  return t.repeat(reps);
}
at::Tensor sum_heads(const at::Tensor& t, int64_t H) {  // [R, 4·H, ...] -> [R, H, ...]
  std::vector<int64_t> shape = {t.size(0), M, H};
  for (int64_t d = 2; d < t.dim(); ++d) shape.push_back(t.size(d));
  return t.reshape(shape).sum(1);
}

StateIn state_in(const SelfModInputs& in) {
  StateIn s{to_heads(in.w_in), to_heads(in.w_out)};
  if (in.p_in) {
    s.p_in = to_heads(*in.p_in);
    s.p_out = to_heads(*in.p_out);
    s.acc_in = to_heads(*in.acc_in);
    s.acc_out = to_heads(*in.acc_out);
    s.acc_g = repeat_heads(*in.acc_g);
  }
  return s;
}

MlpScanArgs step_args(const SelfModArgs& a) {
  return MlpScanArgs{a.chunk_size,   a.momentum,        a.activation, /*residual=*/true,
                     MlpObjective::kL2, /*self_target=*/true, a.dgd_erase, a.checkpoint_every};
}

// Rows k, v of the chunk step (no x rows): computed in fp32, so rounded before each GEMM.
constexpr RowLayout kRows{2, -1, 0, 1, false};

struct Gates {
  at::Tensor w_eta, w_alpha, b_eta, b_alpha;  // [H, 1, D], [H, 1] in the work dtype
};

Gates make_gates(const SelfModInputs& in, const Layout& L) {
  const auto opt = in.x.options().dtype(L.prec.work);
  auto bias = [&](const std::optional<at::Tensor>& b) {
    return (b ? b->to(L.prec.work) : at::zeros({L.H}, opt)).unsqueeze(-1);
  };
  return Gates{in.w_eta.to(L.prec.work).unsqueeze(1), in.w_alpha.to(L.prec.work).unsqueeze(1),
               bias(in.b_eta), bias(in.b_alpha)};
}

// One chunk's forward record: the reads and derived values, and the chunk step's Fwd.
struct SmFwd {
  Fwd f;
  Chunk local;  // the chunk as seen by the step: tokens [0, len)
  at::Tensor X4, Zx, Hx, dHx, Rx;     // [R, 4H, len, ·]
  at::Tensor k, v, s, eta, g;         // [R, H, len(, D)], s = 1/‖r_k‖ [R, H, len, 1]
};

SmFwd sm_forward(const at::Tensor& X, const State& st, const Chunk& c, const Gates& gt,
                 const SelfModArgs& a, const MlpScanArgs& am, const Prec& p) {
  SmFwd r;
  const int64_t len = c.e - c.s, R = X.size(0), H = X.size(1), D = X.size(3);
  r.local = Chunk{0, len, c.complete};
  r.X4 = repeat_heads(X.narrow(2, c.s, len));                  // [R, 4H, len, D]
  r.Zx = mm(p, r.X4, tr(st.w1), true);
  Act act = activate(r.Zx, a.activation, false);
  r.Hx = act.h;
  r.dHx = act.dh;
  r.Rx = mma(p, r.X4, r.Hx, tr(st.w2));                        // M_m(x) = x + W2 σ(W1 x)
  const at::Tensor R5 = r.Rx.view({R, M, H, len, D});
  const at::Tensor rk = R5.select(1, 0), re = R5.select(1, 2), ra = R5.select(1, 3);
  r.s = at::rsqrt((rk * rk).sum(-1, true) + kSelfModNormEps);
  r.k = rk * r.s;
  r.v = R5.select(1, 1);
  r.eta = at::sigmoid((re * gt.w_eta).sum(-1) + gt.b_eta) * a.eta_max;
  r.g = at::log_sigmoid((ra * gt.w_alpha).sum(-1) + gt.b_alpha);
  Rows rw;
  rw.lay = kRows;
  rw.U = repeat_heads(at::stack({r.k, r.v}, 3));               // [R, 4H, len, 2, D]
  rw.eta = repeat_heads(r.eta);
  rw.g = repeat_heads(r.g);
  r.f = chunk_forward(rw, st, r.local, am, p);
  return r;
}

// Token-gradient and gate-gradient sinks of one group.
struct Sinks {
  at::Tensor dX;                          // [R, H, len, D]
  at::Tensor dk, dv, deta, dg;            // the output gradients [R, H, len(, D)] (read)
  at::Tensor dw_eta, dw_alpha, db_eta, db_alpha;  // [H, D], [H] accumulated
};

Grad sm_backward(const State& st, const SmFwd& r, const Chunk& c, const Grad& gn, Sinks& sk,
                 const Gates& gt, const SelfModArgs& a, const MlpScanArgs& am, const Prec& p) {
  const int64_t len = c.e - c.s, R = r.X4.size(0), H = r.k.size(1), D = r.k.size(3);
  const auto opt = r.X4.options();
  // 1. the chunk step of every memory on its k and v rows
  at::Tensor dU = at::empty({R, M * H, len, 2, D}, opt);
  at::Tensor deta4 = at::empty({R, M * H, len}, opt), dg4 = at::empty_like(deta4);
  Grad gs = chunk_backward(st, r.f, r.local, gn, am, p, at::Tensor(), dU, at::Tensor(), deta4,
                           dg4);
  const at::Tensor dUs = sum_heads(dU, H);                     // [R, H, len, 2, D]
  const at::Tensor dk = sk.dk.narrow(2, c.s, len) + dUs.select(3, 0);
  const at::Tensor dv = sk.dv.narrow(2, c.s, len) + dUs.select(3, 1);
  const at::Tensor deta = sk.deta.narrow(2, c.s, len) + sum_heads(deta4, H);
  const at::Tensor dg = sk.dg.narrow(2, c.s, len) + sum_heads(dg4, H);
  // 2. through k = r_k / ‖r_k‖, eta = eta_max sigmoid(a), g = log sigmoid(b)
  const at::Tensor dRk = r.s * (dk - r.k * (r.k * dk).sum(-1, true));
  const at::Tensor da = deta * r.eta * (1 - r.eta / a.eta_max);  // [R, H, len]
  const at::Tensor db = dg * (1 - r.g.exp());
  const at::Tensor R5 = r.Rx.view({R, M, H, len, D});
  sk.dw_eta += (da.unsqueeze(-1) * R5.select(1, 2)).sum(at::IntArrayRef{0, 2});
  sk.dw_alpha += (db.unsqueeze(-1) * R5.select(1, 3)).sum(at::IntArrayRef{0, 2});
  sk.db_eta += da.sum(at::IntArrayRef{0, 2});
  sk.db_alpha += db.sum(at::IntArrayRef{0, 2});
  const at::Tensor dRx = at::stack({dRk, dv, da.unsqueeze(-1) * gt.w_eta,
                                    db.unsqueeze(-1) * gt.w_alpha}, 1)
                             .view({R, M * H, len, D});
  // 3. through the reads Rx = X + σ(X W1ᵀ) W2ᵀ
  const at::Tensor dZx = mm(p, dRx, st.w2) * r.dHx;
  mma_(p, gs.w2, tr(dRx), r.Hx);
  mma_(p, gs.w1, tr(dZx), r.X4, false, true);
  sk.dX.narrow(2, c.s, len).copy_(sum_heads(mma(p, dRx, dZx, st.w1), H));
  return gs;
}

at::Tensor tokens_or_zeros(const std::vector<at::Tensor>& d, size_t j, const Group& gr,
                           at::IntArrayRef shape, const at::TensorOptions& opt) {
  if (j < d.size() && d[j].defined()) return take_tokens(d[j], gr, opt.dtype().toScalarType());
  return at::zeros(shape, opt);
}

}  // namespace

std::vector<at::Tensor> self_modifying_scan_forward(const SelfModInputs& in,
                                                    const SelfModArgs& a) {
  const Layout L = make_layout(in);
  const Prec& p = L.prec;
  const MlpScanArgs am = step_args(a);
  const auto opt = in.x.options().dtype(p.work);
  const Gates gt = make_gates(in, L);
  const StateIn s_in = state_in(in);
  const bool varlen = in.cu_seqlens.has_value();
  at::Tensor k = at::empty({L.B, L.T, L.H, L.D}, in.x.options()), v = at::empty_like(k);
  at::Tensor eta = at::empty({L.B, L.T, L.H}, opt), g = at::empty_like(eta);
  std::vector<at::Tensor> fin = state_buffers(L.N, M * L.H, L.F, L.D, opt, false);
  at::Tensor n_out = at::empty({L.N}, in.x.options().dtype(at::kLong));
  for (const Group& gr : make_groups(in.cu_seqlens, L.B, L.T, L.N, initial_counts(in.n, L.N))) {
    State st = gather_state(s_in, p.work, gr.seqs);
    const int64_t len = gr.t1 - gr.t0, R = static_cast<int64_t>(gr.rows.size());
    if (len > 0) {
      const at::Tensor X = take_tokens(in.x, gr, p.work).contiguous();
      at::Tensor kg = at::empty({R, L.H, len, L.D}, opt), vg = at::empty_like(kg);
      at::Tensor etag = at::empty({R, L.H, len}, opt), gg = at::empty_like(etag);
      for (const Chunk& c : chunk_grid(len, gr.n0, a.chunk_size)) {
        const SmFwd r = sm_forward(X, st, c, gt, a, am, p);
        kg.narrow(2, c.s, c.e - c.s).copy_(r.k);
        vg.narrow(2, c.s, c.e - c.s).copy_(r.v);
        etag.narrow(2, c.s, c.e - c.s).copy_(r.eta);
        gg.narrow(2, c.s, c.e - c.s).copy_(r.g);
        st = chunk_update(st, r.f, r.local, am, p);
      }
      put_tokens(k, kg, gr, varlen);
      put_tokens(v, vg, gr, varlen);
      put_tokens(eta, etag, gr, varlen);
      put_tokens(g, gg, gr, varlen);
    }
    const at::Tensor idx = long_tensor(gr.seqs);
    scatter_state(fin, st, idx, true);
    n_out.index_fill_(0, idx, (gr.n0 + len) % a.chunk_size);
  }
  std::vector<at::Tensor> out = {k, v, eta, g};
  for (int j = 0; j < 6; ++j) out.push_back(from_heads(fin[j], L.H));
  out.push_back(fin[6].narrow(1, 0, L.H).contiguous());  // acc_g: memory k's copy
  out.push_back(n_out);
  return out;
}

std::vector<at::Tensor> self_modifying_scan_backward(const SelfModInputs& in,
                                                     const std::vector<at::Tensor>& d_out,
                                                     const std::vector<at::Tensor>& d_final,
                                                     const SelfModArgs& a) {
  const Layout L = make_layout(in);
  const Prec& p = L.prec;
  const MlpScanArgs am = step_args(a);
  const auto opt = in.x.options().dtype(p.work);
  const Gates gt = make_gates(in, L);
  const StateIn s_in = state_in(in);
  const bool varlen = in.cu_seqlens.has_value();
  const int64_t H4 = M * L.H;
  // Final-state gradients in the internal layout; acc_g's goes to memory k's copy.
  std::vector<at::Tensor> dfin(7);
  for (int j = 0; j < 6; ++j)
    if (j < static_cast<int>(d_final.size()) && d_final[j].defined())
      dfin[j] = to_heads(d_final[j].to(p.work));
  if (d_final.size() > 6 && d_final[6].defined()) {
    const at::Tensor dg0 = d_final[6].to(p.work);
    dfin[6] = at::cat({dg0, at::zeros({L.N, H4 - L.H}, opt)}, 1);
  }
  at::Tensor dx = at::zeros({L.B, L.T, L.H, L.D}, opt);
  Sinks sk;
  sk.dw_eta = at::zeros({L.H, L.D}, opt);
  sk.dw_alpha = at::zeros_like(sk.dw_eta);
  sk.db_eta = at::zeros({L.H}, opt);
  sk.db_alpha = at::zeros_like(sk.db_eta);
  std::vector<at::Tensor> dstate = state_buffers(L.N, H4, L.F, L.D, opt, true);
  for (const Group& gr : make_groups(in.cu_seqlens, L.B, L.T, L.N, initial_counts(in.n, L.N))) {
    const int64_t len = gr.t1 - gr.t0, R = static_cast<int64_t>(gr.rows.size());
    const at::Tensor idx = long_tensor(gr.seqs);
    Grad gn = final_grads(dfin, idx, H4, L.F, L.D, opt);
    if (len > 0) {
      const at::Tensor X = take_tokens(in.x, gr, p.work).contiguous();
      const std::vector<Chunk> grid = chunk_grid(len, gr.n0, a.chunk_size);
      sk.dX = at::zeros({R, L.H, len, L.D}, opt);
      sk.dk = tokens_or_zeros(d_out, 0, gr, {R, L.H, len, L.D}, opt);
      sk.dv = tokens_or_zeros(d_out, 1, gr, {R, L.H, len, L.D}, opt);
      sk.deta = tokens_or_zeros(d_out, 2, gr, {R, L.H, len}, opt);
      sk.dg = tokens_or_zeros(d_out, 3, gr, {R, L.H, len}, opt);
      gn = reverse_walk(
          gather_state(s_in, p.work, gr.seqs), static_cast<int64_t>(grid.size()),
          a.checkpoint_every, gn,
          [&](const State& s, int64_t j) {
            const SmFwd r = sm_forward(X, s, grid[j], gt, a, am, p);
            return chunk_update(s, r.f, r.local, am, p);
          },
          [&](const State& s, int64_t j) { return sm_forward(X, s, grid[j], gt, a, am, p); },
          [&](const State& s, const SmFwd& r, int64_t j) {
            return chunk_update(s, r.f, r.local, am, p);
          },
          [&](const State& s, const SmFwd& r, int64_t j, const Grad& g) {
            return sm_backward(s, r, grid[j], g, sk, gt, a, am, p);
          });
      put_tokens(dx, sk.dX, gr, varlen);
    }
    scatter_state(dstate, State{gn.w1, gn.w2, gn.p1, gn.p2, gn.a1, gn.a2, gn.ag}, idx, false);
  }
  std::vector<at::Tensor> out(12);
  const at::Tensor empty = at::empty({0}, opt);
  out[0] = dx.to(in.x.scalar_type());
  auto weight_grad = [&](const at::Tensor& d, const at::Tensor& w) {
    if (L.shared) return d.sum(0).view(w.sizes()).to(w.scalar_type());
    return from_heads(d, L.H).to(w.scalar_type());
  };
  out[1] = weight_grad(dstate[0], in.w_in);
  out[2] = weight_grad(dstate[1], in.w_out);
  out[3] = sk.dw_eta.to(in.w_eta.scalar_type());
  out[4] = sk.dw_alpha.to(in.w_alpha.scalar_type());
  out[5] = in.b_eta ? sk.db_eta.to(in.b_eta->scalar_type()) : empty;
  out[6] = in.b_alpha ? sk.db_alpha.to(in.b_alpha->scalar_type()) : empty;
  if (in.p_in) {
    const std::optional<at::Tensor>* src[] = {&in.p_in, &in.p_out, &in.acc_in, &in.acc_out};
    for (int j = 0; j < 4; ++j)
      out[7 + j] = from_heads(dstate[2 + j], L.H).to((*src[j])->scalar_type());
    out[11] = sum_heads(dstate[6], L.H).to(in.acc_g->scalar_type());
  } else {
    for (int j = 7; j < 12; ++j) out[j] = empty;
  }
  return out;
}

}  // namespace nlcore::cpu
