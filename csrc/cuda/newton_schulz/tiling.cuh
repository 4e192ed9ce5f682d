// Newton–Schulz: tiling, shared-memory layout, fragment index maps and workspace layout.
// Everything here is plain constexpr / __host__ __device__ so that tests/cpp can check it
// on a machine without a GPU (compiled there by g++, where NLCORE_HD is just `inline`).
//
// Paths and the flags that reach them (api.cpp chooses; NLCORE_NS_FLAG_*):
//   small   (path 0): one block per matrix, min <= 128, max <= 256, bf16/fp16 compute.
//                     SYMMETRIC: only the upper 32x32 tiles of A and B, mirrored on chip.
//   general (path 1): batched CUTLASS GEMMs on a padded workspace, any size.
//                     SYMMETRIC (bf16/fp16 compute): A = X X^T and B = c A A + b A run
//                     on the upper-triangle threadblock tiles only (upper_tile_coords
//                     below), then mirror_upper_to_lower copies them bit-exactly below
//                     the diagonal; B X stays a full GEMM.
//   cluster (path 2): NLCORE_NS_FLAG_CLUSTER only (experimental, sm_90a): a 2-CTA cluster
//                     per matrix, 128 < min <= 256, max <= 256, every step on chip; each
//                     CTA owns half of the rows of X, A and B (ClusterGeometry below).
#ifndef NLCORE_CUDA_NEWTON_SCHULZ_TILING_CUH_
#define NLCORE_CUDA_NEWTON_SCHULZ_TILING_CUH_

#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <string.h>

#if defined(__CUDACC__)
#define NLCORE_HD __host__ __device__ __forceinline__
#else
#define NLCORE_HD inline
#endif

namespace nlcore::ns {

// ---------------------------------------------------------------- small (on-chip) path ----
// One thread block per matrix; X (m_pad x n_pad), A and B (m_pad x m_pad) live in shared
// memory in the compute dtype (2 bytes), rows padded by kSmallRowPad elements (16 bytes) so
// that ldmatrix row addresses of a warp fall in distinct bank groups.
constexpr int kSmallMaxM = 128;       // min(rows, cols) limit
constexpr int kSmallMaxN = 256;       // max(rows, cols) limit (shared-memory budget, sm_80)
constexpr int kSmallThreads = 256;    // 8 warps
constexpr int kSmallWarps = kSmallThreads / 32;
constexpr int kSmallRowPad = 8;       // elements
constexpr int kSmallTileAB = 32;      // A and B are computed in 32x32 warp tiles
constexpr int kSmallStripX = 16;      // X is updated in 16-column strips, all rows per warp
constexpr int kSmallMaxRowBlocks = kSmallMaxM / 16;  // 16-row mma blocks of a strip
constexpr int kSmallMaxRuns = 64;     // coefficient runs carried in the kernel parameters
constexpr size_t kSmemOptinSm80 = 166912;  // 163 KiB: per-block opt-in limit of sm_80
constexpr size_t kSmemOptinSm90 = 232448;  // 227 KiB: per-block opt-in limit of sm_90
constexpr size_t kSmallReduceBytes = 64 * sizeof(float);  // block_sum needs 33 floats

NLCORE_HD constexpr int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
NLCORE_HD constexpr int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }

struct SmallGeometry {
  int m, n;          // X is m x n, m <= n
  int m_pad, n_pad;  // m rounded up to 32 (A/B warp tiles), n rounded up to 16 (k steps)
  int ldx, lda;      // shared-memory row strides (elements) of X and of A/B
};

NLCORE_HD constexpr SmallGeometry small_geometry(int m, int n) {
  const int m_pad = static_cast<int>(round_up(m, kSmallTileAB));
  const int n_pad = static_cast<int>(round_up(n, 16));
  return SmallGeometry{m, n, m_pad, n_pad, n_pad + kSmallRowPad, m_pad + kSmallRowPad};
}
// Element offsets of the three shared-memory arrays and the total bytes (elem = 2).
NLCORE_HD constexpr size_t small_x_elems(const SmallGeometry& g) {
  return static_cast<size_t>(g.m_pad) * g.ldx;
}
NLCORE_HD constexpr size_t small_a_elems(const SmallGeometry& g) {
  return static_cast<size_t>(g.m_pad) * g.lda;
}
NLCORE_HD constexpr size_t small_smem_bytes(const SmallGeometry& g, size_t elem_bytes) {
  return (small_x_elems(g) + 2 * small_a_elems(g)) * elem_bytes + kSmallReduceBytes;
}
// Worst case at the limits must fit the smaller (sm_80) opt-in limit.
static_assert(small_smem_bytes(small_geometry(kSmallMaxM, kSmallMaxN), 2) <= kSmemOptinSm80,
              "small Newton-Schulz kernel: shared memory at the size limits exceeds sm_80's");
