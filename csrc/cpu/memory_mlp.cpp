// MLP memory scan on the CPU: the chunk loop and the checkpointed explicit backward written
// out in cpu/memory_mlp.h (the chunk step itself lives in cpu/mlp_chunk.cpp). All rows
// (batch entries) that share one chunk grid advance together as batched GEMMs; a chunk's x-,
// k- (and, with self_target, v-) token rows go through the memory in one GEMM per layer.
#include "cpu/memory_mlp.h"

#include "cpu/mlp_chunk.h"

namespace nlcore::cpu {
namespace {

using namespace mlp;

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
  L.prec = make_prec(in.x.scalar_type(), in.w_in.scalar_type());
  return L;
}

StateIn state_in(const MlpScanInputs& in) {
  return {in.w_in, in.w_out, in.p_in, in.p_out, in.acc_in, in.acc_out, in.acc_g};
}

// Token rows x, k (and v with self_target), stacked per token.
constexpr RowLayout kPlain{2, 0, 1, -1, true}, kSelfTarget{3, 0, 1, 2, true};

Rows make_rows(const MlpScanInputs& in, const Layout& L, const Group& gr,
               const MlpScanArgs& a) {
  const at::ScalarType w = L.prec.work;
  Rows rw;
  rw.lay = a.self_target ? kSelfTarget : kPlain;
  std::vector<at::Tensor> parts = {take_tokens(in.x, gr, w), take_tokens(in.k, gr, w)};
  rw.V = take_tokens(in.v, gr, w).contiguous();
  if (a.self_target) parts.push_back(rw.V);
  rw.U = at::stack(parts, 3).contiguous();  // [R, H, len, nr, D]
  rw.eta = take_tokens(in.eta, gr, w).contiguous();
  rw.g = in.g ? take_tokens(*in.g, gr, w).contiguous() : at::zeros_like(rw.eta);
  return rw;
}

}  // namespace

std::vector<at::Tensor> memory_mlp_scan_forward(const MlpScanInputs& in, const MlpScanArgs& a) {
  const Layout L = make_layout(in);
  const Prec& p = L.prec;
  const auto opt = in.x.options().dtype(p.work);
  at::Tensor y = at::empty({L.B, L.T, L.H, L.D}, in.x.options());
  std::vector<at::Tensor> fin = state_buffers(L.N, L.H, L.F, L.D, opt, false);
  at::Tensor n_out = at::empty({L.N}, in.x.options().dtype(at::kLong));
  for (const Group& gr : make_groups(in.cu_seqlens, L.B, L.T, L.N, initial_counts(in.n, L.N))) {
    State st = gather_state(state_in(in), p.work, gr.seqs);
    const int64_t len = gr.t1 - gr.t0;
    if (len > 0) {
      const Rows rw = make_rows(in, L, gr, a);
      at::Tensor yg = at::empty({static_cast<int64_t>(gr.rows.size()), L.H, len, L.D}, opt);
      for (const Chunk& c : chunk_grid(len, gr.n0, a.chunk_size)) {
        if (token_step_applies(rw, st, c, p)) {
          st = token_step(rw, st, c, a, p, yg.select(2, c.s));
          continue;
        }
        const Fwd f = chunk_forward(rw, st, c, a, p);
        yg.narrow(2, c.s, f.len).copy_(rows_of(f.Out, f.len, rw.lay.nr, rw.lay.ix));  // reads
        st = chunk_update(st, f, c, a, p);
      }
      put_tokens(y, yg, gr, in.cu_seqlens.has_value());
    }
    const at::Tensor idx = long_tensor(gr.seqs);
    scatter_state(fin, st, idx, true);
    n_out.index_fill_(0, idx, (gr.n0 + len) % a.chunk_size);
  }
  fin.insert(fin.begin(), y);
  fin.push_back(n_out);
  return fin;
}

