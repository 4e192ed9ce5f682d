// Self-modifying memories, host drivers: the chunk loops of the forward and of the checkpointed
// backward (csrc/cpu/self_modifying.h), each GEMM one launch of the MLP scan's generic tile GEMM
// (memory_mlp/device.cuh) over the four memories at once (4·N "sequences", layout.h), plus the
// token kernels of device.cuh. Plain C++: only launches, async copies and memsets on the
// caller's stream; no host sync.
//
// Notation (per memory, sequence and head; chunk of c tokens): X, K, V [c × D] token rows
// (K, V, η, g: the derived ones), W1 [F × D], W2 [D × F] the chunk-start weights; σ applied at
// operand load where written σ(·); "tok" buffers are the fp32 [4·N·H][rows][·] per-chunk arrays.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/error.h"
#include "self_modifying/launchers.h"
#include "self_modifying/layout.h"

namespace nlcore::self_modifying {

nlcore_status_t launch_status(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    return detail::fail(NLCORE_STATUS_CUDA_ERROR, "self_modifying: %s failed: %s (%s)", what,
                        cudaGetErrorString(e), cudaGetErrorName(e));
  return NLCORE_STATUS_SUCCESS;
}

nlcore_status_t cuda_status(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return detail::fail(NLCORE_STATUS_CUDA_ERROR, "self_modifying: %s failed: %s (%s)", what,
                        cudaGetErrorString(e), cudaGetErrorName(e));
  }
  return NLCORE_STATUS_SUCCESS;
}

namespace {

namespace mm = memory_mlp;
using mm::Gemm;
using mm::kTokens;
using mm::MatDesc;
using mm::Params;

#define NLCORE_TRY(expr)                          \
  do {                                            \
    const nlcore_status_t _st = (expr);           \
    if (_st != NLCORE_STATUS_SUCCESS) return _st; \
  } while (0)

// ---- operand views (memory_mlp/launchers.h: MatDesc) ----------------------------------------------
MatDesc make_desc(const void* p, int src, int mrows, int cols) {
  MatDesc d{};
  d.p = p;
  d.src = src;
  d.mrows = mrows;
  d.cols = cols;
  d.mult = 1.0f;
  return d;
}
// token rows of a [B·T][H][D] tensor of the input dtype
MatDesc tokens(const void* p, int D) { return make_desc(p, mm::kSrcSeq, 0, D); }
// a per-chunk fp32 buffer [·][rows][cols]
MatDesc chunk_buf(const float* p, int cols) { return make_desc(p, mm::kSrcTok, 0, cols); }
// a per-(sequence, head) fp32 matrix [·][rows][cols]
MatDesc matrix(const float* p, int rows, int cols) {
  return make_desc(p, mm::kSrcMat, rows, cols);
}
MatDesc T_(MatDesc d) {  // transposed
  d.trans = 1;
  return d;
}
MatDesc act(MatDesc d) {  // σ(·) of a pre-activation buffer
  d.act = 1;
  return d;
}
MatDesc eta_rows(MatDesc d) {  // diag(η) on the token rows
  d.eta = 1;
  return d;
}
MatDesc negated(MatDesc d) {
  d.mult = -d.mult;
  return d;
}

Gemm make_gemm(int m, int n, int epi, int64_t j) {
  Gemm g{};
  g.m = m;
  g.n = n;
  g.epi = epi;
  g.chunk = j;
  return g;
}
void term(Gemm& g, const MatDesc& a, const MatDesc& b, int kdim) {
  g.term[g.nterms].a = a;
  g.term[g.nterms].b = b;
  g.term[g.nterms].kdim = kdim;
  ++g.nterms;
}

nlcore_status_t copy(void* dst, const void* src, size_t bytes, cudaStream_t stream,
                     const char* what) {
  if (bytes == 0) return NLCORE_STATUS_SUCCESS;
  return cuda_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream), what);
}
nlcore_status_t zero(void* dst, size_t bytes, cudaStream_t stream, const char* what) {
  if (bytes == 0 || dst == nullptr) return NLCORE_STATUS_SUCCESS;
  return cuda_status(cudaMemsetAsync(dst, 0, bytes, stream), what);
}

