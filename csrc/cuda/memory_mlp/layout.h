// MLP memory scan (DESIGN §3.2): the chunk grid of a sequence, host bounds, the workspace
// layout shared by nlcore_memory_mlp_workspace_size, the forward and the backward, and the
// activation with its first and second derivatives. Plain constexpr / __host__ __device__ so
// that tests/cpp checks it on a machine without a GPU (compiled there by g++, where
// NLCORE_MLP_HD is just `inline`).
//
// Step one of DESIGN §7 (the simplest correct tensor-core form). Weights stay in global memory
// (fp32) per (sequence, head); the host loops over the chunk index j and, for each j, launches
// kernels over (sequence × head, tiles) that do chunk j of every sequence at once (a sequence
// with fewer chunks skips). Every GEMM of csrc/cpu/memory_mlp.h is one launch of one generic
// tile GEMM (device.cuh) whose operands are views (token rows of an input, fp32 chunk buffers,
// fp32 per-(sequence, head) matrices) and whose epilogue is the formula that consumes it.
// Backward: a state-only forward saves the chunk-start weights and momentum buffers every
// `checkpoint_every` chunks; segments are then re-run in reverse (their chunk-start weights
// kept in segment slots) and walked backwards chunk by chunk.
// Step two (NLCORE_MEMORY_MLP_FLAG_PERSISTENT, forward only, experimental): persistent.h.
#ifndef NLCORE_CUDA_MEMORY_MLP_LAYOUT_H_
#define NLCORE_CUDA_MEMORY_MLP_LAYOUT_H_

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define NLCORE_MLP_HD __host__ __device__ __forceinline__
#else
#define NLCORE_MLP_HD inline
#endif

