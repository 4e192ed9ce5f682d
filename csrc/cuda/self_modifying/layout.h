// Self-modifying memories (DESIGN §3.3), step one of DESIGN §7: index maps, the scalar math of
// the derive step and its derivatives, and the workspace layout shared by
// nlcore_self_modifying_workspace_size, the forward and the backward. Plain constexpr /
// __host__ __device__ so that tests/cpp checks it on a machine without a GPU.
//
// How the four memories run on the MLP-scan kernels (csrc/cuda/memory_mlp): memory m of
// sequence s is "sequence" m·N + s of a memory scan over 4·N sequences whose chunk table
// repeats the N real sequences four times (same token rows), so that
//   sh' = (m·N + s)·H + h
// indexes every per-(sequence, head) array of the scan, and the scan's state slabs
// [4·N·H][F·D] are exactly the public state layout [4, N, H, F, D]. The token tensors (x, and
// the derived k, v, eta, g) are shared by the four memories through the repeated table. The
// scan kernels that WRITE token tensors (the read y, dk, dv, dx, deta, dg) are not used: those
// quantities are summed over the four memories, which our own token kernels do (device.cuh).
#ifndef NLCORE_CUDA_SELF_MODIFYING_LAYOUT_H_
#define NLCORE_CUDA_SELF_MODIFYING_LAYOUT_H_

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "memory_mlp/layout.h"

#if defined(__CUDACC__)
#define NLCORE_SM_HD __host__ __device__ __forceinline__
#else
#define NLCORE_SM_HD inline
#endif