// Sizes (in elements) of the four memories' arrays and of one memory's block.
struct Sizes {
  int64_t N, NH, fd;
  size_t slab;       // [4NH][FD]
  size_t mem_state;  // [NH][FD]: one memory's block of a slab
};
Sizes sizes_of(const Params& p, int64_t N) {
  Sizes z;
  z.N = N;
  z.NH = N * p.H;
  z.fd = int64_t(p.F) * p.D;
  z.slab = size_t(kMem) * size_t(z.NH) * size_t(z.fd);
  z.mem_state = size_t(z.NH) * size_t(z.fd);
  return z;
}

// The MLP scan's Params restricted to memory m's block of every per-(sequence, head) array, over
// the N real sequences: the memory_mlp initial-state kernel then fills that memory's state.
Params memory_view(const Params& p, const Outputs& out, int m) {
  const Sizes z = sizes_of(p, out.N);
  const size_t off = size_t(m) * z.mem_state;
  Params q = p;
  q.N = out.N;
  q.w1 = p.w1 + off;
  q.w2 = p.w2 + off;
  q.p1 = p.p1 + off;
  q.p2 = p.p2 + off;
  q.a1 = p.a1 + off;
  q.a2 = p.a2 + off;
  q.ag = p.ag + size_t(m) * z.NH;
  const size_t w_off = size_t(m) * (p.w_shared ? size_t(p.H) * z.fd : z.mem_state);
  q.w1_init = static_cast<const float*>(out.w_in) + w_off;
  q.w2_init = static_cast<const float*>(out.w_out) + w_off;
  if (p.has_init) {
    q.p1_init = p.p1_init + off;
    q.p2_init = p.p2_init + off;
    q.a1_init = p.a1_init + off;
    q.a2_init = p.a2_init + off;
    q.ag_init = out.acc_g;  // shared by the four memories
  }
  return q;
}

nlcore_status_t init_state(const Params& p, const Outputs& out, cudaStream_t stream) {
  for (int m = 0; m < kMem; ++m) NLCORE_TRY(mm::launch_init_state(memory_view(p, out, m), stream));
  return NLCORE_STATUS_SUCCESS;
}

// The chunk table of the N sequences (and the final n when n_out is set), repeated for the
// other three memories.
nlcore_status_t build_table(const Params& p, const Outputs& out, cudaStream_t stream) {
  Params q = p;
  q.N = out.N;
  q.n_out = out.n_final;
  NLCORE_TRY(mm::launch_table(q, stream));
  const size_t bytes = size_t(out.N) * kSeqEntry * sizeof(int64_t);
  for (int m = 1; m < kMem; ++m)
    NLCORE_TRY(copy(p.seq + size_t(m) * out.N * kSeqEntry, p.seq, bytes, stream,
                    "cudaMemcpyAsync(chunk table)"));
  return NLCORE_STATUS_SUCCESS;
}

