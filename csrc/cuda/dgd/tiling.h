// DGD (DESIGN §3.1): index helpers, tiling constants, shared-memory sizes and the workspace
// layout shared by nlcore_dgd_workspace_size, the forward and the backward. Plain constexpr /
// __host__ __device__ so that tests/cpp checks it on a machine without a GPU (compiled there by
// g++, where NLCORE_DGD_HD is just `inline`).
//
// Kernel decomposition (the phases of the CPU twin csrc/cpu/dgd.cpp):
//   table   : chunk index -> (sequence, first token row, length), built on the device
//   prep    : per (chunk, value head): Gc/Gp, L = diag(a)(Γ ⊙ K Kᵀ), Wv = (I+L)⁻¹ diag(β) V,
//             Wk = (I+L)⁻¹ diag(c) K                                          (parallel)
//   state   : per (sequence, value head, V-tile): W = Wv − Wk S0 (written over Wv),
//             S_end = e_C S0 + Kᵀ diag(d) W; chunk-start states S0 stored        (sequential)
//   output  : per (chunk, value head): O = scale (diag(Dq) Q S0 + (M ⊙ Q Kᵀ) W) (parallel)
// backward: table, prep, state (recompute), then
//   bwd_pre : per (chunk, value head): dW_o = scale Pᵀ dO, dS0_o = scale Qᵀ diag(Dq) dO
//   bwd_state: per (sequence, value head, V-tile), chunks in reverse: dW = dW_o + diag(d) K dS
//             (over dW_o), dS ← dS0_o + e_C dS − Wkᵀ dW; dS at each chunk end stored over dS0_o;
//             the V-tile partial sums of dd and of Σ S0 ⊙ dS                    (sequential)
//   bwd_chunk: per (chunk, value head): every gradient (dU solve, dL, dP, gate gradients and
//             their reverse cumsums); dq/dk as per-value-head fp32 partials      (parallel)
//   fold    : dq/dk = Σ over the value heads of a q/k head (deterministic order), cast
#ifndef NLCORE_CUDA_DGD_TILING_H_
#define NLCORE_CUDA_DGD_TILING_H_

#include <stddef.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define NLCORE_DGD_HD __host__ __device__ __forceinline__
#else
#define NLCORE_DGD_HD inline
#endif

namespace nlcore::dgd {

constexpr int kChunk = 64;          // tokens per chunk (the only chunk size built)
constexpr int kThreads = 128;       // 4 warps; every chunk kernel
constexpr int kPanel = 64;          // output panel of the CTA GEMM: 64 rows x <= 64 columns
constexpr int kLd = kChunk + 4;     // fp32 row stride of a 64 x 64 shared matrix (bank-conflict pad)
constexpr int kStateVTile = 32;     // V columns of the state per sequential CTA
constexpr int kStatePad = 4;        // fp32 pad of the state tile rows
constexpr int kMaxHeadDim = 256;
constexpr int kTableThreads = 256;
constexpr size_t kWorkspaceAlign = 256;
constexpr size_t kSmemOptinSm80 = 166912;  // 163 KiB
constexpr size_t kSmemOptinSm90 = 232448;  // 227 KiB
constexpr int kChunkEntry = 4;      // int64 per chunk-table entry: seq, row0, len, index in seq
constexpr int kSeqEntry = 2;        // int64 per sequence: first chunk, number of chunks
constexpr int kMetaEntries = 4;     // int64: total chunks, covered rows [lo, hi), unused

NLCORE_DGD_HD constexpr int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }
NLCORE_DGD_HD constexpr int64_t round_up(int64_t x, int64_t m) { return ceil_div(x, m) * m; }

NLCORE_DGD_HD constexpr bool head_dim_ok(int d) {
  return d == 32 || d == 64 || d == 128 || d == 256;
}

// Chunks of one sequence of `len` tokens (0 for an empty sequence).
NLCORE_DGD_HD constexpr int64_t chunks_of_len(int64_t len, int64_t C) {
  return len <= 0 ? 0 : ceil_div(len, C);
}

// Host upper bound on the number of chunks: fixed length, B rows of T tokens:
// B * ceil(T / C); varlen (B == 1): Σ_n ceil(len_n / C) <= ceil(T / C) + N.
NLCORE_DGD_HD constexpr int64_t chunk_bound(int64_t B, int64_t T, int64_t N, int64_t C,
                                            bool varlen) {
  return varlen ? ceil_div(T, C) + N : B * ceil_div(T, C);
}

// V-tile of the sequential kernels and their number.
NLCORE_DGD_HD constexpr int state_vtile(int V) { return V < kStateVTile ? V : kStateVTile; }
NLCORE_DGD_HD constexpr int state_ntiles(int V) { return V / state_vtile(V); }

// ---- shared memory (bytes) ------------------------------------------------------------------
// Gate vectors of one chunk: beta, a, g, Gc, Gp, d, c, Dq, -c (9 x 64) + e_C and spare.
constexpr size_t kGateFloats = 9 * kChunk + 4;
constexpr size_t kGateBytes = kGateFloats * sizeof(float);
constexpr size_t kMat64Bytes = size_t(kChunk) * kLd * sizeof(float);  // one 64 x 64 fp32 matrix
constexpr size_t kReduceBytes = 64 * sizeof(float);