namespace nlcore::self_modifying {

using memory_mlp::ceil_div;
using memory_mlp::chunk_bound;
using memory_mlp::chunk_rows;
using memory_mlp::kSeqEntry;
using memory_mlp::kWorkspaceAlign;
using memory_mlp::round_up;

constexpr int kMem = 4;                 // memories: k, v, eta, alpha
constexpr int kMemK = 0, kMemV = 1, kMemEta = 2, kMemAlpha = 3;
constexpr float kNormEps = 1e-12f;      // ε of the key normalization (csrc/cpu/self_modifying.h)
constexpr int kTokThreads = 128;        // token kernels: 4 warps, one token per warp at a time
constexpr int kTokWarps = kTokThreads / 32;
constexpr int kMaxHeadDim = 128;        // D <= 128: at most kMaxHeadDim / 32 elements per lane
constexpr int kLaneElems = kMaxHeadDim / 32;
static_assert(kTokThreads % 32 == 0 && kTokWarps >= 1, "whole warps");
static_assert(kLaneElems * 32 == kMaxHeadDim, "a lane holds D / 32 elements of a row");
static_assert(memory_mlp::head_dim_ok(kMaxHeadDim) && !memory_mlp::head_dim_ok(2 * kMaxHeadDim) &&
                  !memory_mlp::head_dim_ok(16),
              "the token kernels take every head_dim the API accepts: multiples of 32, <= 128");
// token_bwd_kernel's static shared memory: per-warp partial sums of dw_eta, dw_alpha (D each)
// and db_eta, db_alpha.
constexpr size_t kTokBwdSmemBytes = (size_t(kTokWarps) * 2 * kMaxHeadDim + 2 * kTokWarps) * 4;
static_assert(kTokBwdSmemBytes <= 48 * 1024, "token_bwd_kernel uses static shared memory");

// ---- index maps ---------------------------------------------------------------------------------
// Per-(memory, sequence, head) row of every scan array: sh' = (m·N + s)·H + h.
NLCORE_SM_HD constexpr int64_t mem_row(int m, int64_t s, int h, int64_t N, int H) {
  return (int64_t(m) * N + s) * H + h;
}
// Element (r, c) of the [rows, cols] matrix of (m, s, h) in a state array [4, N, H, rows, cols].
NLCORE_SM_HD constexpr int64_t state_index(int m, int64_t s, int h, int64_t r, int64_t c,
                                           int64_t N, int H, int rows, int cols) {
  return (mem_row(m, s, h, N, H) * rows + r) * cols + c;
}
// The same element in shared initial weights [4, H, rows, cols].
NLCORE_SM_HD constexpr int64_t shared_index(int m, int h, int64_t r, int64_t c, int H, int rows,
                                            int cols) {
  return ((int64_t(m) * H + h) * rows + r) * cols + c;
}
// Token t of the current chunk in a per-chunk buffer [rowsets][rows][cols] (rowset = sh' for
// the four memories' buffers, s·H + h for the per-(sequence, head) ones).
NLCORE_SM_HD constexpr int64_t chunk_index(int64_t rowset, int64_t rows, int64_t t, int cols,
                                           int64_t c) {
  return (rowset * rows + t) * cols + c;
}
// Element d of head h of packed token row `row` in a token tensor [B·T, H, D].
NLCORE_SM_HD constexpr int64_t token_index(int64_t row, int h, int H, int D, int64_t d) {
  return (row * H + h) * D + d;
}

// ---- the derive step: scalar math ----------------------------------------------------------------
// sigmoid(x) without overflow for either sign.
NLCORE_SM_HD float sigmoid(float x) {
  if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
  const float e = expf(x);
  return e / (1.0f + e);
}
// s = (‖r‖² + ε)^(-1/2): k = s r.
NLCORE_SM_HD float key_scale(float sumsq) { return 1.0f / sqrtf(sumsq + kNormEps); }
// eta = eta_max · sigmoid(a).
NLCORE_SM_HD float eta_of(float a, float eta_max) { return eta_max * sigmoid(a); }
// d eta / d a = eta_max · sigmoid(a) · sigmoid(−a) (= eta (1 − eta / eta_max), without the
// cancellation near eta = eta_max).
NLCORE_SM_HD float deta_da(float a, float eta_max) { return eta_max * sigmoid(a) * sigmoid(-a); }
// g = log sigmoid(b) = min(b, 0) − log(1 + exp(−|b|)).
NLCORE_SM_HD float log_sigmoid(float b) { return fminf(b, 0.0f) - log1pf(expf(-fabsf(b))); }
// d g / d b = 1 − exp(g) = sigmoid(−b).
NLCORE_SM_HD float dlogsig_db(float b) { return sigmoid(-b); }

// ---- workspace ----------------------------------------------------------------------------------
struct Dims {
  int64_t B, T, N;
  int H, D, F;
  int64_t C;                // chunk size
  int64_t ckpt_every;       // backward checkpoint interval (>= 1)
  bool has_initial_state;
  int elem_bytes;           // bytes of one element of the input dtype (2 or 4)
};

// Offsets in bytes from the workspace start (every array 256-byte aligned). With SH = N·H,
// MSH = 4·SH, FD = F·D, Cm = chunk_rows(T, C): "[.]" = [MSH][Cm], "slab" = [MSH][FD] fp32.
struct Layout {
  bool ok;                  // false: the sizes overflow
  int64_t nc_bound;         // chunk indices the host loops over
  int64_t rows;             // Cm
  int64_t ckpt_every;       // min(checkpoint_every, nc_bound)
  int64_t n_ckpt, n_seg;    // backward: segments (= checkpointed chunk starts), segment slots
  size_t seq;               // int64 [4N][kSeqEntry]: the chunk table, the N sequences 4 times
  size_t alpha;             // f32 [MSH] ᾱ of the current chunk
  size_t ag;                // f32 [MSH] a_g of the state being stepped (one copy per memory)
  // per-chunk fp32 buffers
  size_t Zx;                // [.][F]  X W1ᵀ (the reads)
  size_t Ox;                // [.][D]  σ(Zx) W2ᵀ (the reads without the residual x)
  size_t Z, Zv;             // [.][F]  key and target pre-activations
  size_t Tg, E;             // [.][D]  targets, errors
  size_t Q1;                // [.][F]
  // backward only (0 in the forward layout)
  size_t ag0;               // f32 [MSH] the initial a_g, one copy per memory
  size_t ktok, vtok;        // [B·T·H·D] input dtype: the recomputed k, v
  size_t etatok, gtok;      // f32 [B·T·H]: the recomputed eta, g
  size_t R, dQ1, dR, dZ, dZv, dZx;  // [.][F]
  size_t dEeta, dE, dK, dV, dRx;    // [.][D]
  size_t dX;                // [SH][Cm][D]  Σ_m dZx_m W1_m
  size_t work;              // 6 slabs: W1, W2, P1, P2, A1, A2 (the state being stepped)
  size_t ckpt;              // [n_ckpt − 1][4 slabs: W1, W2, P1, P2]
  size_t seg;               // [n_seg][2 slabs: W1, W2]
  size_t grad;              // 6 slabs: dW1, dW2, dP1, dP2, dA1 (= dG1), dA2 (= dG2)
  size_t dag, dsg;          // f32 [MSH]
  size_t dwe, dwa;          // f32 [SH][D]: per-(sequence, head) sums of dw_eta, dw_alpha
  size_t dbe, dba;          // f32 [SH]
  size_t total;
};

// One plain function for the size query, the forward and the backward.
inline Layout make_layout(const Dims& d, bool backward) {
  Layout L{};
  L.ok = false;
  if (d.B < 1 || d.T < 1 || d.N < 1 || d.H < 1 || d.D < 1 || d.F < 1 || d.C < 1 ||
      d.ckpt_every < 1 || (d.elem_bytes != 2 && d.elem_bytes != 4))
    return L;
  L.nc_bound = chunk_bound(d.T, d.C, d.has_initial_state);
  L.rows = chunk_rows(d.T, d.C);
  const int64_t ce = d.ckpt_every < L.nc_bound ? d.ckpt_every : L.nc_bound;
  L.n_ckpt = ceil_div(L.nc_bound, ce);
  L.n_seg = ce;
  L.ckpt_every = ce;
  const long double limit = static_cast<long double>(INT64_MAX / 4);
  size_t off = 0;
  bool ok = true;
  auto take = [&](long double elems, size_t elem_bytes) -> size_t {
    const long double bytes = elems * static_cast<long double>(elem_bytes);
    if (!ok || !(bytes >= 0) || bytes + off > limit) {
      ok = false;
      return 0;
    }
    const size_t at = off;
    off = static_cast<size_t>(round_up(static_cast<int64_t>(off + static_cast<size_t>(bytes)),
                                       kWorkspaceAlign));
    return at;
  };
  const long double sh = static_cast<long double>(d.N) * d.H, msh = kMem * sh;
  const long double fd = static_cast<long double>(d.F) * d.D;
  const long double rf = msh * L.rows * d.F, rd = msh * L.rows * d.D;
  const long double toks = static_cast<long double>(d.B) * d.T * d.H;
  L.seq = take(static_cast<long double>(kMem) * d.N * kSeqEntry, 8);
  L.alpha = take(msh, 4);
  L.ag = take(msh, 4);
  L.Zx = take(rf, 4);
  L.Ox = take(rd, 4);
  L.Z = take(rf, 4);
  L.Zv = take(rf, 4);
  L.Tg = take(rd, 4);
  L.E = take(rd, 4);
  L.Q1 = take(rf, 4);
  if (backward) {
    L.ag0 = take(msh, 4);
    L.ktok = take(toks * d.D, static_cast<size_t>(d.elem_bytes));
    L.vtok = take(toks * d.D, static_cast<size_t>(d.elem_bytes));
    L.etatok = take(toks, 4);
    L.gtok = take(toks, 4);
    L.R = take(rf, 4);
    L.dQ1 = take(rf, 4);
    L.dR = take(rf, 4);
    L.dZ = take(rf, 4);
    L.dZv = take(rf, 4);
    L.dZx = take(rf, 4);
    L.dEeta = take(rd, 4);
    L.dE = take(rd, 4);
    L.dK = take(rd, 4);
    L.dV = take(rd, 4);
    L.dRx = take(rd, 4);
    L.dX = take(sh * L.rows * d.D, 4);
    L.work = take(6 * msh * fd, 4);
    L.ckpt = take(static_cast<long double>(L.n_ckpt - 1) * 4 * msh * fd, 4);
    L.seg = take(static_cast<long double>(L.n_seg) * 2 * msh * fd, 4);
    L.grad = take(6 * msh * fd, 4);
    L.dag = take(msh, 4);
    L.dsg = take(msh, 4);
    L.dwe = take(sh * d.D, 4);
    L.dwa = take(sh * d.D, 4);
    L.dbe = take(sh, 4);
    L.dba = take(sh, 4);
  }
  L.total = off;
  L.ok = ok;
  return L;
}

}  // namespace nlcore::self_modifying

#endif  // NLCORE_CUDA_SELF_MODIFYING_LAYOUT_H_