// ---- one chunk, forward ------------------------------------------------------------------------
// Chunk j of every sequence at weights (W1, W2) of the four memories: the reads Zx, Ox, the
// derive step (k, v, eta, g of the chunk's tokens), then the memories' step quantities Z, Zv,
// Tg, E, R (backward only: p.R != NULL), Q1; with `update` the gates and the inner step of the
// state p.w1 .. p.a2 (whose W must then be W1 / W2).
nlcore_status_t chunk_forward(const Params& p, const TokParams& tp, int64_t j, const float* W1,
                              const float* W2, bool update, const TokenKernels& kern,
                              cudaStream_t stream) {
  const int D = p.D, F = p.F;
  float* Ox = const_cast<float*>(tp.Ox);
  {  // Zx = X W1ᵀ  [c × F]
    Gemm g = make_gemm(kTokens, F, mm::kEpiStore, j);
    g.out = p.Zx;
    term(g, tokens(p.x, D), T_(matrix(W1, F, D)), D);
    NLCORE_TRY(kern.gemm(p, g, stream));
  }
  {  // Ox = σ(Zx) W2ᵀ  [c × D]  (the read is r = X + Ox)
    Gemm g = make_gemm(kTokens, D, mm::kEpiStore, j);
    g.out = Ox;
    term(g, act(chunk_buf(p.Zx, F)), T_(matrix(W2, D, F)), F);
    NLCORE_TRY(kern.gemm(p, g, stream));
  }
  NLCORE_TRY(kern.derive(tp, j, stream));  // k, v, eta, g of the chunk's tokens
  if (update) NLCORE_TRY(mm::launch_gates(p, j, stream));  // ᾱ = exp(a_g + Σ g)
  {  // Z = K W1ᵀ  [c × F]
    Gemm g = make_gemm(kTokens, F, mm::kEpiStore, j);
    g.out = p.Z;
    term(g, tokens(p.k, D), T_(matrix(W1, F, D)), D);
    NLCORE_TRY(kern.gemm(p, g, stream));
  }
  {  // Zv = V W1ᵀ  [c × F]
    Gemm g = make_gemm(kTokens, F, mm::kEpiStore, j);
    g.out = p.Zv;
    term(g, tokens(p.v, D), T_(matrix(W1, F, D)), D);
    NLCORE_TRY(kern.gemm(p, g, stream));
  }
  {  // Tg = V + σ(Zv) W2ᵀ  [c × D]
    Gemm g = make_gemm(kTokens, D, mm::kEpiTg, j);
    term(g, act(chunk_buf(p.Zv, F)), T_(matrix(W2, D, F)), F);
    NLCORE_TRY(kern.gemm(p, g, stream));
  }
  {  // E = K + σ(Z) W2ᵀ − Tg  [c × D]
    Gemm g = make_gemm(kTokens, D, mm::kEpiE, j);
    term(g, act(chunk_buf(p.Z, F)), T_(matrix(W2, D, F)), F);
    NLCORE_TRY(kern.gemm(p, g, stream));
  }
  {  // R = diag(η) E W2;  Q1 = σ'(Z) ⊙ R [+ diag(η) Z]  [c × F]
    Gemm g = make_gemm(kTokens, F, mm::kEpiQ1, j);
    term(g, eta_rows(chunk_buf(p.E, D)), matrix(W2, D, F), D);
    NLCORE_TRY(kern.gemm(p, g, stream));
  }
  if (update) {
    {  // G1 = A1 + Q1ᵀ K  [F × D], then the step of (W1, P1, A1)
      Gemm g = make_gemm(F, D, mm::kEpiUpdate, j);
      g.which = 1;
      term(g, T_(chunk_buf(p.Q1, F)), tokens(p.k, D), kTokens);
      NLCORE_TRY(kern.gemm(p, g, stream));
    }
    {  // G2 = A2 + (diag(η) E)ᵀ σ(Z)  [D × F], then the step of (W2, P2, A2)
      Gemm g = make_gemm(D, F, mm::kEpiUpdate, j);
      g.which = 2;
      term(g, eta_rows(T_(chunk_buf(p.E, D))), act(chunk_buf(p.Z, F)), kTokens);
      NLCORE_TRY(kern.gemm(p, g, stream));
    }
  }
  return NLCORE_STATUS_SUCCESS;
}

