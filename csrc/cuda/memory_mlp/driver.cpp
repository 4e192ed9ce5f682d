// MLP scan host drivers: the chunk loops of the forward and of the checkpointed backward, each
// GEMM of csrc/cpu/memory_mlp.h spelled out as one generic-GEMM launch (device.cuh). Plain C++:
// only launches, async copies and memsets on the caller's stream; no host sync.
//
// Notation (per sequence × head, chunk of c tokens): X, K, V, dY [c × D] token rows, η [c];
// W1 [F × D], W2 [D × F] the chunk-start weights; σ applied at operand load where written σ(·);
// "tok" buffers are the fp32 [SH][rows][·] per-chunk arrays of the workspace.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/error.h"
#include "memory_mlp/launchers.h"
#include "memory_mlp/layout.h"

namespace nlcore::memory_mlp {
namespace {

#define NLCORE_TRY(expr)                          \
  do {                                            \
    const nlcore_status_t _st = (expr);           \
    if (_st != NLCORE_STATUS_SUCCESS) return _st; \
  } while (0)

// ---- operand views ---------------------------------------------------------------------------
MatDesc view(const void* p, int src, int mrows, int cols) {
  MatDesc d{};
  d.p = p;
  d.src = src;
  d.mrows = mrows;
  d.cols = cols;
  d.mult = 1.0f;
  return d;
}
// an input token tensor [B*T][H][D] (dtype T): rows = the chunk's tokens
MatDesc seq(const void* p, int D) { return view(p, kSrcSeq, 0, D); }
// a per-chunk fp32 buffer [SH][rows][cols]
MatDesc tok(const float* p, int cols) { return view(p, kSrcTok, 0, cols); }
// a per-(sequence, head) fp32 matrix [SH][rows][cols]
MatDesc mat(const float* p, int rows, int cols) { return view(p, kSrcMat, rows, cols); }
MatDesc tr(MatDesc d) { d.trans = 1; return d; }      // transposed
MatDesc sig(MatDesc d) { d.act = 1; return d; }       // σ(·) of a pre-activation buffer
MatDesc by_eta(MatDesc d) { d.eta = 1; return d; }    // diag(η) on the token rows
MatDesc neg(MatDesc d) { d.mult = -d.mult; return d; }

Gemm gemm_of(int m, int n, int epi, int64_t j) {
  Gemm g{};
  g.m = m;
  g.n = n;
  g.epi = epi;
  g.chunk = j;
  return g;
}
void add(Gemm& g, const MatDesc& a, const MatDesc& b, int kdim) {
  g.term[g.nterms].a = a;
  g.term[g.nterms].b = b;
  g.term[g.nterms].kdim = kdim;
  ++g.nterms;
}

size_t slab_floats(const Params& p) { return size_t(p.N) * p.H * size_t(p.F) * p.D; }

nlcore_status_t copy(void* dst, const void* src, size_t bytes, cudaStream_t stream,
                     const char* what) {
  if (bytes == 0) return NLCORE_STATUS_SUCCESS;
  return cuda_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream), what);
}
nlcore_status_t zero(void* dst, size_t bytes, cudaStream_t stream, const char* what) {
  if (bytes == 0 || dst == nullptr) return NLCORE_STATUS_SUCCESS;
  return cuda_status(cudaMemsetAsync(dst, 0, bytes, stream), what);
}