namespace nlcore::memory_mlp {

constexpr int kThreads = 128;          // every GEMM CTA: 4 warps
constexpr int kTileM = 64;             // GEMM output tile rows (warp w: rows 16 w .. 16 w + 15)
constexpr int kTileN = 64;             // GEMM output tile columns (8 n8-blocks per warp)
constexpr int kTileK = 32;             // reduction slice staged in shared memory per step
constexpr int kALd = kTileK + 1;       // fp32 row stride of the A tile [kTileM][kALd]
constexpr int kBLd = kTileN + 1;       // fp32 row stride of the B tile [kTileK][kBLd]
constexpr int kMaxTerms = 4;           // products summed into one accumulator per launch
constexpr int kRowThreads = 256;       // per-(sequence, head) CTAs of the state kernels
constexpr int kSeqEntry = 4;           // int64 per sequence: first row, length, n0, unused
constexpr size_t kWorkspaceAlign = 256;
constexpr int kMaxGridY = 65535;
constexpr int64_t kMaxChunk = int64_t(1) << 62;  // keeps every token offset within int64

constexpr size_t kGemmSmemBytes =
    (size_t(kTileM) * kALd + size_t(kTileK) * kBLd) * sizeof(float);
static_assert(kGemmSmemBytes <= 48 * 1024, "the GEMM uses static shared memory (<= 48 KiB)");
static_assert(kTileM == 16 * (kThreads / 32), "one m16 slab per warp");
static_assert(kTileN == 64 && kTileK % 16 == 0, "8 n8-blocks per warp, k16 mma steps");

// x >= 0, m >= 1; no intermediate overflow (chunk sizes may be huge: "update never").
NLCORE_MLP_HD constexpr int64_t ceil_div(int64_t x, int64_t m) { return x / m + (x % m != 0); }
NLCORE_MLP_HD constexpr int64_t round_up(int64_t x, int64_t m) { return ceil_div(x, m) * m; }

NLCORE_MLP_HD constexpr bool head_dim_ok(int d) { return d == 32 || d == 64 || d == 128; }
NLCORE_MLP_HD constexpr bool hidden_dim_ok(int d, int f) {
  return f == d || f == 2 * d || f == 4 * d;
}

// ---- the chunk grid of one sequence ---------------------------------------------------------
// A sequence of `len` tokens that carries an open chunk of n0 tokens (0 <= n0 < C) first
// completes that chunk (C − n0 tokens), then continues with chunks of C; the last chunk may be
// incomplete. Chunk j covers tokens [row0, row0 + len) (rows of the packed [B*T] token axis);
// `complete` says whether it reaches C tokens (then the weights update at its end).
struct ChunkSpan {
  int64_t row0;
  int64_t len;     // 0: the sequence has no chunk j
  bool complete;
};

NLCORE_MLP_HD ChunkSpan chunk_span(int64_t start, int64_t len, int64_t n0, int64_t C, int64_t j) {
  ChunkSpan s{start, 0, false};
  if (len <= 0 || j < 0) return s;
  const int64_t first = (C - n0) < len ? (C - n0) : len;
  if (j == 0) {
    s.len = first;
    s.complete = n0 + first == C;
    return s;
  }
  const int64_t off = first + (j - 1) * C;
  if (off >= len) return s;
  s.row0 = start + off;
  s.len = (len - off) < C ? (len - off) : C;
  s.complete = s.len == C;
  return s;
}

// Chunks of a sequence of `len` tokens carrying n0 (= ceil((len + n0) / C) for len > 0).
NLCORE_MLP_HD constexpr int64_t chunks_of(int64_t len, int64_t n0, int64_t C) {
  return len <= 0 ? 0 : ceil_div(len + n0, C);
}

// Tokens of the open chunk after the sequence: (n0 + len) mod C.
NLCORE_MLP_HD constexpr int64_t final_count(int64_t len, int64_t n0, int64_t C) {
  return len <= 0 ? n0 : (n0 + len) % C;
}

// Host upper bound on the chunk index loop: every sequence has len <= T, and n0 <= C − 1 when an
// initial state is given (else 0): chunks <= ceil((T + C − 1) / C) = 1 + ceil((T − 1) / C), or
// ceil(T / C). (T / C + 1 is NOT enough: T = 2C − 1 with n0 = C − 1 has 3 chunks.)
NLCORE_MLP_HD constexpr int64_t chunk_bound(int64_t T, int64_t C, bool has_initial_state) {
  return has_initial_state ? 1 + ceil_div(T - 1, C) : ceil_div(T, C);
}

// Rows of the per-chunk fp32 buffers: no chunk is longer than C or than T.
NLCORE_MLP_HD constexpr int64_t chunk_rows(int64_t T, int64_t C) { return C < T ? C : T; }

// ---- activation -------------------------------------------------------------------------------
// σ = SiLU: σ = z s, σ' = s (1 + z (1 − s)), σ'' = s (1 − s) (2 + z (1 − 2 s)), s = sigmoid(z);
// σ = GELU (erf): σ = z Φ(z), σ' = Φ(z) + z φ(z), σ'' = φ(z) (2 − z²).
struct Act3 {
  float f, d1, d2;
};
NLCORE_MLP_HD float act_f(int gelu, float z) {
  if (gelu) return z * (0.5f * (1.0f + erff(z * 0.70710678118654752f)));
  return z / (1.0f + expf(-z));
}
NLCORE_MLP_HD float act_d1(int gelu, float z) {
  if (gelu) {
    const float cdf = 0.5f * (1.0f + erff(z * 0.70710678118654752f));
    const float pdf = expf(-0.5f * z * z) * 0.39894228040143268f;
    return cdf + z * pdf;
  }
  const float s = 1.0f / (1.0f + expf(-z));
  return s * (1.0f + z * (1.0f - s));
}
NLCORE_MLP_HD float act_d2(int gelu, float z) {
  if (gelu) return expf(-0.5f * z * z) * 0.39894228040143268f * (2.0f - z * z);
  const float s = 1.0f / (1.0f + expf(-z));
  return s * (1.0f - s) * (2.0f + z * (1.0f - 2.0f * s));
}

// ---- workspace ----------------------------------------------------------------------------------
struct Dims {
  int64_t B, T, N;
  int H, D, F;
  int64_t C;                // chunk size
  int64_t ckpt_every;       // backward checkpoint interval (>= 1)
  bool has_initial_state, self_target;
};

// Offsets in bytes from the workspace start (every array 256-byte aligned). FD = F·D,
// SH = N·H, Cm = chunk_rows(T, C). "slab" = one [SH][FD] fp32 array.
struct Layout {
  bool ok;                  // false: the sizes overflow
  int64_t nc_bound;         // chunk indices the host loops over
  int64_t rows;             // Cm
  int64_t ckpt_every;       // min(checkpoint_every, nc_bound)
  int64_t n_ckpt, n_seg;    // backward: segments (= checkpointed chunk starts), segment slots
  size_t seq;               // int64 [N][kSeqEntry]
  size_t alpha;             // f32 [SH]  ᾱ of the current chunk
  // per-chunk fp32 buffers [SH][Cm][F] or [SH][Cm][D]
  size_t Z, Zx, Zv;         // pre-activations of keys, reads (x), targets (v; self_target)
  size_t Tg;                // [.][D] targets (self_target)
  size_t E;                 // [.][D] errors
  size_t Q1;                // [.][F] σ'(Z) ⊙ R [+ η Z]
  // backward only (0 in the forward layout)
  size_t R;                 // [.][F] Eη W2
  size_t dQ1, dR, dZ, dZv, dZx;  // [.][F]
  size_t dEeta, dE;         // [.][D]
  size_t work;              // 6 slabs: W1, W2, P1, P2, A1, A2 (the state being stepped)
  size_t work_ag;           // f32 [SH]
  size_t ckpt;              // [n_ckpt − 1][4 slabs: W1, W2, P1, P2] (the states at chunks
                            // k·ce, k >= 1; chunk 0 restarts from the initial state)
  size_t seg;               // [n_seg][2 slabs: W1, W2]
  size_t grad;              // 6 slabs: dW1, dW2, dP1, dP2, dA1 (= dG1), dA2 (= dG2)
  size_t dag, dsg;          // f32 [SH]: d a_g, dΣg of the current chunk
  size_t total;
};

// One plain function for the size query, the forward and the backward.
inline Layout make_layout(const Dims& d, bool backward) {
  Layout L{};
  L.ok = false;
  if (d.B < 1 || d.T < 1 || d.N < 1 || d.H < 1 || d.D < 1 || d.F < 1 || d.C < 1 ||
      d.ckpt_every < 1)
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
    if (!(bytes >= 0) || bytes + off > limit) {
      ok = false;
      return 0;
    }
    const size_t at = off;
    off = static_cast<size_t>(round_up(static_cast<int64_t>(off + static_cast<size_t>(bytes)),
                                       kWorkspaceAlign));
    return at;
  };
  const long double sh = static_cast<long double>(d.N) * d.H;
  const long double fd = static_cast<long double>(d.F) * d.D;
  const long double rf = sh * L.rows * d.F, rd = sh * L.rows * d.D;
  L.seq = take(static_cast<long double>(d.N) * kSeqEntry, 8);
  L.alpha = take(sh, 4);
  L.Z = take(rf, 4);
  L.Zx = take(rf, 4);
  L.Zv = take(d.self_target ? rf : 0, 4);
  L.Tg = take(d.self_target ? rd : 0, 4);
  L.E = take(rd, 4);
  L.Q1 = take(rf, 4);
  if (backward) {
    L.R = take(rf, 4);
    L.dQ1 = take(rf, 4);
    L.dR = take(rf, 4);
    L.dZ = take(rf, 4);
    L.dZv = take(d.self_target ? rf : 0, 4);
    L.dZx = take(rf, 4);
    L.dEeta = take(rd, 4);
    L.dE = take(rd, 4);
    L.work = take(6 * sh * fd, 4);
    L.work_ag = take(sh, 4);
    L.ckpt = take(static_cast<long double>(L.n_ckpt - 1) * 4 * sh * fd, 4);
    L.seg = take(static_cast<long double>(L.n_seg) * 2 * sh * fd, 4);
    L.grad = take(6 * sh * fd, 4);
    L.dag = take(sh, 4);
    L.dsg = take(sh, 4);
  }
  L.total = off;
  L.ok = ok;
  return L;
}

}  // namespace nlcore::memory_mlp

#endif  // NLCORE_CUDA_MEMORY_MLP_LAYOUT_H_