// ---- one chunk, backward -------------------------------------------------------------------------
// Chunk j of every sequence with the four memories' chunk-start weights (W1, W2), given the
// gradients of the state after it in p.dw* / p.dp* / p.da* / p.dag; leaves those of the state
// before it, writes the chunk's rows of dx and adds its share of dw_eta .. db_alpha.
nlcore_status_t chunk_backward(const Params& p, const TokParams& tp, const Outputs& out,
                               const BackwardBuffers& bb, int64_t j, const float* W1,
                               const float* W2, const TokenKernels& kern, cudaStream_t stream) {
  const int D = p.D, F = p.F;
  // The chunk's forward at (W1, W2): Zx, Ox, k, v, eta, g, Z, Zv, Tg, E, R, Q1.
  NLCORE_TRY(chunk_forward(p, tp, j, W1, W2, false, kern, stream));
  // Through the update: dG1 → p.da1, dG2 → p.da2, dΣg → p.dsg; dW ← ᾱ dW', dP ← μ T (needs g).
  NLCORE_TRY(mm::launch_bwd_update(p, j, W1, W2, stream));
  {  // dQ1 = K dG1ᵀ [c × F];  dR = σ'(Z) ⊙ dQ1;  dZ = σ''(Z) ⊙ R ⊙ dQ1 [+ diag(η) dQ1]
    Gemm g = make_gemm(kTokens, F, mm::kEpiDQ1, j);
    term(g, tokens(p.k, D), T_(matrix(p.da1, F, D)), D);
    NLCORE_TRY(kern.gemm(p, g, stream));
  }
  {  // dEη = σ(Z) dG2ᵀ + dR W2ᵀ  [c × D];  dE = diag(η) dEη
    Gemm g = make_gemm(kTokens, D, mm::kEpiDEeta, j);
    term(g, act(chunk_buf(p.Z, F)), T_(matrix(p.da2, D, F)), F);
    term(g, chunk_buf(p.dR, F), T_(matrix(W2, D, F)), F);
    NLCORE_TRY(kern.gemm(p, g, stream));
  }
  {  // dH = diag(η) E dG2 + dE W2  [c × F] (dPr = dE);  dZ += σ'(Z) ⊙ dH
    Gemm g = make_gemm(kTokens, F, mm::kEpiDH, j);
    term(g, eta_rows(chunk_buf(p.E, D)), matrix(p.da2, D, F), D);
    term(g, chunk_buf(p.dE, D), matrix(W2, D, F), D);
    NLCORE_TRY(kern.gemm(p, g, stream));
  }
  {  // dK_m = Q1 dG1 + dZ W1  [c × D] (the residual's + dE is added by the token kernel)
    Gemm g = make_gemm(kTokens, D, mm::kEpiStore, j);
    g.out = bb.dK;
    term(g, chunk_buf(p.Q1, F), matrix(p.da1, F, D), F);
    term(g, chunk_buf(p.dZ, F), matrix(W1, F, D), F);
    NLCORE_TRY(kern.gemm(p, g, stream));
  }
  {  // dZv = σ'(Zv) ⊙ (dTg W2), dTg = −dE  [c × F]
    Gemm g = make_gemm(kTokens, F, mm::kEpiDZv, j);
    term(g, negated(chunk_buf(p.dE, D)), matrix(W2, D, F), D);
    NLCORE_TRY(kern.gemm(p, g, stream));
  }
  {  // dV_m = dZv W1  [c × D] (the residual target's − dE is added by the token kernel)
    Gemm g = make_gemm(kTokens, D, mm::kEpiStore, j);
    g.out = bb.dV;
    term(g, chunk_buf(p.dZv, F), matrix(W1, F, D), F);
    NLCORE_TRY(kern.gemm(p, g, stream));
  }
  // Token gradients summed over the memories and the outputs' gradients, the derive backward:
  // dRx_m, and the dw_eta .. db_alpha shares.
  NLCORE_TRY(kern.token_bwd(tp, j, stream));
  {  // dZx = σ'(Zx) ⊙ (dRx W2)  [c × F]
    Gemm g = make_gemm(kTokens, F, mm::kEpiDZx, j);
    term(g, chunk_buf(bb.dRx, D), matrix(W2, D, F), D);
    NLCORE_TRY(kern.gemm(p, g, stream));
  }
  {  // dX = Σ_m dZx_m W1_m  [c × D], per (sequence, head): the four memories as four terms
    const Sizes z = sizes_of(p, out.N);
    Params q = p;
    q.N = out.N;
    Gemm g = make_gemm(kTokens, D, mm::kEpiStore, j);
    g.out = bb.dX;
    for (int m = 0; m < kMem; ++m)
      term(g, chunk_buf(p.dZx + size_t(m) * z.NH * p.rows * F, F),
           matrix(W1 + size_t(m) * z.mem_state, F, D), F);
    NLCORE_TRY(kern.gemm(q, g, stream));
  }
  NLCORE_TRY(kern.dx(tp, j, stream));  // dx = dX + Σ_m dRx_m
  {  // dW1 += dZᵀ K + dZvᵀ V + dZxᵀ X  [F × D]
    Gemm g = make_gemm(F, D, mm::kEpiAdd, j);
    g.out = p.dw1;
    term(g, T_(chunk_buf(p.dZ, F)), tokens(p.k, D), kTokens);
    term(g, T_(chunk_buf(p.dZv, F)), tokens(p.v, D), kTokens);
    term(g, T_(chunk_buf(p.dZx, F)), tokens(p.x, D), kTokens);
    NLCORE_TRY(kern.gemm(p, g, stream));
  }
  {  // dW2 += (diag(η) E)ᵀ dR + dEᵀ σ(Z) − dEᵀ σ(Zv) + dRxᵀ σ(Zx)  [D × F]
    Gemm g = make_gemm(D, F, mm::kEpiAdd, j);
    g.out = p.dw2;
    term(g, eta_rows(T_(chunk_buf(p.E, D))), chunk_buf(p.dR, F), kTokens);
    term(g, T_(chunk_buf(p.dE, D)), act(chunk_buf(p.Z, F)), kTokens);
    term(g, negated(T_(chunk_buf(p.dE, D))), act(chunk_buf(p.Zv, F)), kTokens);
    term(g, T_(chunk_buf(bb.dRx, D)), act(chunk_buf(p.Zx, F)), kTokens);
    NLCORE_TRY(kern.gemm(p, g, stream));
  }
  return NLCORE_STATUS_SUCCESS;
}

}  // namespace