static_assert(kSmallReduceBytes >= 33 * sizeof(float), "block_sum scratch needs 33 floats");
static_assert((kSmallMaxN + kSmallRowPad) * 2 % 16 == 0 && (kSmallMaxM + kSmallRowPad) * 2 % 16 == 0,
              "shared-memory rows must stay 16-byte aligned for ldmatrix");
static_assert(kSmallMaxM % kSmallTileAB == 0 && kSmallMaxRowBlocks <= 8,
              "X-update strip accumulators are sized for at most 8 row blocks (64 fp32 regs)");

NLCORE_HD constexpr bool small_shape_ok(int64_t m, int64_t n) {
  return m >= 1 && n >= m && m <= kSmallMaxM && n <= kSmallMaxN;
}

// Number of 32x32 tiles of A (or B) a step computes: all of them, or the upper triangle.
NLCORE_HD constexpr int small_ab_tiles(int m_pad, bool symmetric) {
  const int t = m_pad / kSmallTileAB;
  return symmetric ? t * (t + 1) / 2 : t * t;
}
// Tile index -> (ti, tj); with `symmetric` enumerates ti <= tj row by row.
NLCORE_HD void small_ab_tile_coords(int idx, int m_pad, bool symmetric, int* ti, int* tj) {
  const int t = m_pad / kSmallTileAB;
  if (!symmetric) {
    *ti = idx / t;
    *tj = idx - (idx / t) * t;
    return;
  }
  int row = 0;
  while (idx >= t - row) {
    idx -= t - row;
    ++row;
  }
  *ti = row;
  *tj = row + idx;
}

// ----- mma.m16n8k16 / ldmatrix index maps (lane = 0..31) -----
struct RowCol {
  int r, c;
};
// ldmatrix.x4 (no .trans) row address of `lane` for a 16x16 A-operand tile stored row-major
// (row = M index, col = K index): matrices (rows 0-7|8-15) x (cols 0-7|8-15) in the order
// of the a0..a3 fragment registers.
NLCORE_HD constexpr RowCol ldsm_a_x4(int lane) { return RowCol{lane % 16, (lane / 16) * 8}; }
// ldmatrix.x4 (no .trans) for the B operand of two n8 blocks stored "N x K" row-major
// (row = N index, col = K index). Registers: b0,b1 of n-block 0, then b0,b1 of n-block 1.
NLCORE_HD constexpr RowCol ldsm_b_nk_x4(int lane) {
  return RowCol{(lane % 8) + ((lane / 8) >> 1) * 8, ((lane / 8) & 1) * 8};
}
// ldmatrix.x4.trans for the B operand of two n8 blocks stored "K x N" row-major
// (row = K index, col = N index). Same register order as ldsm_b_nk_x4.
NLCORE_HD constexpr RowCol ldsm_b_kn_x4_trans(int lane) {
  return RowCol{(lane % 8) + ((lane / 8) & 1) * 8, ((lane / 8) >> 1) * 8};
}
// Position in the 16x8 accumulator tile of register i (0..3) of `lane`.
NLCORE_HD constexpr RowCol mma_acc_pos(int lane, int i) {
  return RowCol{lane / 4 + (i >= 2 ? 8 : 0), (lane % 4) * 2 + (i & 1)};
}

// ----- coefficients, run-length encoded for the kernel parameters -----
struct SmallCoefs {
  int n_runs;
  int run_len[kSmallMaxRuns];
  float a[kSmallMaxRuns], b[kSmallMaxRuns], c[kSmallMaxRuns];
};

inline bool same_bits(float x, float y) {
  uint32_t ux, uy;
  memcpy(&ux, &x, sizeof(ux));
  memcpy(&uy, &y, sizeof(uy));
  return ux == uy;
}
// Number of maximal runs of bit-identical (a, b, c) triples in coef[steps][3].
inline int coefficient_runs(const float* coef, int steps) {
  int runs = 0;
  for (int s = 0; s < steps; ++s) {
    if (s == 0 || !same_bits(coef[3 * s], coef[3 * s - 3]) ||
        !same_bits(coef[3 * s + 1], coef[3 * s - 2]) || !same_bits(coef[3 * s + 2], coef[3 * s - 1]))
      ++runs;
  }
  return runs;
}
// Fills `out`; returns false when there are more than kSmallMaxRuns runs.
inline bool encode_coefficient_runs(const float* coef, int steps, SmallCoefs* out) {
  if (coefficient_runs(coef, steps) > kSmallMaxRuns) return false;
  *out = SmallCoefs{};
  int r = -1;
  for (int s = 0; s < steps; ++s) {
    if (r < 0 || !same_bits(coef[3 * s], out->a[r]) || !same_bits(coef[3 * s + 1], out->b[r]) ||
        !same_bits(coef[3 * s + 2], out->c[r])) {
      ++r;
      out->a[r] = coef[3 * s];
      out->b[r] = coef[3 * s + 1];
      out->c[r] = coef[3 * s + 2];
      out->run_len[r] = 0;
    }
    ++out->run_len[r];
  }
  out->n_runs = r + 1;
  return true;
}

