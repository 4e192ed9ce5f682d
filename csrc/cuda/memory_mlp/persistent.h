// MLP memory scan, step two of DESIGN §7 (NLCORE_MEMORY_MLP_FLAG_PERSISTENT, experimental,
// sm_90 only; forward only): the partition, shared-memory budget and fragment ownership of the
// persistent kernel (persistent.cuh). Plain constexpr / __host__ __device__ so that
// tests/cpp/test_memory_mlp_host.cpp checks every index map on a machine without a GPU.
//
// One thread-block cluster of c CTAs per (sequence, head) walks ALL chunks of its sequence in
// one launch; the fast weights never leave the chip between chunks. CTA r of the cluster owns
// the hidden units f in [r·Fc, (r + 1)·Fc), Fc = F / c:
//   W1 rows    W_in [f, :]   -> smem W1s [Fc][D]   fp32
//   W2 columns W_out[:, f]   -> smem W2s [D][Fc]   fp32
//   momentum P1, P2 slices   -> smem (always: with momentum 0 the update P = 0·P − G = −G
//                               is the CPU's too, and the largest slices fit either way)
//   the chunk's inner gradient slices G1 [Fc × D], G2 [D × Fc] -> REGISTERS (mma accumulator
//   fragments, accumulated over the chunk's token tiles; the open chunk's accumulators of an
//   initial state are loaded into them).
// Per token tile of kTok = 16 tokens (rows past the chunk's end are zero, η = 0 there):
//   S1  X, K, V tiles and η, g -> smem (fp32)
//   S2  Zx, Z, Zv = (X, K, V) W1sᵀ [16 × Fc]; Hx = σ(Zx), Hk = σ(Z), Hv = σ(Zv)
//   S3  partial sums over my hidden units, [16 × D] each:
//         Yp = Hx W2sᵀ,   Ep = ["l2": Hk W2sᵀ] − [self_target: Hv W2sᵀ]
//       into a double-buffered slot (tile parity); cluster barrier (release / acquire)
//   S4  every CTA sums Ep over the cluster in rank order (distributed shared memory; the same
//       fp32 order everywhere, so every CTA holds a bit-identical E) plus the residual / target
//       terms; CTA r sums Yp for output columns [r·D/c, (r + 1)·D/c) and writes y
//   S5  R = (ηE) W2s [16 × Fc];  Q1 = σ'(Z) ⊙ R [+ η Z]
//   S6  G1 += Q1ᵀ K,  G2 += (ηE)ᵀ Hk   (register fragments)
// At a complete chunk's end: ᾱ = exp(a_g + Σg), P ← μ P − G, W ← ᾱ W + P, G ← 0 — each element
// by the thread that holds its G fragment; no cluster communication. The double-buffered
// partials need one cluster barrier per tile: tile t + 1's barrier follows every CTA's reads of
// tile t's slot, so tile t + 2 may overwrite it. A last cluster barrier keeps every CTA's shared
// memory alive until its peers' reads are done.
// Precision is the step-one contract: bf16 / fp16 round every GEMM operand (weights, σ values,
// η·E, Q1) to the input dtype for mma.sync m16n8k16 with fp32 accumulation; fp32 runs FMAs in
// the same fragment layout (never TF32).
#ifndef NLCORE_CUDA_MEMORY_MLP_PERSISTENT_H_
#define NLCORE_CUDA_MEMORY_MLP_PERSISTENT_H_

#include <stddef.h>
#include <stdint.h>

#include "memory_mlp/layout.h"