std::vector<at::Tensor> memory_mlp_scan_backward(const MlpScanInputs& in, const at::Tensor& d_y,
                                                 const std::vector<at::Tensor>& d_final,
                                                 const MlpScanArgs& a) {
  const Layout L = make_layout(in);
  const Prec& p = L.prec;
  const auto opt = in.x.options().dtype(p.work);
  const bool varlen = in.cu_seqlens.has_value();
  at::Tensor dx = at::zeros({L.B, L.T, L.H, L.D}, opt), dk = at::zeros_like(dx),
             dv = at::zeros_like(dx);
  at::Tensor deta = at::zeros({L.B, L.T, L.H}, opt), dg = at::zeros_like(deta);
  std::vector<at::Tensor> dstate = state_buffers(L.N, L.H, L.F, L.D, opt, true);
  for (const Group& gr : make_groups(in.cu_seqlens, L.B, L.T, L.N, initial_counts(in.n, L.N))) {
    const int64_t R = static_cast<int64_t>(gr.seqs.size());
    const int64_t len = gr.t1 - gr.t0;
    const at::Tensor idx = long_tensor(gr.seqs);
    Grad gn = final_grads(d_final, idx, L.H, L.F, L.D, opt);
    if (len > 0) {
      const Rows rw = make_rows(in, L, gr, a);
      const std::vector<Chunk> grid = chunk_grid(len, gr.n0, a.chunk_size);
      // Token gradients of the group, [R, H, len, ...].
      at::Tensor dU = at::zeros({R, L.H, len, rw.lay.nr, L.D}, opt);
      at::Tensor dVg = at::zeros({R, L.H, len, L.D}, opt);
      at::Tensor detag = at::zeros({R, L.H, len}, opt), dgg = at::zeros_like(detag);
      const at::Tensor dYg = take_tokens(d_y, gr, p.work).contiguous();
      gn = reverse_walk(
          gather_state(state_in(in), p.work, gr.seqs), static_cast<int64_t>(grid.size()),
          a.checkpoint_every, gn,
          [&](const State& s, int64_t j) {
            if (token_step_applies(rw, s, grid[j], p))
              return token_step(rw, s, grid[j], a, p, at::Tensor());
            return chunk_update(s, chunk_forward(rw, s, grid[j], a, p), grid[j], a, p);
          },
          [&](const State& s, int64_t j) {
            if (!token_step_applies(rw, s, grid[j], p)) return chunk_forward(rw, s, grid[j], a, p);
            Fwd f;  // C = 1: token_backward recomputes the token itself
            f.token = true;
            f.len = 1;
            return f;
          },
          [&](const State& s, const Fwd& f, int64_t j) {
            return f.token ? token_step(rw, s, grid[j], a, p, at::Tensor())
                           : chunk_update(s, f, grid[j], a, p);
          },
          [&](const State& s, const Fwd& f, int64_t j, const Grad& g) {
            const Chunk& c = grid[j];
            if (f.token) return token_backward(rw, s, c, g, a, p, dYg, dU, dVg, detag, dgg);
            const int64_t cl = c.e - c.s;
            return chunk_backward(s, f, c, g, a, p, dYg.narrow(2, c.s, cl),
                                  dU.narrow(2, c.s, cl), dVg.narrow(2, c.s, cl),
                                  detag.narrow(2, c.s, cl), dgg.narrow(2, c.s, cl));
          });
      if (a.self_target) dVg = dVg + dU.select(3, rw.lay.iv);
      put_tokens(dx, dU.select(3, rw.lay.ix), gr, varlen);
      put_tokens(dk, dU.select(3, rw.lay.ik), gr, varlen);
      put_tokens(dv, dVg, gr, varlen);
      put_tokens(deta, detag, gr, varlen);
      put_tokens(dg, dgg, gr, varlen);
    }
    scatter_state(dstate, State{gn.w1, gn.w2, gn.p1, gn.p2, gn.a1, gn.a2, gn.ag}, idx, false);
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
  const std::optional<at::Tensor>* src[] = {&in.p_in, &in.p_out, &in.acc_in, &in.acc_out,
                                            &in.acc_g};
  for (int j = 2; j < 7; ++j)
    out[j + 5] = in.p_in ? dstate[j].to((*src[j - 2])->scalar_type()) : empty;
  return out;
}

}  // namespace nlcore::cpu