// ---- one chunk, forward ------------------------------------------------------------------------
// Chunk j of every sequence at weights (W1, W2): the pre-activations Z (and Zx for the read, Zv
// for self targets), Tg, E, R (backward only: p.R != NULL) and Q1; with want_y the read Y; with
// update the gates and the inner step (G, P, W, A of the state p.w1 .. p.a2, whose W must then
// be W1 / W2).
nlcore_status_t chunk_forward(const Params& p, int64_t j, const float* W1, const float* W2,
                              bool want_zx, bool want_y, bool update, GemmFn gemm,
                              cudaStream_t stream) {
  const int D = p.D, F = p.F;
  if (update) NLCORE_TRY(launch_gates(p, j, stream));  // ᾱ = exp(a_g + Σ g)
  {  // Z = K W1ᵀ  [c × F]
    Gemm g = gemm_of(kTokens, F, kEpiStore, j);
    g.out = p.Z;
    add(g, seq(p.k, D), tr(mat(W1, F, D)), D);
    NLCORE_TRY(gemm(p, g, stream));
  }
  if (want_zx) {  // Zx = X W1ᵀ  [c × F]
    Gemm g = gemm_of(kTokens, F, kEpiStore, j);
    g.out = p.Zx;
    add(g, seq(p.x, D), tr(mat(W1, F, D)), D);
    NLCORE_TRY(gemm(p, g, stream));
  }
  if (want_y) {  // Y = [X +] σ(Zx) W2ᵀ  [c × D]
    Gemm g = gemm_of(kTokens, D, kEpiY, j);
    add(g, sig(tok(p.Zx, F)), tr(mat(W2, D, F)), F);
    NLCORE_TRY(gemm(p, g, stream));
  }
  if (p.self_target) {
    {  // Zv = V W1ᵀ  [c × F]
      Gemm g = gemm_of(kTokens, F, kEpiStore, j);
      g.out = p.Zv;
      add(g, seq(p.v, D), tr(mat(W1, F, D)), D);
      NLCORE_TRY(gemm(p, g, stream));
    }
    {  // Tg = [V +] σ(Zv) W2ᵀ  [c × D]
      Gemm g = gemm_of(kTokens, D, kEpiTg, j);
      add(g, sig(tok(p.Zv, F)), tr(mat(W2, D, F)), F);
      NLCORE_TRY(gemm(p, g, stream));
    }
  }
  {  // E = Pr − Tg with Pr = [K +] σ(Z) W2ᵀ ("l2");  E = −Tg ("dot": no product)  [c × D]
    Gemm g = gemm_of(kTokens, D, kEpiE, j);
    if (p.l2) add(g, sig(tok(p.Z, F)), tr(mat(W2, D, F)), F);
    NLCORE_TRY(gemm(p, g, stream));
  }
  {  // R = Eη W2 = diag(η) E W2;  Q1 = σ'(Z) ⊙ R [+ diag(η) Z]  [c × F]
    Gemm g = gemm_of(kTokens, F, kEpiQ1, j);
    add(g, by_eta(tok(p.E, D)), mat(W2, D, F), D);
    NLCORE_TRY(gemm(p, g, stream));
  }
  if (update) {
    {  // G1 = A1 + Q1ᵀ K  [F × D], then the step of (W1, P1, A1)
      Gemm g = gemm_of(F, D, kEpiUpdate, j);
      g.which = 1;
      add(g, tr(tok(p.Q1, F)), seq(p.k, D), kTokens);
      NLCORE_TRY(gemm(p, g, stream));
    }
    {  // G2 = A2 + Eηᵀ H = A2 + (diag(η) E)ᵀ σ(Z)  [D × F], then the step of (W2, P2, A2)
      Gemm g = gemm_of(D, F, kEpiUpdate, j);
      g.which = 2;
      add(g, by_eta(tr(tok(p.E, D))), sig(tok(p.Z, F)), kTokens);
      NLCORE_TRY(gemm(p, g, stream));
    }
  }
  return NLCORE_STATUS_SUCCESS;
}

