// Internal interface between the MLP-scan host driver (driver.cpp, api.cpp: plain C++) and the
// kernels (*.cu). Not installed; hidden symbols.
#ifndef NLCORE_CUDA_MEMORY_MLP_LAUNCHERS_H_
#define NLCORE_CUDA_MEMORY_MLP_LAUNCHERS_H_

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "memory_mlp/layout.h"
#include "nlcore/status.h"

namespace nlcore::memory_mlp {

// Everything a kernel needs, passed by value. Input / output pointers are in the layouts of
// nlcore/memory_mlp.h; workspace pointers are carved from make_layout(). Per-(sequence, head)
// arrays are indexed by sh = s·H + h.
struct Params {
  // problem
  int64_t B, T, N, C;
  int64_t nc_bound;    // chunk indices the host loops over
  int H, D, F;
  int rows;            // Cm: rows of the per-chunk buffers
  int elem_bytes;      // bytes of one element of the input dtype
  int gelu, residual, l2, self_target, erase, has_g, has_init, w_shared;
  float momentum;
  // cu_seqlens (device; NULL: fixed length)
  const void* cu;
  int cu_is64;
  // inputs
  const void* x;
  const void* k;
  const void* v;
  const float* eta;    // [B*T][H]
  const float* g;      // [B*T][H] or NULL
  const float* w1_init;  // [H or N][H..][F][D]
  const float* w2_init;
  const float* p1_init;  // NULL unless has_init
  const float* p2_init;
  const float* a1_init;
  const float* a2_init;
  const float* ag_init;
  const int64_t* n_init;
  // the state being stepped: slabs [SH][F·D], ag [SH] (forward: the final-state outputs)
  float* w1;
  float* w2;
  float* p1;
  float* p2;
  float* a1;
  float* a2;
  float* ag;
  // forward outputs
  void* y;
  int64_t* n_out;
  // backward inputs / outputs
  const void* dy;
  void* dx;
  void* dk;
  void* dv;
  float* deta;
  float* dg;
  // backward state gradients (workspace slabs): dW, dP, dA (the current chunk's dG), d a_g
  float* dw1;
  float* dw2;
  float* dp1;
  float* dp2;
  float* da1;
  float* da2;
  float* dag;
  float* dsg;          // [SH] dΣg of the current chunk
  // workspace
  int64_t* seq;        // [N][kSeqEntry]: first row, length, n0
  float* alpha;        // [SH]
  float* Z;            // per-chunk buffers [SH][rows][F or D]
  float* Zx;
  float* Zv;
  float* Tg;
  float* E;
  float* R;            // NULL in the forward (not stored)
  float* Q1;
  float* dQ1;
  float* dR;
  float* dZ;
  float* dZv;
  float* dZx;
  float* dEeta;
  float* dE;
};

// ---- the generic tile GEMM -----------------------------------------------------------------
// out[M × N] (per sequence × head) = Σ_terms A_term [M × K_term] · B_term [K_term × N], then an
// epilogue. Operands are views of stored matrices:
enum MatSrc : int {
  kSrcSeq = 0,  // an input token tensor [B*T][H][cols] of the input dtype; stored rows =
                // the chunk's tokens (row r = token row0 + r of head h)
  kSrcTok = 1,  // a per-chunk fp32 buffer [SH][rows][cols]; stored rows = the chunk's tokens
  kSrcMat = 2   // a fp32 per-(sequence, head) matrix [SH][mrows][cols]
};
struct MatDesc {
  const void* p;
  int src;     // MatSrc
  int mrows;   // kSrcMat: stored rows
  int cols;    // stored columns
  int trans;   // operand (i, j) = stored (j, i)
  int act;     // apply σ to the stored value (pre-activation buffers)
  int eta;     // multiply by η of the stored row's token (token sources only)
  float mult;  // constant factor
};
constexpr int kTokens = -1;  // an extent equal to the chunk's length (M or a reduction)
struct Term {
  MatDesc a, b;
  int kdim;    // reduction length, or kTokens
};

// Epilogues; each consumes the fp32 accumulator `acc` of element (i, j) of one (sh, chunk).
// t = token index within the chunk when M = kTokens. See device.cuh for the formulas.
enum Epi : int {
  kEpiStore = 0,   // out[t][j] = acc                       (Z, Zx, Zv: pre-activations)
  kEpiY,           // y = acc [+ x]                          (read)
  kEpiTg,          // Tg = acc [+ v]                         (self_target)
  kEpiE,           // E = acc [+ k] − Tg  ("l2"),  E = −Tg ("dot")
  kEpiQ1,          // R = acc;  Q1 = σ'(Z) ⊙ R [+ η Z]
  kEpiUpdate,      // G = A + acc; complete: P ← μP − G, W ← ᾱW + P, A ← 0; else A ← G
  kEpiDQ1,         // dQ1 = acc; dR = σ'(Z) dQ1; dZ = σ''(Z) R dQ1 [+ η dQ1]
  kEpiDEeta,       // dEη = acc; dE = η dEη
  kEpiDH,          // dZ += σ'(Z) ⊙ acc                      (acc = dH)
  kEpiDK,          // dk = acc [+ dE]                        (residual, "l2")
  kEpiDZv,         // dZv = σ'(Zv) ⊙ acc                     (acc = dTg W2)
  kEpiDV,          // dv = acc [− dE]                        (dTg: residual or !self_target)
  kEpiDZx,         // dZx = σ'(Zx) ⊙ acc                     (acc = dY W2)
  kEpiDX,          // dx = acc [+ dY]                        (residual)
  kEpiAdd          // out[i][j] += acc                       (dW accumulation, [SH][M][N])
};

struct Gemm {
  Term term[kMaxTerms];
  int nterms;
  int m;           // product rows, or kTokens
  int n;           // product columns
  int epi;         // Epi
  int which;       // kEpiUpdate: 1 = (W1, P1, A1), 2 = (W2, P2, A2)
  float* out;      // kEpiStore / kEpiAdd target
  int64_t chunk;   // chunk index j within every sequence
};

// Per-dtype GEMM launchers (memory_mlp_<dtype>.cu).
using GemmFn = nlcore_status_t (*)(const Params& p, const Gemm& g, cudaStream_t stream);
nlcore_status_t gemm_bf16(const Params& p, const Gemm& g, cudaStream_t stream);
#if !defined(NLCORE_KERNEL_SET_CI)
nlcore_status_t gemm_f16(const Params& p, const Gemm& g, cudaStream_t stream);
nlcore_status_t gemm_f32(const Params& p, const Gemm& g, cudaStream_t stream);
#endif

// ---- the persistent forward (persistent.h / persistent.cuh; sm_90, experimental) ----------------
struct PersistLaunch {
  int D, fc, cluster;  // slice shape and CTAs per (sequence, head)
  size_t smem;         // dynamic shared memory per CTA
  int64_t pairs;       // clusters: N·H
};
// p == NULL: probe only — *max_clusters = how many clusters of this configuration can be
// resident at once (0: none fits; −1: the loaded image has no sm_90 body); no launch.
// p != NULL: launch the kernel on `stream` (max_clusters unused).
using PersistFn = nlcore_status_t (*)(const Params* p, const PersistLaunch& pl, int* max_clusters,
                                      cudaStream_t stream);
nlcore_status_t persist_bf16(const Params* p, const PersistLaunch& pl, int* max_clusters,
                             cudaStream_t stream);
#if !defined(NLCORE_KERNEL_SET_CI)
nlcore_status_t persist_f16(const Params* p, const PersistLaunch& pl, int* max_clusters,
                            cudaStream_t stream);
nlcore_status_t persist_f32(const Params* p, const PersistLaunch& pl, int* max_clusters,
                            cudaStream_t stream);
#endif

// dtype-independent kernels (common.cu)
nlcore_status_t launch_table(const Params& p, cudaStream_t stream);
// Copies the initial state (broadcast when shared; zeros where absent) into the state slabs
// p.w1 .. p.a2, p.ag.
nlcore_status_t launch_init_state(const Params& p, cudaStream_t stream);
// ᾱ = exp(a_g + Σ_chunk g) into p.alpha; a_g ← 0 (complete chunk) or the sum (incomplete).
nlcore_status_t launch_gates(const Params& p, int64_t j, cudaStream_t stream);
// Backward through the chunk-end update of chunk j (chunk-start weights W1, W2 given).
nlcore_status_t launch_bwd_update(const Params& p, int64_t j, const float* w1, const float* w2,
                                  cudaStream_t stream);
// deta_t = ⟨E_t, dEη_t⟩ [+ ⟨Z_t, dQ1_t⟩]; dg_t = dΣg, for the tokens of chunk j.
nlcore_status_t launch_token_grads(const Params& p, int64_t j, cudaStream_t stream);
// dst[h][e] = Σ_s src[s][h][e] (s ascending), e < per_head.
nlcore_status_t launch_sum_sequences(const Params& p, const float* src, float* dst,
                                     int64_t per_head, cudaStream_t stream);

// Error helpers (common.cu).
nlcore_status_t launch_status(const char* what);
nlcore_status_t cuda_status(cudaError_t e, const char* what);

// Host drivers (driver.cpp): the chunk loops.
struct BackwardBuffers {
  float* ckpt;                 // [n_ckpt − 1][4 slabs: W1, W2, P1, P2]
  float* seg;                  // [ckpt_every][2 slabs: W1, W2]
  int64_t ckpt_every;          // min(checkpoint_every, nc_bound)
  int64_t n_ckpt;
  const float* grad_final[7];  // gradients of the final w_in, w_out, p_in, p_out, acc_in,
                               // acc_out, acc_g (NULL: zero)
  float* dw_in;                // w_in's layout
  float* dw_out;
  float* d_init[5];            // dp_in, dp_out, dacc_in, dacc_out, dacc_g (has_init only)
};
nlcore_status_t run_forward(const Params& p, GemmFn gemm, cudaStream_t stream);
// The persistent forward: zero-fills y for varlen (rows no sequence covers), then one launch.
nlcore_status_t run_forward_persistent(const Params& p, const PersistLaunch& pl, PersistFn fn,
                                       cudaStream_t stream);
nlcore_status_t run_backward(const Params& p, const BackwardBuffers& bb, GemmFn gemm,
                             cudaStream_t stream);

}  // namespace nlcore::memory_mlp

#endif  // NLCORE_CUDA_MEMORY_MLP_LAUNCHERS_H_