// ---- drivers ---------------------------------------------------------------------------------------
nlcore_status_t run_forward(const Params& p, const TokParams& tp, const Outputs& out,
                            const TokenKernels& kern, cudaStream_t stream) {
  const size_t toks = size_t(p.B) * p.T * p.H;
  // rows no sequence covers stay zero
  NLCORE_TRY(zero(tp.k, toks * p.D * p.elem_bytes, stream, "cudaMemsetAsync(k)"));
  NLCORE_TRY(zero(tp.v, toks * p.D * p.elem_bytes, stream, "cudaMemsetAsync(v)"));
  NLCORE_TRY(zero(tp.eta, toks * sizeof(float), stream, "cudaMemsetAsync(eta)"));
  NLCORE_TRY(zero(tp.g, toks * sizeof(float), stream, "cudaMemsetAsync(g)"));
  NLCORE_TRY(build_table(p, out, stream));
  NLCORE_TRY(init_state(p, out, stream));  // the final-state outputs start as the initial state
  for (int64_t j = 0; j < p.nc_bound; ++j)
    NLCORE_TRY(chunk_forward(p, tp, j, p.w1, p.w2, true, kern, stream));
  // a_g is shared by the four memories: every copy holds the same value
  return copy(out.acc_g_final, p.ag, size_t(out.N) * p.H * sizeof(float), stream,
              "cudaMemcpyAsync(acc_g)");
}