// ---- one chunk, backward -------------------------------------------------------------------------
// Chunk j of every sequence with chunk-start weights (W1, W2), given the gradients of the state
// after it in p.dw* / p.dp* / p.da* / p.dag; leaves those of the state before it, and writes the
// chunk's rows of dx, dk, dv, deta, dg. Formulas: csrc/cpu/memory_mlp.h.
nlcore_status_t chunk_backward(const Params& p, int64_t j, const float* W1, const float* W2,
                               GemmFn gemm, cudaStream_t stream) {
  const int D = p.D, F = p.F;
  // Through the update: dG1 → p.da1, dG2 → p.da2, dΣg → p.dsg; dW ← ᾱ dW', dP ← μ T.
  NLCORE_TRY(launch_bwd_update(p, j, W1, W2, stream));
  // The chunk's forward intermediates at (W1, W2): Z, Zx, Zv, Tg, E, R, Q1.
  NLCORE_TRY(chunk_forward(p, j, W1, W2, true, false, false, gemm, stream));
  {  // dQ1 = K dG1ᵀ [c × F];  dR = σ'(Z) ⊙ dQ1;  dZ = σ''(Z) ⊙ R ⊙ dQ1 [+ diag(η) dQ1]
    Gemm g = gemm_of(kTokens, F, kEpiDQ1, j);
    add(g, seq(p.k, D), tr(mat(p.da1, F, D)), D);
    NLCORE_TRY(gemm(p, g, stream));
  }
  {  // dEη = H dG2ᵀ + dR W2ᵀ  [c × D];  dE = diag(η) dEη
    Gemm g = gemm_of(kTokens, D, kEpiDEeta, j);
    add(g, sig(tok(p.Z, F)), tr(mat(p.da2, D, F)), F);
    add(g, tok(p.dR, F), tr(mat(W2, D, F)), F);
    NLCORE_TRY(gemm(p, g, stream));
  }
  {  // dH = Eη dG2 [+ dPr W2, dPr = dE ("l2")]  [c × F];  dZ += σ'(Z) ⊙ dH
    Gemm g = gemm_of(kTokens, F, kEpiDH, j);
    add(g, by_eta(tok(p.E, D)), mat(p.da2, D, F), D);
    if (p.l2) add(g, tok(p.dE, D), mat(W2, D, F), D);
    NLCORE_TRY(gemm(p, g, stream));
  }
  {  // dK = Q1 dG1 + dZ W1 [+ dPr (residual, "l2")]  [c × D]
    Gemm g = gemm_of(kTokens, D, kEpiDK, j);
    add(g, tok(p.Q1, F), mat(p.da1, F, D), F);
    add(g, tok(p.dZ, F), mat(W1, F, D), F);
    NLCORE_TRY(gemm(p, g, stream));
  }
  if (p.self_target) {
    {  // dZv = σ'(Zv) ⊙ (dTg W2), dTg = −dE  [c × F]
      Gemm g = gemm_of(kTokens, F, kEpiDZv, j);
      add(g, neg(tok(p.dE, D)), mat(W2, D, F), D);
      NLCORE_TRY(gemm(p, g, stream));
    }
    {  // dV = dZv W1 [+ dTg (residual)]  [c × D]
      Gemm g = gemm_of(kTokens, D, kEpiDV, j);
      add(g, tok(p.dZv, F), mat(W1, F, D), F);
      NLCORE_TRY(gemm(p, g, stream));
    }
  } else {  // dV = dTg = −dE (no product)
    Gemm g = gemm_of(kTokens, D, kEpiDV, j);
    NLCORE_TRY(gemm(p, g, stream));
  }
  {  // dZx = σ'(Zx) ⊙ (dY W2)  [c × F]
    Gemm g = gemm_of(kTokens, F, kEpiDZx, j);
    add(g, seq(p.dy, D), mat(W2, D, F), D);
    NLCORE_TRY(gemm(p, g, stream));
  }
  {  // dX = dZx W1 [+ dY (residual)]  [c × D]
    Gemm g = gemm_of(kTokens, D, kEpiDX, j);
    add(g, tok(p.dZx, F), mat(W1, F, D), F);
    NLCORE_TRY(gemm(p, g, stream));
  }
  {  // dW1 += dZᵀ K [+ dZvᵀ V] + dZxᵀ X  [F × D]
    Gemm g = gemm_of(F, D, kEpiAdd, j);
    g.out = p.dw1;
    add(g, tr(tok(p.dZ, F)), seq(p.k, D), kTokens);
    if (p.self_target) add(g, tr(tok(p.dZv, F)), seq(p.v, D), kTokens);
    add(g, tr(tok(p.dZx, F)), seq(p.x, D), kTokens);
    NLCORE_TRY(gemm(p, g, stream));
  }
  {  // dW2 += Eηᵀ dR [+ dPrᵀ H] [+ dTgᵀ Hv] + dYᵀ Hx  [D × F]
    Gemm g = gemm_of(D, F, kEpiAdd, j);
    g.out = p.dw2;
    add(g, by_eta(tr(tok(p.E, D))), tok(p.dR, F), kTokens);
    if (p.l2) add(g, tr(tok(p.dE, D)), sig(tok(p.Z, F)), kTokens);
    if (p.self_target) add(g, neg(tr(tok(p.dE, D))), sig(tok(p.Zv, F)), kTokens);
    add(g, tr(seq(p.dy, D)), sig(tok(p.Zx, F)), kTokens);
    NLCORE_TRY(gemm(p, g, stream));
  }
  // deta_t = ⟨E_t, dEη_t⟩ [+ ⟨Z_t, dQ1_t⟩];  dg_t = dΣg
  return launch_token_grads(p, j, stream);
}

}  // namespace