// ------------------------------------------------- upper-triangle tile enumeration ----------
// The tiles (ti, tj) of a t x t tile grid with ti <= tj, numbered row by row:
//   idx 0 .. t-1 -> (0, 0) .. (0, t-1); idx t .. 2t-2 -> (1, 1) .. (1, t-1); ...
// Row i starts at upper_row_start(i, t) = i t - i (i - 1) / 2. Used by the symmetric GEMM
// swizzle (one CTA per upper tile) and by the mirror kernel (tile (ti, tj) -> (tj, ti)).
NLCORE_HD constexpr int64_t upper_tile_count(int64_t t) { return t * (t + 1) / 2; }
NLCORE_HD constexpr int64_t upper_row_start(int64_t i, int64_t t) { return i * t - i * (i - 1) / 2; }
// idx in [0, upper_tile_count(t)) -> (ti, tj), 0 <= ti <= tj < t. A float estimate of the
// row, then exact integer corrections (so the result never depends on sqrt's rounding).
NLCORE_HD void upper_tile_coords(int64_t idx, int64_t t, int* ti, int* tj) {
  const float b = 2.0f * static_cast<float>(t) + 1.0f;
  float disc = b * b - 8.0f * static_cast<float>(idx);
  if (disc < 0.0f) disc = 0.0f;
  int64_t i = static_cast<int64_t>((b - sqrtf(disc)) * 0.5f);
  if (i < 0) i = 0;
  if (i > t - 1) i = t - 1;
  while (i > 0 && upper_row_start(i, t) > idx) --i;
  while (i + 1 < t && upper_row_start(i + 1, t) <= idx) ++i;
  *ti = static_cast<int>(i);
  *tj = static_cast<int>(i + (idx - upper_row_start(i, t)));
}

// ---------------------------------------------------------------- cluster path (sm_90a) ----
// A 2-CTA thread-block cluster per matrix for 128 < m <= 256, n <= 256 (m = min dimension).
// m and n are padded to multiples of 64 (zero padding is exact); CTA r owns rows
// [r h, (r + 1) h) of X, A and B, h = m_pad / 2 (96 or 128, a multiple of 32). Three
// row-half buffers of h x ld elements rotate through the roles X / A / B (ld = n_pad + 8,
// n_pad >= m_pad), plus a double-buffered staging area for 32-row chunks of the peer CTA's
// operands (read through distributed shared memory, then ldmatrix'ed locally), plus the
// reduction scratch.
constexpr int kClusterMinM = kSmallMaxM + 1;  // 129
constexpr int kClusterMaxM = 256;
constexpr int kClusterMaxN = 256;
constexpr int kClusterThreads = 256;          // 8 warps per CTA
constexpr int kClusterPad = 64;
constexpr int kClusterChunkK = 32;            // rows of a staged peer chunk
constexpr int kClusterPassN = 128;            // output columns per pass (4 x 2 warps of 32 x 64)
constexpr int kClusterStageLd = kClusterPassN + kSmallRowPad;

struct ClusterGeometry {
  int m, n;          // X is m x n, m <= n
  int m_pad, n_pad;  // multiples of 64, n_pad >= m_pad
  int half;          // rows per CTA = m_pad / 2
  int ld;            // row stride (elements) of the three row-half buffers
};

NLCORE_HD constexpr bool cluster_shape_ok(int64_t m, int64_t n) {
  return m >= kClusterMinM && n >= m && m <= kClusterMaxM && n <= kClusterMaxN;
}
NLCORE_HD constexpr ClusterGeometry cluster_geometry(int m, int n) {
  const int m_pad = static_cast<int>(round_up(m, kClusterPad));
  const int n_pad = static_cast<int>(round_up(n, kClusterPad));
  return ClusterGeometry{m, n, m_pad, n_pad, m_pad / 2, n_pad + kSmallRowPad};
}
NLCORE_HD constexpr size_t cluster_buffer_elems(const ClusterGeometry& g) {
  return static_cast<size_t>(g.half) * g.ld;
}
NLCORE_HD constexpr size_t cluster_stage_elems() {
  return static_cast<size_t>(2) * kClusterChunkK * kClusterStageLd;
}
// Bytes per CTA: 3 row-half buffers + 2 staging chunks (elem = 2) + reduction scratch.
NLCORE_HD constexpr size_t cluster_smem_bytes(const ClusterGeometry& g, size_t elem_bytes) {
  return (3 * cluster_buffer_elems(g) + cluster_stage_elems()) * elem_bytes + kSmallReduceBytes;
}
static_assert(cluster_smem_bytes(cluster_geometry(kClusterMaxM, kClusterMaxN), 2) <= kSmemOptinSm90,
              "cluster Newton-Schulz kernel: shared memory at the size limits exceeds sm_90's 227 KiB");