// Backward. 1) Gradient state ← the final-state gradients (acc_g's into memory 0's copy of a_g:
// the four copies are one value, so its gradient is the sum over the copies). 2) A state-only
// forward over the chunks saves (W1, W2, P1, P2) at every chunk k·ce (k >= 1) into checkpoint
// slot k − 1. 3) Segments k = last .. 0: restore the state at chunk k·ce (the initial state for
// k = 0; accumulators are zero at any later chunk start), re-run the segment saving each
// chunk-start (W1, W2) into segment slots, then walk its chunks backwards.
nlcore_status_t run_backward(const Params& p, const TokParams& tp, const Outputs& out,
                             const BackwardBuffers& bb, const TokenKernels& kern,
                             cudaStream_t stream) {
  const Sizes z = sizes_of(p, out.N);
  const size_t fb = sizeof(float), msh = size_t(kMem) * z.NH;
  const size_t toks = size_t(p.B) * p.T * p.H;
  NLCORE_TRY(zero(tp.dx, toks * p.D * p.elem_bytes, stream, "cudaMemsetAsync(dx)"));
  NLCORE_TRY(zero(tp.dwe, size_t(z.NH) * p.D * fb, stream, "cudaMemsetAsync(dw_eta sums)"));
  NLCORE_TRY(zero(tp.dwa, size_t(z.NH) * p.D * fb, stream, "cudaMemsetAsync(dw_alpha sums)"));
  NLCORE_TRY(zero(tp.dbe, size_t(z.NH) * fb, stream, "cudaMemsetAsync(db_eta sums)"));
  NLCORE_TRY(zero(tp.dba, size_t(z.NH) * fb, stream, "cudaMemsetAsync(db_alpha sums)"));
  NLCORE_TRY(build_table(p, out, stream));
  if (p.has_init) {  // the initial a_g once per memory (the scan's update backward reads it)
    float* ag0 = const_cast<float*>(p.ag_init);
    for (int m = 0; m < kMem; ++m)
      NLCORE_TRY(copy(ag0 + size_t(m) * z.NH, out.acc_g, size_t(z.NH) * fb, stream,
                      "cudaMemcpyAsync(initial acc_g)"));
  }

  // 1) dW1, dW2, dP1, dP2, dA1, dA2, d a_g of the final state
  float* const gstate[6] = {p.dw1, p.dw2, p.dp1, p.dp2, p.da1, p.da2};
  for (int i = 0; i < 6; ++i) {
    if (bb.grad_final[i] != nullptr)
      NLCORE_TRY(copy(gstate[i], bb.grad_final[i], z.slab * fb, stream, "cudaMemcpyAsync(grad)"));
    else
      NLCORE_TRY(zero(gstate[i], z.slab * fb, stream, "cudaMemsetAsync(grad)"));
  }
  NLCORE_TRY(zero(p.dag, msh * fb, stream, "cudaMemsetAsync(dag)"));
  if (bb.grad_final[6] != nullptr)
    NLCORE_TRY(copy(p.dag, bb.grad_final[6], size_t(z.NH) * fb, stream,
                    "cudaMemcpyAsync(grad_acc_g)"));

  // 2) checkpoints. The work state is 6 consecutive slabs W1, W2, P1, P2, A1, A2 at p.w1.
  const int64_t ce = bb.ckpt_every, nck = bb.n_ckpt;
  NLCORE_TRY(init_state(p, out, stream));
  for (int64_t j = 0; j <= (nck - 1) * ce; ++j) {
    if (j > 0 && j % ce == 0)
      NLCORE_TRY(copy(bb.ckpt + size_t(j / ce - 1) * 4 * z.slab, p.w1, 4 * z.slab * fb, stream,
                      "cudaMemcpyAsync(checkpoint save)"));
    if (j < (nck - 1) * ce)
      NLCORE_TRY(chunk_forward(p, tp, j, p.w1, p.w2, true, kern, stream));
  }

  // 3) segments in reverse
  for (int64_t k = nck - 1; k >= 0; --k) {
    const int64_t j0 = k * ce;
    const int64_t j1 = j0 + ce < p.nc_bound ? j0 + ce : p.nc_bound;
    if (k == 0) {
      NLCORE_TRY(init_state(p, out, stream));
    } else {
      NLCORE_TRY(copy(p.w1, bb.ckpt + size_t(k - 1) * 4 * z.slab, 4 * z.slab * fb, stream,
                      "cudaMemcpyAsync(checkpoint restore)"));
      NLCORE_TRY(zero(p.a1, 2 * z.slab * fb, stream, "cudaMemsetAsync(A)"));
      NLCORE_TRY(zero(p.ag, msh * fb, stream, "cudaMemsetAsync(a_g)"));
    }
    for (int64_t j = j0; j < j1; ++j) {
      NLCORE_TRY(copy(bb.seg + size_t(j - j0) * 2 * z.slab, p.w1, 2 * z.slab * fb, stream,
                      "cudaMemcpyAsync(segment save)"));
      if (j + 1 < j1) NLCORE_TRY(chunk_forward(p, tp, j, p.w1, p.w2, true, kern, stream));
    }
    for (int64_t j = j1 - 1; j >= j0; --j) {
      const float* w1 = bb.seg + size_t(j - j0) * 2 * z.slab;
      NLCORE_TRY(chunk_backward(p, tp, out, bb, j, w1, w1 + z.slab, kern, stream));
    }
  }

  // 4) outputs: dw_in / dw_out in w_in's layout; the derive weights; the initial-state gradients
  Params pn = p;  // the N real sequences
  pn.N = out.N;
  if (p.w_shared) {
    for (int m = 0; m < kMem; ++m) {
      const size_t src = size_t(m) * z.mem_state, dst = size_t(m) * p.H * z.fd;
      NLCORE_TRY(mm::launch_sum_sequences(pn, p.dw1 + src, bb.dw_in + dst, z.fd, stream));
      NLCORE_TRY(mm::launch_sum_sequences(pn, p.dw2 + src, bb.dw_out + dst, z.fd, stream));
    }
  } else {
    NLCORE_TRY(copy(bb.dw_in, p.dw1, z.slab * fb, stream, "cudaMemcpyAsync(dw_in)"));
    NLCORE_TRY(copy(bb.dw_out, p.dw2, z.slab * fb, stream, "cudaMemcpyAsync(dw_out)"));
  }
  NLCORE_TRY(mm::launch_sum_sequences(pn, tp.dwe, bb.dw_eta, p.D, stream));
  NLCORE_TRY(mm::launch_sum_sequences(pn, tp.dwa, bb.dw_alpha, p.D, stream));
  if (bb.db_eta != nullptr) NLCORE_TRY(mm::launch_sum_sequences(pn, tp.dbe, bb.db_eta, 1, stream));
  if (bb.db_alpha != nullptr)
    NLCORE_TRY(mm::launch_sum_sequences(pn, tp.dba, bb.db_alpha, 1, stream));
  if (p.has_init) {
    const float* src[4] = {p.dp1, p.dp2, p.da1, p.da2};
    for (int i = 0; i < 4; ++i)
      NLCORE_TRY(copy(bb.d_init[i], src[i], z.slab * fb, stream,
                      "cudaMemcpyAsync(initial-state gradient)"));
    // d acc_g = Σ_m d a_g,m: the memories as 4 "sequences" of N·H "heads"
    Params p4 = p;
    p4.N = kMem;
    p4.H = static_cast<int>(z.NH);
    NLCORE_TRY(mm::launch_sum_sequences(p4, p.dag, bb.d_init[4], 1, stream));
  }
  return NLCORE_STATUS_SUCCESS;
}

}  // namespace nlcore::self_modifying