// ---- drivers ---------------------------------------------------------------------------------------
nlcore_status_t run_forward(const Params& p, GemmFn gemm, cudaStream_t stream) {
  const size_t tok_elems = size_t(p.B) * p.T * p.H * p.D;
  NLCORE_TRY(zero(p.y, tok_elems * p.elem_bytes, stream, "cudaMemsetAsync(y)"));  // uncovered rows
  NLCORE_TRY(launch_table(p, stream));
  NLCORE_TRY(launch_init_state(p, stream));  // the final-state outputs start as the initial state
  for (int64_t j = 0; j < p.nc_bound; ++j)
    NLCORE_TRY(chunk_forward(p, j, p.w1, p.w2, true, true, true, gemm, stream));
  return NLCORE_STATUS_SUCCESS;
}

nlcore_status_t run_forward_persistent(const Params& p, const PersistLaunch& pl, PersistFn fn,
                                       cudaStream_t stream) {
  if (p.cu != nullptr)  // rows outside every sequence (invalid cu_seqlens) stay defined
    NLCORE_TRY(zero(p.y, size_t(p.B) * p.T * p.H * p.D * p.elem_bytes, stream,
                    "cudaMemsetAsync(y)"));
  return fn(&p, pl, nullptr, stream);
}

// Backward. 1) Gradient state ← the final-state gradients. 2) A state-only forward over the
// chunks saves (W1, W2, P1, P2) at every chunk k·ce (k >= 1) into checkpoint slot k − 1.
// 3) Segments k = last .. 0: restore the state at chunk k·ce (the initial state for k = 0;
// accumulators are zero at any later chunk start), re-run the segment saving each chunk-start
// (W1, W2) into segment slots, then walk its chunks backwards.
nlcore_status_t run_backward(const Params& p, const BackwardBuffers& bb, GemmFn gemm,
                             cudaStream_t stream) {
  const size_t slab = slab_floats(p), sh = size_t(p.N) * p.H;
  const size_t fb = sizeof(float);
  const size_t tok_elems = size_t(p.B) * p.T * p.H;
  NLCORE_TRY(zero(p.dx, tok_elems * p.D * p.elem_bytes, stream, "cudaMemsetAsync(dx)"));
  NLCORE_TRY(zero(p.dk, tok_elems * p.D * p.elem_bytes, stream, "cudaMemsetAsync(dk)"));
  NLCORE_TRY(zero(p.dv, tok_elems * p.D * p.elem_bytes, stream, "cudaMemsetAsync(dv)"));
  NLCORE_TRY(zero(p.deta, tok_elems * fb, stream, "cudaMemsetAsync(deta)"));
  NLCORE_TRY(zero(p.dg, tok_elems * fb, stream, "cudaMemsetAsync(dg)"));
  NLCORE_TRY(launch_table(p, stream));

  // 1) dW1, dW2, dP1, dP2, dA1, dA2, d a_g of the final state
  float* const gstate[6] = {p.dw1, p.dw2, p.dp1, p.dp2, p.da1, p.da2};
  for (int i = 0; i < 6; ++i) {
    if (bb.grad_final[i] != nullptr)
      NLCORE_TRY(copy(gstate[i], bb.grad_final[i], slab * fb, stream, "cudaMemcpyAsync(grad)"));
    else
      NLCORE_TRY(zero(gstate[i], slab * fb, stream, "cudaMemsetAsync(grad)"));
  }
  if (bb.grad_final[6] != nullptr)
    NLCORE_TRY(copy(p.dag, bb.grad_final[6], sh * fb, stream, "cudaMemcpyAsync(grad_acc_g)"));
  else
    NLCORE_TRY(zero(p.dag, sh * fb, stream, "cudaMemsetAsync(dag)"));

  // 2) checkpoints. The work state is 6 consecutive slabs W1, W2, P1, P2, A1, A2 at p.w1.
  const int64_t ce = bb.ckpt_every, nck = bb.n_ckpt;
  NLCORE_TRY(launch_init_state(p, stream));
  for (int64_t j = 0; j <= (nck - 1) * ce; ++j) {
    if (j > 0 && j % ce == 0)
      NLCORE_TRY(copy(bb.ckpt + size_t(j / ce - 1) * 4 * slab, p.w1, 4 * slab * fb, stream,
                      "cudaMemcpyAsync(checkpoint save)"));
    if (j < (nck - 1) * ce)
      NLCORE_TRY(chunk_forward(p, j, p.w1, p.w2, false, false, true, gemm, stream));
  }

  // 3) segments in reverse
  for (int64_t k = nck - 1; k >= 0; --k) {
    const int64_t j0 = k * ce;
    const int64_t j1 = j0 + ce < p.nc_bound ? j0 + ce : p.nc_bound;
    if (k == 0) {
      NLCORE_TRY(launch_init_state(p, stream));
    } else {
      NLCORE_TRY(copy(p.w1, bb.ckpt + size_t(k - 1) * 4 * slab, 4 * slab * fb, stream,
                      "cudaMemcpyAsync(checkpoint restore)"));
      NLCORE_TRY(zero(p.a1, 2 * slab * fb, stream, "cudaMemsetAsync(A)"));
      NLCORE_TRY(zero(p.ag, sh * fb, stream, "cudaMemsetAsync(a_g)"));
    }
    for (int64_t j = j0; j < j1; ++j) {
      NLCORE_TRY(copy(bb.seg + size_t(j - j0) * 2 * slab, p.w1, 2 * slab * fb, stream,
                      "cudaMemcpyAsync(segment save)"));
      if (j + 1 < j1) NLCORE_TRY(chunk_forward(p, j, p.w1, p.w2, false, false, true, gemm, stream));
    }
    for (int64_t j = j1 - 1; j >= j0; --j) {
      const float* w1 = bb.seg + size_t(j - j0) * 2 * slab;
      NLCORE_TRY(chunk_backward(p, j, w1, w1 + slab, gemm, stream));
    }
  }

  // 4) outputs: dw_in / dw_out in w_in's layout; the initial-state gradients
  if (p.w_shared) {
    NLCORE_TRY(launch_sum_sequences(p, p.dw1, bb.dw_in, int64_t(p.F) * p.D, stream));
    NLCORE_TRY(launch_sum_sequences(p, p.dw2, bb.dw_out, int64_t(p.F) * p.D, stream));
  } else {
    NLCORE_TRY(copy(bb.dw_in, p.dw1, slab * fb, stream, "cudaMemcpyAsync(dw_in)"));
    NLCORE_TRY(copy(bb.dw_out, p.dw2, slab * fb, stream, "cudaMemcpyAsync(dw_out)"));
  }
  if (p.has_init) {
    const float* src[5] = {p.dp1, p.dp2, p.da1, p.da2, p.dag};
    for (int i = 0; i < 5; ++i)
      NLCORE_TRY(copy(bb.d_init[i], src[i], (i < 4 ? slab : sh) * fb, stream,
                      "cudaMemcpyAsync(initial-state gradient)"));
  }
  return NLCORE_STATUS_SUCCESS;
}

}  // namespace nlcore::memory_mlp