namespace nlcore::memory_mlp::persist {

constexpr int kThreads = 256;                // 8 warps per CTA
constexpr int kWarps = kThreads / 32;
constexpr int kTok = 16;                     // token rows per tile (one mma k16 step for G)
constexpr int kPad = 4;                      // fp32 padding of every smem row (16-byte rows)
constexpr int kMaxSlice = 8192;              // Fc·D floats per CTA: G1 + G2 = 64 regs / thread
constexpr int kMaxCluster = 8;               // portable cluster size
constexpr size_t kSmemLimit = 232448;        // sm_90: 227 KiB dynamic smem per block (opt-in)

// ---- the cluster split -------------------------------------------------------------------------
// Smallest c in {1, 2, 4, 8} that divides F into slices of a multiple of 16 hidden units with
// Fc·D <= kMaxSlice; 0 if none (then the flag falls back to step one). For D in {32, 64, 128},
// F in {D, 2D, 4D}: D = 32 -> c = 1; D = 64 -> c = 1 (F <= 128), 2 (F = 256);
// D = 128 -> c = 2, 4, 8 for F = 128, 256, 512.
NLCORE_MLP_HD constexpr int cluster_for(int D, int F) {
  if (D < 16 || D % 16 != 0 || F < 16) return 0;
  for (int c = 1; c <= kMaxCluster; c *= 2) {
    if (F % c != 0) return 0;
    const int fc = F / c;
    if (fc % 16 != 0) return 0;
    if (int64_t(fc) * D <= kMaxSlice) return c;
  }
  return 0;
}

// The (D, Fc) slice shapes the kernel is instantiated for (template arguments): exactly the
// shapes cluster_for produces for the supported D and F.
NLCORE_MLP_HD constexpr bool slice_built(int D, int fc) {
  return (D == 32 && (fc == 32 || fc == 64 || fc == 128)) ||
         (D == 64 && (fc == 64 || fc == 128)) || (D == 128 && fc == 64);
}

// Output columns [d0, d0 + count) of y that cluster rank `rank` of `c` sums and writes.
struct ColRange {
  int d0, count;
};
NLCORE_MLP_HD constexpr ColRange y_cols(int D, int c, int rank) {
  return ColRange{rank * (D / c), D / c};
}

// ---- shared memory (fp32 offsets; every array starts 16-byte aligned) --------------------------
// Order: weights, token tiles, partial slots, momentum buffers.
struct Smem {
  int ldw1, ldw2, ldd, ldf;   // row strides: W1s [Fc][ldw1], W2s [D][ldw2], tiles [kTok][ldd|ldf]
  size_t w1, w2;              // W1s, W2s
  size_t x, k, v;             // token tiles [kTok][ldd]
  size_t eta, g;              // [kTok]
  size_t zk, hk, hx, hv;      // [kTok][ldf]: Z, σ(Z), σ(Zx) (then Q1), σ(Zv)
  size_t yp, ep;              // partial slots [2][kTok][ldd]: read by the cluster peers
  size_t e;                   // E [kTok][ldd]
  size_t p1, p2;              // momentum slices P1s [Fc][ldw1], P2s [D][ldw2]
  size_t floats;              // total
};

NLCORE_MLP_HD constexpr size_t align4(size_t n) { return (n + 3) / 4 * 4; }

NLCORE_MLP_HD constexpr Smem smem_layout(int D, int fc) {
  Smem s{};
  s.ldw1 = D + kPad;
  s.ldw2 = fc + kPad;
  s.ldd = D + kPad;
  s.ldf = fc + kPad;
  size_t o = 0;
  s.w1 = o; o = align4(o + size_t(fc) * s.ldw1);
  s.w2 = o; o = align4(o + size_t(D) * s.ldw2);
  s.x = o; o = align4(o + size_t(kTok) * s.ldd);
  s.k = o; o = align4(o + size_t(kTok) * s.ldd);
  s.v = o; o = align4(o + size_t(kTok) * s.ldd);
  s.eta = o; o = align4(o + kTok);
  s.g = o; o = align4(o + kTok);
  s.zk = o; o = align4(o + size_t(kTok) * s.ldf);
  s.hk = o; o = align4(o + size_t(kTok) * s.ldf);
  s.hx = o; o = align4(o + size_t(kTok) * s.ldf);
  s.hv = o; o = align4(o + size_t(kTok) * s.ldf);
  s.yp = o; o = align4(o + 2 * size_t(kTok) * s.ldd);
  s.ep = o; o = align4(o + 2 * size_t(kTok) * s.ldd);
  s.e = o; o = align4(o + size_t(kTok) * s.ldd);
  s.p1 = o; o = align4(o + size_t(fc) * s.ldw1);
  s.p2 = o; o = align4(o + size_t(D) * s.ldw2);
  s.floats = o;
  return s;
}

NLCORE_MLP_HD constexpr size_t smem_bytes(int D, int fc) {
  return smem_layout(D, fc).floats * sizeof(float);
}

// ---- register fragments of G1 [Fc × D] and G2 [D × Fc] ----------------------------------------
// Both products are split into m16n8 tiles; tile t (row-major over the tile grid) belongs to
// warp t % kWarps as its fragment i = t / kWarps; each lane holds 4 elements (the mma
// C-fragment: e = 0, 1 at row lane / 4, e = 2, 3 eight rows below; columns 2 (lane % 4) + e % 2).
// frag_tile writes t / nblk and t % nblk (nblk = cols / 8 tile columns, a power of two) so that
// the fragment index i (unrolled, compile time) and the warp (run time) enter separately: the
// kernel's addresses become one per-thread base plus immediates.
NLCORE_MLP_HD constexpr int frag_tiles(int rows, int cols) { return (rows / 16) * (cols / 8); }
NLCORE_MLP_HD constexpr int frags_per_warp(int rows, int cols) {
  return frag_tiles(rows, cols) / kWarps;
}
NLCORE_MLP_HD constexpr bool frags_even(int rows, int cols) {
  const int nblk = cols / 8;
  return rows % 16 == 0 && cols % 8 == 0 && frag_tiles(rows, cols) % kWarps == 0 &&
         (nblk >= kWarps ? nblk % kWarps == 0 : kWarps % nblk == 0);
}
struct TileRC {
  int r0, c0;   // the m16n8 tile's first row and column
};
NLCORE_MLP_HD constexpr TileRC frag_tile(int cols, int warp, int i) {
  const int nblk = cols / 8;
  if (nblk >= kWarps) {  // a tile row holds nblk / kWarps fragments of every warp
    const int per_row = nblk / kWarps;
    return TileRC{16 * (i / per_row), 8 * ((i % per_row) * kWarps + warp)};
  }
  const int rows_per = kWarps / nblk;  // kWarps / nblk tile rows per fragment index
  return TileRC{16 * (i * rows_per + warp / nblk), 8 * (warp % nblk)};
}
// The plain form of the same map (tile t = warp + kWarps·i, row-major), for the host tests.
NLCORE_MLP_HD constexpr TileRC frag_tile_ref(int cols, int warp, int i) {
  const int t = warp + kWarps * i, nblk = cols / 8;
  return TileRC{16 * (t / nblk), 8 * (t % nblk)};
}
struct ElemRC {
  int r, c;
};
NLCORE_MLP_HD constexpr ElemRC frag_elem(int cols, int warp, int i, int lane, int e) {
  const TileRC t = frag_tile(cols, warp, i);
  return ElemRC{t.r0 + (lane >> 2) + ((e >> 1) << 3), t.c0 + 2 * (lane & 3) + (e & 1)};
}

// Everything the host needs to launch (or to decide not to).
struct Config {
  int cluster;        // CTAs per (sequence, head); 0: the persistent kernel cannot take it
  int fc;             // hidden units per CTA
  size_t smem;        // dynamic shared memory per CTA
  const char* why;    // static text when cluster == 0
};
NLCORE_MLP_HD constexpr Config config_for(int D, int F) {
  const int c = cluster_for(D, F);
  if (c == 0) return Config{0, 0, 0, "no split of hidden_dim over <= 8 CTAs fits the slice budget"};
  if (!slice_built(D, F / c)) return Config{0, 0, 0, "no persistent kernel for this (D, F) slice"};
  const size_t smem = smem_bytes(D, F / c);
  if (smem > kSmemLimit) return Config{0, 0, 0, "the slice exceeds 227 KiB of shared memory"};
  return Config{c, F / c, smem, ""};
}

// Compile-time checks of every instantiated slice: shared memory within
// sm_90's per-block limit, G fragments evenly split over the warps, a small register tile.
constexpr bool slice_fits(int D, int fc) {
  return smem_bytes(D, fc) <= kSmemLimit && frags_even(fc, D) && frags_even(D, fc) &&
         frags_per_warp(fc, D) == frags_per_warp(D, fc) && int64_t(fc) * D <= kMaxSlice &&
         D % 16 == 0 && fc % 16 == 0 && 2 * 4 * frags_per_warp(fc, D) <= 64;
}
static_assert(slice_fits(32, 32) && slice_fits(32, 64) && slice_fits(32, 128) &&
                  slice_fits(64, 64) && slice_fits(64, 128) && slice_fits(128, 64),
              "a persistent MLP-scan slice exceeds its shared-memory or register budget");
static_assert(smem_bytes(128, 64) == 222336 && smem_bytes(64, 128) == 205952,
              "the largest slices: 217 KiB and 201 KiB of sm_90's 227 KiB");
static_assert(kThreads == 256 && kTok == 16, "S6 runs one k16 mma step per tile on 8 warps");

}  // namespace nlcore::memory_mlp::persist

#endif  // NLCORE_CUDA_MEMORY_MLP_PERSISTENT_H_
