// The chunk step of the MLP memory (cpu/memory_mlp.h) and its backward, on batched rows
// [R, H, ...], shared by the memory scan (cpu/memory_mlp.cpp) and the self-modifying memories
// (cpu/self_modifying.cpp, which runs four memories as 4·H heads). Internal to the CPU code.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <type_traits>
#include <vector>

#include "cpu/memory_mlp.h"

namespace nlcore::cpu::mlp {

struct Prec {
  at::ScalarType work;
  bool round;  // round GEMM operands to `low`
  at::ScalarType low;
};
// Work dtype fp64 when x or the weights are fp64, else fp32 with bf16/fp16 sequences rounding
// GEMM operands to their dtype.
Prec make_prec(at::ScalarType seq, at::ScalarType weights);

at::Tensor rnd(const Prec& p, const at::Tensor& t);
// [R, H, m, k] × [R, H, k, n] as one bmm over R·H, operands rounded (exact = already rounded).
at::Tensor mm(const Prec& p, const at::Tensor& a, const at::Tensor& b, bool a_exact = false,
              bool b_exact = false);
// c + a·b in one baddbmm (c [R, H, m, n], any strides).
at::Tensor mma(const Prec& p, const at::Tensor& c, const at::Tensor& a, const at::Tensor& b,
               bool a_exact = false, bool b_exact = false);
// c += a·b in place (c [R, H, m, n]; made contiguous first if it is not). For gradient
// accumulators the caller owns: no copy of c.
void mma_(const Prec& p, at::Tensor& c, const at::Tensor& a, const at::Tensor& b,
          bool a_exact = false, bool b_exact = false);
inline at::Tensor tr(const at::Tensor& t) { return t.transpose(-1, -2); }

struct Act {
  at::Tensor h, dh, d2h;  // σ(z), σ'(z), σ''(z) (the last only when asked)
};
Act activate(const at::Tensor& z, MlpActivation a, bool second);

// Weights, momentum buffers and open-chunk accumulators of R rows ([R, H, ...]); tensors are
// replaced, never mutated, so copies of a State are cheap snapshots. An undefined accumulator
// is zero (a chunk start): at C = 1 the per-token op count is what costs.
struct State {
  at::Tensor w1, w2, p1, p2, a1, a2, ag;
};

// Gradients of one chunk-start state (and of the open-chunk accumulators it carried in).
struct Grad {
  at::Tensor w1, w2, p1, p2, a1, a2, ag;
};

struct Chunk {
  int64_t s, e;
  bool complete;
};
std::vector<Chunk> chunk_grid(int64_t T, int64_t n0, int64_t C);

// Which token rows go through the memory, stacked per token: nr rows at positions ix (the
// reads; -1: none), ik (the keys) and iv (the values when they are self-targets; -1: none).
// exact: the rows already hold input-dtype values (no rounding before a GEMM).
struct RowLayout {
  int64_t nr, ix, ik, iv;
  bool exact;
};

// Rows sharing a chunk grid. U [R, H, T, nr, D] in the work dtype; V [R, H, T, D] (the
// targets when iv < 0); eta, g [R, H, T].
struct Rows {
  at::Tensor U, V, eta, g;
  RowLayout lay;
};

// A chunk's forward quantities, kept for its backward. Z, Hall, dHall, Out: [R, H, len·nr, ·].
struct Fwd {
  at::Tensor U, Z, Hall, dHall, Out, Zk, Hk, dHk, E, Eeta, Rr, Q1, K, eta, gsum;
  int64_t len;
  RowLayout lay;
  bool token = false;  // a token_step chunk: nothing computed, token_backward recomputes it
};

at::Tensor rows_of(const at::Tensor& t, int64_t len, int64_t nr, int64_t r);  // [R, H, len, ·]

Fwd chunk_forward(const Rows& rw, const State& st, const Chunk& c, const MlpScanArgs& a,
                  const Prec& p);
// Accumulate the chunk's inner gradient and, when it completes, apply the update.
State chunk_update(const State& st, const Fwd& f, const Chunk& c, const MlpScanArgs& a,
                   const Prec& p);
// A complete one-token chunk with no carried sums (C = 1) on fp32/fp64 without operand rounding
// can take token_step: the chunk's reads (written to y [R, H, D] when defined) and the update
// in one pass of plain loops per (row, head), no Fwd record. Same math as chunk_forward +
// chunk_update.
bool token_step_applies(const Rows& rw, const State& st, const Chunk& c, const Prec& p);
State token_step(const Rows& rw, const State& st, const Chunk& c, const MlpScanArgs& a,
                 const Prec& p, at::Tensor y);
// The backward of a token_step chunk (token_step_applies): recomputes the token's forward and
// walks it back in one pass of plain loops per (row, head), no Fwd record. dY [R, H, T, D],
// dU [R, H, T, nr, D], dV [R, H, T, D], deta, dg [R, H, T]: the group's whole (contiguous)
// buffers, written at token c.s. Returns the gradients of (w1, w2, p1, p2) at the token's
// start (p1, p2 undefined when μ = 0; no carried sums).
Grad token_backward(const Rows& rw, const State& st, const Chunk& c, const Grad& gn,
                    const MlpScanArgs& a, const Prec& p, const at::Tensor& dY, at::Tensor& dU,
                    at::Tensor& dV, at::Tensor& deta, at::Tensor& dg);
// Backward of one chunk. `gn` holds the gradients of the state after the chunk: for a
// complete chunk those of (w1, w2, p1, p2); for the incomplete last chunk also those of the
// accumulators (a1, a2, ag) it leaves. dY: gradient of the reads (when lay.ix >= 0). Writes
// the token gradients into dU [R, H, len, nr, D], dV (when lay.iv < 0), deta, dg (views of
// the caller's buffers) and returns the chunk-start state's gradients.
Grad chunk_backward(const State& st, const Fwd& f, const Chunk& c, const Grad& gn,
                    const MlpScanArgs& a, const Prec& p, const at::Tensor& dY, at::Tensor dU,
                    at::Tensor dV, at::Tensor deta, at::Tensor dg);

// Groups of (sequence ids, batch rows, t0, t1, n0) sharing a chunk grid: all batch rows at
// once when their open-chunk counts agree, else one per row; one per packed sequence.
struct Group {
  std::vector<int64_t> seqs, rows;
  int64_t t0, t1, n0;
};
std::vector<Group> make_groups(const std::optional<at::Tensor>& cu_seqlens, int64_t B, int64_t T,
                               int64_t N, const std::vector<int64_t>& n0);
// The initial state's open-chunk counts (zeros without one).
std::vector<int64_t> initial_counts(const std::optional<at::Tensor>& n, int64_t N);
at::Tensor index_rows(const at::Tensor& t, const std::vector<int64_t>& idx);
at::Tensor long_tensor(const std::vector<int64_t>& v);

// The scan state as the ops take it: weights [H, F, D] / [H, D, F] shared or [N, H, ...] per
// sequence; the rest [N, H, ...], all given or all absent (then zero).
struct StateIn {
  at::Tensor w_in, w_out;
  std::optional<at::Tensor> p_in, p_out, acc_in, acc_out, acc_g;
};
// The rows `seqs` of it as a State in the work dtype (absent accumulators stay undefined).
State gather_state(const StateIn& s, at::ScalarType work, const std::vector<int64_t>& seqs);
// Seven [N, H, ...] buffers for (w_in, w_out, p_in, p_out, acc_in, acc_out, acc_g).
std::vector<at::Tensor> state_buffers(int64_t N, int64_t H, int64_t F, int64_t D,
                                      const at::TensorOptions& opt, bool zero);
// Writes (w1, w2, p1, p2, a1, a2, ag) into rows idx of the seven buffers; an undefined part is
// written as zeros when zero_undefined, else left alone.
void scatter_state(std::vector<at::Tensor>& dst, const State& st, const at::Tensor& idx,
                   bool zero_undefined);
// The gradients of the final state for the rows idx (an undefined or missing entry: zeros).
Grad final_grads(const std::vector<at::Tensor>& d_final, const at::Tensor& idx, int64_t H,
                 int64_t F, int64_t D, const at::TensorOptions& opt);
// Token tensors [B, T, H(, D)] <-> a group's [R, H, len(, D)] in the work dtype.
at::Tensor take_tokens(const at::Tensor& t, const Group& gr, at::ScalarType work);
void put_tokens(at::Tensor& dst, const at::Tensor& src, const Group& gr, bool varlen);

// The checkpointed reverse walk over one group's chunks: pass 1 keeps the chunk-start state
// every `every` chunks (up to the last segment), advancing with `advance(state, j)` (the state
// after chunk j), pass 2 recomputes each segment's states and forwards in turn and walks it
// back. `forward(state, j)` returns chunk j's forward record
// (a Fwd, or a caller's type holding one), `update(state, fwd, j)` the state after it, `backward(state, fwd, j, grad_after)` the
// gradients of its start state.
template <class Adv, class Fw, class Up, class Bw>
Grad reverse_walk(const State& st0, int64_t nc, int64_t every, Grad gn, Adv&& advance,
                  Fw&& forward, Up&& update, Bw&& backward) {
  using Record = std::decay_t<decltype(forward(st0, int64_t{0}))>;
  every = std::max<int64_t>(1, every);
  const int64_t nseg = (nc + every - 1) / every;
  std::vector<State> ckpt;
  State st = st0;
  for (int64_t j = 0; j < (nseg - 1) * every; ++j) {
    if (j % every == 0) ckpt.push_back(st);
    st = advance(st, j);
  }
  ckpt.push_back(st);
  for (int64_t s = nseg - 1; s >= 0; --s) {
    const int64_t j0 = s * every, j1 = std::min(nc, j0 + every);
    std::vector<State> states = {ckpt[s]};
    std::vector<Record> fwds;
    for (int64_t j = j0; j < j1; ++j) {
      fwds.push_back(forward(states.back(), j));
      if (j + 1 < j1) states.push_back(update(states.back(), fwds.back(), j));
    }
    for (int64_t j = j1 - 1; j >= j0; --j) {
      gn = backward(states[j - j0], fwds[j - j0], j, gn);
      if (j > 0) gn.a1 = gn.a2 = gn.ag = at::Tensor();  // later chunks start with zero sums
      fwds.pop_back();  // keep at most one segment's activations alive
      states.pop_back();
    }
  }
  return gn;
}

}  // namespace nlcore::cpu::mlp