// output / bwd_pre: gates + one 64 x 64 fp32 matrix (static shared memory).
constexpr size_t kSmemChunk1 = kGateBytes + kMat64Bytes;
// Column-wise triangular solve tile: C rows x kThreads columns, fp32.
constexpr size_t kSolveTileBytes = size_t(kChunk) * kThreads * sizeof(float);
// prep: gates + L + the solve tile (dynamic).
constexpr size_t kSmemPrep = kGateBytes + kMat64Bytes + kSolveTileBytes;
// state / bwd_state: state tile K x (VT + pad) fp32 + a 64 x (VT + pad) fp32 tile + gates +
// reduction scratch.
NLCORE_DGD_HD constexpr size_t smem_state_bytes(int K, int V) {
  return (size_t(K) + kChunk) * (state_vtile(V) + kStatePad) * sizeof(float) + kGateBytes +
         kReduceBytes;
}
// bwd_chunk: gates + four 64 x 64 fp32 matrices + 10 row vectors of 64.
constexpr size_t kRowVecBytes = 10 * kChunk * sizeof(float);
constexpr size_t kSmemBwdChunk = kGateBytes + 4 * kMat64Bytes + kRowVecBytes;

static_assert(kSmemChunk1 <= 48 * 1024, "chunk kernels use static shared memory (<= 48 KiB)");
static_assert(smem_state_bytes(kMaxHeadDim, kMaxHeadDim) <= kSmemOptinSm80,
              "state kernels must fit sm_80's 163 KiB at K = V = 256");
static_assert(kSmemBwdChunk <= kSmemOptinSm80, "bwd_chunk must fit sm_80's 163 KiB");
static_assert(kSmemPrep <= kSmemOptinSm80, "prep must fit sm_80's 163 KiB");
static_assert(2 * kMat64Bytes >= kSolveTileBytes,
              "bwd_chunk solves in the QK + dP matrices: they must hold the solve tile");

// ---- workspace ------------------------------------------------------------------------------
struct Dims {
  int64_t B, T, N;
  int H, HV, K, V;
  bool varlen;
};

// Offsets in bytes from the workspace start (every array 256-byte aligned).
struct Layout {
  bool ok;              // false: the sizes overflow
  int64_t nc_bound;     // chunk slots (grid size of the chunk kernels)
  int vtile, ntiles;    // V-tiles of the sequential kernels
  size_t chunks;        // int64 [nc_bound][kChunkEntry]
  size_t seqs;          // int64 [N][kSeqEntry]
  size_t meta;          // int64 [kMetaEntries]
  size_t wv;            // f32 [nc_bound][HV][C][V]   Wv, then W (state kernel writes over it)
  size_t wk;            // f32 [nc_bound][HV][C][K]
  size_t s0;            // f32 [nc_bound][HV][K][V]   chunk-start states
  // backward only (0 in the forward layout)
  size_t dw;            // f32 [nc_bound][HV][C][V]   dW_o, then dW, then dU
  size_t ds;            // f32 [nc_bound][HV][K][V]   dS0_o, then dS at each chunk end
  size_t ddp;           // f32 [nc_bound][HV][ntiles][C]  partial dd
  size_t decp;          // f32 [nc_bound][HV][ntiles]     partial Σ S0 ⊙ dS_end
  size_t dqp;           // f32 [B*T][HV][K]           per-value-head dq
  size_t dkp;           // f32 [B*T][HV][K]           per-value-head dk
  size_t total;
};

// One plain function for the size query, the forward and the backward.
inline Layout make_layout(const Dims& d, bool backward) {
  Layout L{};
  L.ok = false;
  if (d.B < 1 || d.T < 1 || d.N < 1 || d.HV < 1 || d.K < 1 || d.V < 1) return L;
  const int64_t C = kChunk;
  L.nc_bound = chunk_bound(d.B, d.T, d.N, C, d.varlen);
  L.vtile = state_vtile(d.V);
  L.ntiles = state_ntiles(d.V);
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
  const long double nc = static_cast<long double>(L.nc_bound), hv = d.HV;
  L.chunks = take(nc * kChunkEntry, 8);
  L.seqs = take(static_cast<long double>(d.N) * kSeqEntry, 8);
  L.meta = take(kMetaEntries, 8);
  L.wv = take(nc * hv * C * d.V, 4);
  L.wk = take(nc * hv * C * d.K, 4);
  L.s0 = take(nc * hv * d.K * d.V, 4);
  if (backward) {
    L.dw = take(nc * hv * C * d.V, 4);
    L.ds = take(nc * hv * d.K * d.V, 4);
    L.ddp = take(nc * hv * L.ntiles * C, 4);
    L.decp = take(nc * hv * L.ntiles, 4);
    const long double rows = static_cast<long double>(d.B) * d.T;
    L.dqp = take(rows * hv * d.K, 4);
    L.dkp = take(rows * hv * d.K, 4);
  }
  L.total = off;
  L.ok = ok;
  return L;
}

}  // namespace nlcore::dgd

#endif  // NLCORE_CUDA_DGD_TILING_H_