static_assert(cluster_geometry(kClusterMinM, kClusterMinM).half % 32 == 0 &&
                  cluster_geometry(kClusterMaxM, kClusterMaxN).half % 32 == 0,
              "cluster row halves must be whole 32-row warp tiles");
static_assert(cluster_geometry(kClusterMaxM, kClusterMaxN).half <= 4 * 32 && kClusterPassN == 2 * 64,
              "cluster passes are laid out as 4 x 2 warps of 32 x 64 (at most 128 rows per CTA)");
static_assert(kClusterThreads == 256 && kClusterChunkK % 16 == 0 &&
                  (kClusterChunkK * kClusterPassN / 8) % kClusterThreads == 0,
              "a staged chunk is copied in whole 16-byte vectors by every thread");
static_assert((kClusterMaxN + kSmallRowPad) * 2 % 16 == 0 && kClusterStageLd * 2 % 16 == 0,
              "cluster shared-memory rows must stay 16-byte aligned for ldmatrix and 16-byte copies");

// ---------------------------------------------------------------- general (GEMM) path -----
// GEMM dimensions are padded to multiples of 8 (128-bit CUTLASS accesses for 16-bit types);
// the padding is zero in the workspace, which leaves every product exact.
constexpr int64_t kGemmPad = 8;
constexpr int64_t kGemmTileMN = 128;  // threadblock tile M = N of the GEMMs (gemm.cuh)
constexpr size_t kWorkspaceAlign = 256;
constexpr int kNormChunkElems = 16384;  // elements per partial sum of the norm
constexpr int kNormMaxChunks = 64;
constexpr int kGemmMaxBatchPerLaunch = 65535;  // gridDim.z

struct GeneralLayout {
  int64_t m, n;      // X is m x n (m <= n)
  int64_t m_p, n_p;  // padded GEMM dimensions
  int chunks;        // partial sums of the norm per matrix
  size_t elem;       // bytes per compute element
  size_t off_x0, off_x1, off_a, off_b, off_partials;  // byte offsets, 256-aligned
  size_t total;      // bytes
  bool ok;           // false on size_t overflow
};

inline size_t align_bytes(size_t x) { return (x + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }

// Plain C++ (host) layout shared by workspace_size() and forward().
inline GeneralLayout general_layout(int64_t batch, int64_t m, int64_t n, size_t elem_bytes) {
  GeneralLayout L{};
  L.m = m;
  L.n = n;
  L.m_p = round_up(m, kGemmPad);
  L.n_p = round_up(n, kGemmPad);
  L.elem = elem_bytes;
  const int64_t numel = m * n;
  int64_t ch = ceil_div(numel, kNormChunkElems);
  L.chunks = static_cast<int>(ch < 1 ? 1 : (ch > kNormMaxChunks ? kNormMaxChunks : ch));
  // Overflow-safe in long double, then exact in size_t.
  const long double x_bytes = (long double)batch * L.m_p * L.n_p * elem_bytes;
  const long double a_bytes = (long double)batch * L.m_p * L.m_p * elem_bytes;
  const long double p_bytes = (long double)batch * L.chunks * sizeof(float);
  const long double total = 2 * x_bytes + 2 * a_bytes + p_bytes + 5.0L * kWorkspaceAlign;
  if (total > (long double)(SIZE_MAX / 2)) {
    L.ok = false;
    return L;
  }
  const size_t xb = static_cast<size_t>(batch) * L.m_p * L.n_p * elem_bytes;
  const size_t ab = static_cast<size_t>(batch) * L.m_p * L.m_p * elem_bytes;
  const size_t pb = static_cast<size_t>(batch) * L.chunks * sizeof(float);
  L.off_x0 = 0;
  L.off_x1 = align_bytes(L.off_x0 + xb);
  L.off_a = align_bytes(L.off_x1 + xb);
  L.off_b = align_bytes(L.off_a + ab);
  L.off_partials = align_bytes(L.off_b + ab);
  L.total = align_bytes(L.off_partials + pb);
  L.ok = true;
  return L;
}

}  // namespace nlcore::ns

#endif  // NLCORE_CUDA_NEWTON_SCHULZ_TILING_CUH_
