// The MLP memory's chunk step and its backward (cpu/mlp_chunk.h); the math is written out in
// cpu/memory_mlp.h.
#include "cpu/mlp_chunk.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/simd.h"

namespace nlcore::cpu::mlp {
namespace {

// ⟨a, b⟩ in independent lanes (a plain FP reduction does not vectorize without -ffast-math).
template <typename T>
inline T dot_lanes(const T* __restrict a, const T* __restrict b, int64_t n) {
  constexpr int kLanes = 16;
  T acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += a[j + l] * b[j + l];
  T sum = 0;
  for (; j < n; ++j) sum += a[j] * b[j];
  for (int l = 0; l < kLanes; ++l) sum += acc[l];
  return sum;
}

// The end-of-chunk update of one weight block [m, n] in one pass:
//   G = [G0 +] Σ_t L_t ⊗ Rt_t  (L [len, m], Rt [len, n]),  P' = μ P − G,  W' = α W + P'.
// Po doubles as G's scratch row. P may be null (zero momentum buffer or μ = 0).
template <typename T>
inline void update_block(const T* __restrict W, const T* __restrict P, const T* __restrict G0,
                         const T* __restrict L, const T* __restrict Rt, int64_t len, int64_t m,
                         int64_t n, T alpha, T mu, T* __restrict Wo, T* __restrict Po) {
  for (int64_t i = 0; i < m; ++i) {
    T* po = Po + i * n;
    T* wo = Wo + i * n;
    const T* w = W + i * n;
    if (G0) {
      const T* g0 = G0 + i * n;
      for (int64_t j = 0; j < n; ++j) po[j] = g0[j];
    } else {
      for (int64_t j = 0; j < n; ++j) po[j] = T(0);
    }
    for (int64_t t = 0; t < len; ++t) {
      const T li = L[t * m + i];
      const T* r = Rt + t * n;
      for (int64_t j = 0; j < n; ++j) po[j] += li * r[j];
    }
    if (P) {
      const T* pp = P + i * n;
      for (int64_t j = 0; j < n; ++j) po[j] = mu * pp[j] - po[j];
    } else {
      for (int64_t j = 0; j < n; ++j) po[j] = -po[j];
    }
    for (int64_t j = 0; j < n; ++j) wo[j] = alpha * w[j] + po[j];
  }
}
NLCORE_CPU_CLONES void update_block_f32(const float* W, const float* P, const float* G0,
                                        const float* L, const float* Rt, int64_t len, int64_t m,
                                        int64_t n, float alpha, float mu, float* Wo, float* Po) {
  update_block<float>(W, P, G0, L, Rt, len, m, n, alpha, mu, Wo, Po);
}
NLCORE_CPU_CLONES void update_block_f64(const double* W, const double* P, const double* G0,
                                        const double* L, const double* Rt, int64_t len, int64_t m,
                                        int64_t n, double alpha, double mu, double* Wo,
                                        double* Po) {
  update_block<double>(W, P, G0, L, Rt, len, m, n, alpha, mu, Wo, Po);
}

// The state part of a complete chunk's backward for one weight block, in one pass:
//   S = gP + gW,  dG = −S,  gP_start = μ S,  gW_start = α gW,  returns ⟨gW, W⟩.
// gP may be null (zero); gPs is not written when null.
template <typename T>
inline double state_back_block(const T* __restrict gW, const T* __restrict gP,
                               const T* __restrict W, int64_t size, T alpha, T mu,
                               T* __restrict dG, T* __restrict gPs, T* __restrict gWs) {
  for (int64_t j = 0; j < size; ++j) {
    const T gw = gW[j];
    const T s = gP ? gP[j] + gw : gw;
    dG[j] = -s;
    gWs[j] = alpha * gw;
  }
  if (gPs)
    for (int64_t j = 0; j < size; ++j) gPs[j] = -mu * dG[j];
  // ⟨gW, W⟩ in kLanes independent partial sums (a plain FP reduction does not vectorize
  // without -ffast-math), added up in double at the end
  constexpr int kLanes = 16;
  T acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= size; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += gW[j + l] * W[j + l];
  double dot = 0;
  for (; j < size; ++j) dot += static_cast<double>(gW[j]) * W[j];
  for (int l = 0; l < kLanes; ++l) dot += acc[l];
  return dot;
}
NLCORE_CPU_CLONES double state_back_block_f32(const float* gW, const float* gP, const float* W,
                                              int64_t size, float alpha, float mu, float* dG,
                                              float* gPs, float* gWs) {
  return state_back_block<float>(gW, gP, W, size, alpha, mu, dG, gPs, gWs);
}
NLCORE_CPU_CLONES double state_back_block_f64(const double* gW, const double* gP,
                                              const double* W, int64_t size, double alpha,
                                              double mu, double* dG, double* gPs,
                                              double* gWs) {
  return state_back_block<double>(gW, gP, W, size, alpha, mu, dG, gPs, gWs);
}

// state_back_block plus the two products of the chunk's inner-gradient backward that read dG
// (for small chunks, where they are matrix-vector products): with dG [m, n] formed row by row,
//   o1[t, i] = Σ_j A[t, j] dG[i, j]      (A [len, n])
//   o2[t, j] = Σ_i V[t, i] dG[i, j]      (V [len, m])
// so dG is read once, while in cache. o1, o2 are written (not accumulated).
template <typename T>
inline double state_back_gemv_block(const T* __restrict gW, const T* __restrict gP,
                                    const T* __restrict W, int64_t m, int64_t n, T alpha, T mu,
                                    const T* __restrict A, const T* __restrict V, int64_t len,
                                    T* __restrict dG, T* __restrict gPs, T* __restrict gWs,
                                    T* __restrict o1, T* __restrict o2) {
  for (int64_t x = 0; x < len * n; ++x) o2[x] = T(0);
  double dot = 0;
  for (int64_t i = 0; i < m; ++i) {
    const int64_t r = i * n;
    dot += state_back_block<T>(gW + r, gP ? gP + r : nullptr, W + r, n, alpha, mu, dG + r,
                               gPs ? gPs + r : nullptr, gWs + r);
    const T* g = dG + r;
    for (int64_t t = 0; t < len; ++t) {
      o1[t * m + i] = dot_lanes(A + t * n, g, n);
      const T v = V[t * m + i];
      T* out = o2 + t * n;
      for (int64_t j = 0; j < n; ++j) out[j] += v * g[j];
    }
  }
  return dot;
}
NLCORE_CPU_CLONES double state_back_gemv_f32(const float* gW, const float* gP, const float* W,
                                             int64_t m, int64_t n, float alpha, float mu,
                                             const float* A, const float* V, int64_t len,
                                             float* dG, float* gPs, float* gWs, float* o1,
                                             float* o2) {
  return state_back_gemv_block<float>(gW, gP, W, m, n, alpha, mu, A, V, len, dG, gPs, gWs, o1,
                                      o2);
}
NLCORE_CPU_CLONES double state_back_gemv_f64(const double* gW, const double* gP,
                                             const double* W, int64_t m, int64_t n,
                                             double alpha, double mu, const double* A,
                                             const double* V, int64_t len, double* dG,
                                             double* gPs, double* gWs, double* o1, double* o2) {
  return state_back_gemv_block<double>(gW, gP, W, m, n, alpha, mu, A, V, len, dG, gPs, gWs, o1,
                                       o2);
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// W', P' of a complete chunk's update for one weight [R, H, m, n] (see update_block); G0, P,
// L/Rt may be undefined. L [R, H, len, m], Rt [R, H, len, n]; alpha [R, H].
std::pair<at::Tensor, at::Tensor> fused_update(const at::Tensor& W_, const at::Tensor& P_,
                                               const at::Tensor& G0_, const at::Tensor& L_,
                                               const at::Tensor& Rt_, const at::Tensor& alpha_,
                                               double mu) {
  const at::Tensor W = W_.contiguous(), alpha = alpha_.contiguous();
  const at::Tensor P = (P_.defined() && mu != 0.0) ? P_.contiguous() : at::Tensor();
  const at::Tensor G0 = G0_.defined() ? G0_.contiguous() : at::Tensor();
  const at::Tensor L = L_.defined() ? L_.contiguous() : at::Tensor();
  const at::Tensor Rt = Rt_.defined() ? Rt_.contiguous() : at::Tensor();
  const int64_t RH = W.size(0) * W.size(1), m = W.size(2), n = W.size(3);
  const int64_t len = L.defined() ? L.size(2) : 0, blk = m * n;
  at::Tensor Wo = at::empty_like(W), Po = at::empty_like(W);
  const bool f64 = W.scalar_type() == at::kDouble;
  at::parallel_for(0, RH, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      if (f64) {
        const double* p = ptr_or_null<double>(P);
        const double* g0 = ptr_or_null<double>(G0);
        const double* l = ptr_or_null<double>(L);
        const double* r = ptr_or_null<double>(Rt);
        update_block_f64(W.data_ptr<double>() + b * blk, p ? p + b * blk : nullptr,
                         g0 ? g0 + b * blk : nullptr, l ? l + b * len * m : nullptr,
                         r ? r + b * len * n : nullptr, len, m, n, alpha.data_ptr<double>()[b],
                         mu, Wo.data_ptr<double>() + b * blk, Po.data_ptr<double>() + b * blk);
      } else {
        const float* p = ptr_or_null<float>(P);
        const float* g0 = ptr_or_null<float>(G0);
        const float* l = ptr_or_null<float>(L);
        const float* r = ptr_or_null<float>(Rt);
        update_block_f32(W.data_ptr<float>() + b * blk, p ? p + b * blk : nullptr,
                         g0 ? g0 + b * blk : nullptr, l ? l + b * len * m : nullptr,
                         r ? r + b * len * n : nullptr, len, m, n, alpha.data_ptr<float>()[b],
                         static_cast<float>(mu), Wo.data_ptr<float>() + b * blk,
                         Po.data_ptr<float>() + b * blk);
      }
    }
  });
  return {Wo, Po};
}

struct StateBack {
  at::Tensor dG, gP, gW, dot;  // gP undefined when μ = 0; dot [R, H]
  at::Tensor o1, o2;           // with A and V: A dGᵀ [R, H, len, m] and V dG [R, H, len, n]
};

// The state part of a complete chunk's backward for one weight [R, H, m, n] (state_back_block),
// and, when A [R, H, len, n] and V [R, H, len, m] are given, the products A dGᵀ and V dG in
// the same pass (state_back_gemv_block).
StateBack fused_state_backward(const at::Tensor& gW_, const at::Tensor& gP_, const at::Tensor& W_,
                               const at::Tensor& alpha_, double mu, const at::Tensor& A_ = {},
                               const at::Tensor& V_ = {}) {
  const at::Tensor gW = gW_.contiguous(), W = W_.contiguous(), alpha = alpha_.contiguous();
  const at::Tensor gP = gP_.defined() ? gP_.contiguous() : at::Tensor();
  const bool gemv = A_.defined();
  const at::Tensor A = gemv ? A_.contiguous() : at::Tensor(), V = gemv ? V_.contiguous() : at::Tensor();
  const int64_t R = W.size(0), H = W.size(1), m = W.size(2), n = W.size(3), blk = m * n;
  const int64_t len = gemv ? A.size(2) : 0;
  StateBack r;
  r.dG = at::empty_like(W);
  r.gW = at::empty_like(W);
  if (mu != 0.0) r.gP = at::empty_like(W);
  r.dot = at::empty({R, H}, W.options());
  if (gemv) {
    r.o1 = at::empty({R, H, len, m}, W.options());
    r.o2 = at::empty({R, H, len, n}, W.options());
  }
  const bool f64 = W.scalar_type() == at::kDouble;
  auto run = [&](auto zero, int64_t b) {
    using T = decltype(zero);
    const T* gp = ptr_or_null<T>(gP);
    T* gps = r.gP.defined() ? r.gP.data_ptr<T>() + b * blk : nullptr;
    const T a = alpha.data_ptr<T>()[b], u = static_cast<T>(mu);
    double dot;
    if (gemv) {
      if constexpr (std::is_same_v<T, float>)
        dot = state_back_gemv_f32(gW.data_ptr<T>() + b * blk, gp ? gp + b * blk : nullptr,
                                  W.data_ptr<T>() + b * blk, m, n, a, u,
                                  A.data_ptr<T>() + b * len * n, V.data_ptr<T>() + b * len * m,
                                  len, r.dG.data_ptr<T>() + b * blk, gps,
                                  r.gW.data_ptr<T>() + b * blk, r.o1.data_ptr<T>() + b * len * m,
                                  r.o2.data_ptr<T>() + b * len * n);
      else
        dot = state_back_gemv_f64(gW.data_ptr<T>() + b * blk, gp ? gp + b * blk : nullptr,
                                  W.data_ptr<T>() + b * blk, m, n, a, u,
                                  A.data_ptr<T>() + b * len * n, V.data_ptr<T>() + b * len * m,
                                  len, r.dG.data_ptr<T>() + b * blk, gps,
                                  r.gW.data_ptr<T>() + b * blk, r.o1.data_ptr<T>() + b * len * m,
                                  r.o2.data_ptr<T>() + b * len * n);
    } else {
      if constexpr (std::is_same_v<T, float>)
        dot = state_back_block_f32(gW.data_ptr<T>() + b * blk, gp ? gp + b * blk : nullptr,
                                   W.data_ptr<T>() + b * blk, blk, a, u,
                                   r.dG.data_ptr<T>() + b * blk, gps, r.gW.data_ptr<T>() + b * blk);
      else
        dot = state_back_block_f64(gW.data_ptr<T>() + b * blk, gp ? gp + b * blk : nullptr,
                                   W.data_ptr<T>() + b * blk, blk, a, u,
                                   r.dG.data_ptr<T>() + b * blk, gps, r.gW.data_ptr<T>() + b * blk);
    }
    r.dot.data_ptr<T>()[b] = static_cast<T>(dot);
  };
  at::parallel_for(0, R * H, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      if (f64)
        run(double{}, b);
      else
        run(float{}, b);
    }
  });
  return r;
}

// One token (a complete one-token chunk, no carried sums) of one (row, head), in plain loops:
// the reads of the nr token rows, the inner gradient and the update, with no intermediate
// tensors (the C = 1 recurrence is bound by per-op overheads otherwise).
template <typename T>
void token_block(const T* __restrict U, const T* __restrict Vt, T eta, T g, int64_t nr,
                 int64_t ix, int64_t ik, int64_t iv, int64_t D, int64_t F, const MlpScanArgs& a,
                 const T* __restrict W1, const T* __restrict W2, const T* __restrict P1,
                 const T* __restrict P2, T* __restrict W1o, T* __restrict W2o,
                 T* __restrict P1o, T* __restrict P2o, T* __restrict y) {
  std::vector<T> buf(static_cast<size_t>(nr * F * 2 + F * 3 + nr * D + D));
  T* z = buf.data();            // [nr, F]
  T* h = z + nr * F;            // [nr, F]
  T* dhk = h + nr * F;          // [F]
  T* r = dhk + F;               // [F]
  T* q1 = r + F;                // [F]
  T* out = q1 + F;              // [nr, D]
  T* ee = out + nr * D;         // [D]
  for (int64_t f = 0; f < F; ++f) {                       // z = W1 u
    const T* w = W1 + f * D;
    for (int64_t q = 0; q < nr; ++q) z[q * F + f] = dot_lanes(w, U + q * D, D);
  }
  for (int64_t q = 0; q < nr; ++q)
    for (int64_t f = 0; f < F; ++f) {
      const T zz = z[q * F + f];
      T hv, dv;
      if (a.activation == MlpActivation::kSilu) {
        const T sg = T(1) / (T(1) + std::exp(-zz));
        hv = zz * sg;
        dv = sg * (T(1) + zz * (T(1) - sg));
      } else {
        const T cdf = T(0.5) * (T(1) + std::erf(zz * T(M_SQRT1_2)));
        const T pdf = std::exp(T(-0.5) * zz * zz) * T(0.5 * M_2_SQRTPI * M_SQRT1_2);
        hv = zz * cdf;
        dv = cdf + zz * pdf;
      }
      h[q * F + f] = hv;
      if (q == ik) dhk[f] = dv;
    }
  for (int64_t d = 0; d < D; ++d) {                       // out = [u +] W2 h
    const T* w = W2 + d * F;
    for (int64_t q = 0; q < nr; ++q) {
      const T acc = dot_lanes(w, h + q * F, F);
      out[q * D + d] = a.residual ? U[q * D + d] + acc : acc;
    }
  }
  if (ix >= 0 && y)
    for (int64_t d = 0; d < D; ++d) y[d] = out[ix * D + d];
  const T* target = iv >= 0 ? out + iv * D : Vt;
  for (int64_t d = 0; d < D; ++d)                         // ηe
    ee[d] = eta * (a.objective == MlpObjective::kL2 ? out[ik * D + d] - target[d] : -target[d]);
  for (int64_t f = 0; f < F; ++f) r[f] = 0;               // r = W2ᵀ ηe
  for (int64_t d = 0; d < D; ++d) {
    const T* w = W2 + d * F;
    const T e = ee[d];
    for (int64_t f = 0; f < F; ++f) r[f] += e * w[f];
  }
  const T* zk = z + ik * F;
  for (int64_t f = 0; f < F; ++f) q1[f] = dhk[f] * r[f] + (a.dgd_erase ? eta * zk[f] : T(0));
  const T alpha = std::exp(g), mu = static_cast<T>(a.momentum);
  const T* k = U + ik * D;
  const T* hk = h + ik * F;
  for (int64_t f = 0; f < F; ++f) {                       // P1 = μP1 − q1 kᵀ, W1 = αW1 + P1
    const int64_t o = f * D;
    const T qf = q1[f];
    for (int64_t d = 0; d < D; ++d) {
      const T pn = (mu != T(0) ? mu * P1[o + d] : T(0)) - qf * k[d];
      P1o[o + d] = pn;
      W1o[o + d] = alpha * W1[o + d] + pn;
    }
  }
  for (int64_t d = 0; d < D; ++d) {                       // P2 = μP2 − ηe hᵀ, W2 = αW2 + P2
    const int64_t o = d * F;
    const T e = ee[d];
    for (int64_t f = 0; f < F; ++f) {
      const T pn = (mu != T(0) ? mu * P2[o + f] : T(0)) - e * hk[f];
      P2o[o + f] = pn;
      W2o[o + f] = alpha * W2[o + f] + pn;
    }
  }
}
NLCORE_CPU_CLONES void token_block_f32(const float* U, const float* Vt, float eta, float g,
                                       int64_t nr, int64_t ix, int64_t ik, int64_t iv,
                                       int64_t D, int64_t F, const MlpScanArgs& a,
                                       const float* W1, const float* W2, const float* P1,
                                       const float* P2, float* W1o, float* W2o, float* P1o,
                                       float* P2o, float* y) {
  token_block<float>(U, Vt, eta, g, nr, ix, ik, iv, D, F, a, W1, W2, P1, P2, W1o, W2o, P1o, P2o,
                     y);
}
NLCORE_CPU_CLONES void token_block_f64(const double* U, const double* Vt, double eta, double g,
                                       int64_t nr, int64_t ix, int64_t ik, int64_t iv,
                                       int64_t D, int64_t F, const MlpScanArgs& a,
                                       const double* W1, const double* W2, const double* P1,
                                       const double* P2, double* W1o, double* W2o, double* P1o,
                                       double* P2o, double* y) {
  token_block<double>(U, Vt, eta, g, nr, ix, ik, iv, D, F, a, W1, W2, P1, P2, W1o, W2o, P1o,
                      P2o, y);
}

// Pointers of one (row, head) for token_back_block. Null: gP1n / gP2n (zero gradient of the
// momentum after the token), gP1 / gP2 (μ = 0), Vt (self-targets), dY (no reads), dV (iv >= 0).
template <typename T>
struct TokenBack {
  const T *U, *Vt, *W1, *W2, *gW1n, *gP1n, *gW2n, *gP2n, *dY;
  T eta, g;
  T *gW1, *gW2, *gP1, *gP2, *dU, *dV, *deta, *dg;
};

// The backward of token_block: recomputes the token's reads, inner gradient and update, then
// walks them back (the math of chunk_backward at len = 1 with no carried sums), in plain loops.
// Writes the token's dU [nr, D], dV, deta, dg and the start state's gradients gW1, gW2, gP1,
// gP2 (whole blocks).
template <typename T>
void token_back_block(const TokenBack<T>& b, int64_t nr, int64_t ix, int64_t ik, int64_t iv,
                      int64_t D, int64_t F, const MlpScanArgs& a) {
  const int64_t M = std::max(D, F);
  std::vector<T> buf(static_cast<size_t>(nr * F * 4 + F * 7 + nr * D * 2 + D * 5 + M));
  T* z = buf.data();      // [nr, F] pre-activations
  T* h = z + nr * F;      // [nr, F] σ(z)
  T* sp = h + nr * F;     // [nr, F] σ'(z)
  T* dZ = sp + nr * F;    // [nr, F] dH, then dZ
  T* d2k = dZ + nr * F;   // [F] σ''(z_k)
  T* r = d2k + F;         // [F] R = W2ᵀ ηe
  T* q1 = r + F;          // [F] Q1
  T* dQ1 = q1 + F;        // [F]
  T* dHk = dQ1 + F;       // [F] gradient of σ(z_k) through G2
  T* dR = dHk + F;        // [F]
  T* dZk = dR + F;        // [F]
  T* out = dZk + F;       // [nr, D] memory outputs
  T* dOut = out + nr * D; // [nr, D]
  T* E = dOut + nr * D;   // [D]
  T* ee = E + D;          // [D] ηe
  T* dKp = ee + D;        // [D] dK through G1
  T* K2 = dKp + D;        // [D] dEη through G2
  T* dEeta = K2 + D;      // [D]
  T* tb = dEeta + D;      // [max(D, F)] T = dP' + dW' of one weight row
  const bool silu = a.activation == MlpActivation::kSilu;
  const bool l2 = a.objective == MlpObjective::kL2;
  const T eta = b.eta, alpha = std::exp(b.g), mu = static_cast<T>(a.momentum);
  const T* U = b.U;
  const T* W1 = b.W1;
  const T* W2 = b.W2;

  // ---- forward (as token_block)
  for (int64_t f = 0; f < F; ++f)
    for (int64_t q = 0; q < nr; ++q) z[q * F + f] = dot_lanes(W1 + f * D, U + q * D, D);
  for (int64_t q = 0; q < nr; ++q)
    for (int64_t f = 0; f < F; ++f) {
      const T zz = z[q * F + f];
      if (silu) {
        const T sg = T(1) / (T(1) + std::exp(-zz));
        h[q * F + f] = zz * sg;
        sp[q * F + f] = sg * (T(1) + zz * (T(1) - sg));
        if (q == ik) d2k[f] = sg * (T(1) - sg) * (T(2) + zz * (T(1) - T(2) * sg));
      } else {
        const T cdf = T(0.5) * (T(1) + std::erf(zz * T(M_SQRT1_2)));
        const T pdf = std::exp(T(-0.5) * zz * zz) * T(0.5 * M_2_SQRTPI * M_SQRT1_2);
        h[q * F + f] = zz * cdf;
        sp[q * F + f] = cdf + zz * pdf;
        if (q == ik) d2k[f] = pdf * (T(2) - zz * zz);
      }
    }
  for (int64_t d = 0; d < D; ++d)
    for (int64_t q = 0; q < nr; ++q) {
      const T acc = dot_lanes(W2 + d * F, h + q * F, F);
      out[q * D + d] = a.residual ? U[q * D + d] + acc : acc;
    }
  const T* target = iv >= 0 ? out + iv * D : b.Vt;
  for (int64_t d = 0; d < D; ++d) {
    E[d] = l2 ? out[ik * D + d] - target[d] : -target[d];
    ee[d] = eta * E[d];
  }
  std::fill(r, r + F, T(0));
  for (int64_t d = 0; d < D; ++d) {
    const T e = ee[d];
    const T* w = W2 + d * F;
    for (int64_t f = 0; f < F; ++f) r[f] += e * w[f];
  }
  const T* zk = z + ik * F;
  const T* spk = sp + ik * F;
  const T* hk = h + ik * F;
  const T* k = U + ik * D;
  for (int64_t f = 0; f < F; ++f) q1[f] = spk[f] * r[f] + (a.dgd_erase ? eta * zk[f] : T(0));

  // ---- the update: T = dP' + dW', dG = −T, dP = μ T, dW = ᾱ dW', dΣg = ᾱ ⟨dW', W⟩;
  // G1 = Q1 ⊗ k: dQ1 = dG1 k, dk = dG1ᵀ Q1
  T dot = 0;
  std::fill(dKp, dKp + D, T(0));
  for (int64_t f = 0; f < F; ++f) {
    const int64_t o = f * D;
    for (int64_t d = 0; d < D; ++d) {
      const T gw = b.gW1n[o + d];
      const T t = b.gP1n ? gw + b.gP1n[o + d] : gw;
      tb[d] = t;
      b.gW1[o + d] = alpha * gw;
      if (b.gP1) b.gP1[o + d] = mu * t;
    }
    dot += dot_lanes(b.gW1n + o, W1 + o, D);
    dQ1[f] = -dot_lanes(k, tb, D);
    const T qf = q1[f];
    for (int64_t d = 0; d < D; ++d) dKp[d] -= qf * tb[d];
  }
  for (int64_t f = 0; f < F; ++f) {  // Q1 = σ'(z_k) ⊙ R [+ η z_k]
    dR[f] = spk[f] * dQ1[f];
    dZk[f] = d2k[f] * r[f] * dQ1[f] + (a.dgd_erase ? eta * dQ1[f] : T(0));
  }
  // G2 = ηe ⊗ σ(z_k): dηe = dG2 σ(z_k) (+ dR W2ᵀ through R), dσ(z_k) = dG2ᵀ ηe
  std::fill(dHk, dHk + F, T(0));
  for (int64_t d = 0; d < D; ++d) {
    const int64_t o = d * F;
    for (int64_t f = 0; f < F; ++f) {
      const T gw = b.gW2n[o + f];
      const T t = b.gP2n ? gw + b.gP2n[o + f] : gw;
      tb[f] = t;
      b.gW2[o + f] = alpha * gw;
      if (b.gP2) b.gP2[o + f] = mu * t;
    }
    dot += dot_lanes(b.gW2n + o, W2 + o, F);
    K2[d] = -dot_lanes(hk, tb, F);
    dEeta[d] = K2[d] + dot_lanes(dR, W2 + o, F);
    const T e = ee[d];
    for (int64_t f = 0; f < F; ++f) dHk[f] -= e * tb[f];
  }
  *b.dg = alpha * dot;
  *b.deta = dot_lanes(E, dEeta, D) + (a.dgd_erase ? dot_lanes(zk, dQ1, F) : T(0));

  // ---- the memory outputs: x row ← dY, k row ← dPr (= dE with "l2"), v row ← dTg (= −dE)
  std::fill(dOut, dOut + nr * D, T(0));
  for (int64_t d = 0; d < D; ++d) {
    const T de = eta * dEeta[d];
    if (ix >= 0) dOut[ix * D + d] = b.dY[d];
    if (l2) dOut[ik * D + d] = de;
    if (iv >= 0)
      dOut[iv * D + d] = -de;
    else
      b.dV[d] = -de;
  }
  // dH = dOut W2 (+ dσ(z_k)); dW2 += ηeᵀ dR + dOutᵀ H
  std::fill(dZ, dZ + nr * F, T(0));
  for (int64_t d = 0; d < D; ++d) {
    const int64_t o = d * F;
    const T* w = W2 + o;
    T* gw = b.gW2 + o;
    const T e = ee[d];
    for (int64_t f = 0; f < F; ++f) gw[f] += e * dR[f];
    for (int64_t q = 0; q < nr; ++q) {
      const T c = dOut[q * D + d];
      T* dh = dZ + q * F;
      const T* hq = h + q * F;
      for (int64_t f = 0; f < F; ++f) {
        dh[f] += c * w[f];
        gw[f] += c * hq[f];
      }
    }
  }
  for (int64_t f = 0; f < F; ++f) dZ[ik * F + f] += dHk[f];
  for (int64_t q = 0; q < nr * F; ++q) dZ[q] *= sp[q];
  for (int64_t f = 0; f < F; ++f) dZ[ik * F + f] += dZk[f];
  // dU = [dOut +] dZ W1 (+ dk on the k row); dW1 += dZᵀ U
  for (int64_t q = 0; q < nr * D; ++q) b.dU[q] = a.residual ? dOut[q] : T(0);
  for (int64_t f = 0; f < F; ++f) {
    const int64_t o = f * D;
    const T* w = W1 + o;
    T* gw = b.gW1 + o;
    for (int64_t q = 0; q < nr; ++q) {
      const T c = dZ[q * F + f];
      T* du = b.dU + q * D;
      const T* uq = U + q * D;
      for (int64_t d = 0; d < D; ++d) {
        du[d] += c * w[d];
        gw[d] += c * uq[d];
      }
    }
  }
  for (int64_t d = 0; d < D; ++d) b.dU[ik * D + d] += dKp[d];
}
NLCORE_CPU_CLONES void token_back_f32(const TokenBack<float>& b, int64_t nr, int64_t ix,
                                      int64_t ik, int64_t iv, int64_t D, int64_t F,
                                      const MlpScanArgs& a) {
  token_back_block<float>(b, nr, ix, ik, iv, D, F, a);
}
NLCORE_CPU_CLONES void token_back_f64(const TokenBack<double>& b, int64_t nr, int64_t ix,
                                      int64_t ik, int64_t iv, int64_t D, int64_t F,
                                      const MlpScanArgs& a) {
  token_back_block<double>(b, nr, ix, ik, iv, D, F, a);
}

// Up to this many tokens the update sums the chunk's rank-one terms inline (no G tensor).
constexpr int64_t kInlineTokens = 8;

}  // namespace

Prec make_prec(at::ScalarType seq, at::ScalarType weights) {
  Prec p;
  const bool f64 = seq == at::kDouble || weights == at::kDouble;
  p.work = f64 ? at::kDouble : at::kFloat;
  p.round = !f64 && (seq == at::kBFloat16 || seq == at::kHalf);
  p.low = seq;
  return p;
}

at::Tensor rnd(const Prec& p, const at::Tensor& t) {
  return p.round ? t.to(p.low).to(p.work) : t;
}
// GEMM with rounded operands (exact = the operand already holds input-dtype values).
// [R, H, m, k] × [R, H, k, n] as one bmm over R·H (at::matmul's broadcasting bookkeeping
// costs as much as the GEMM itself at C = 1).
at::Tensor mm(const Prec& p, const at::Tensor& a, const at::Tensor& b, bool a_exact,
              bool b_exact) {
  const at::Tensor A = a_exact ? a : rnd(p, a), B = b_exact ? b : rnd(p, b);
  const int64_t R = A.size(0), H = A.size(1);
  return at::bmm(A.reshape({R * H, A.size(2), A.size(3)}), B.reshape({R * H, B.size(2), B.size(3)}))
      .view({R, H, A.size(2), B.size(3)});
}
// c + a·b in one baddbmm (c [R, H, m, n], any strides).
at::Tensor mma(const Prec& p, const at::Tensor& c, const at::Tensor& a, const at::Tensor& b,
               bool a_exact, bool b_exact) {
  const at::Tensor A = a_exact ? a : rnd(p, a), B = b_exact ? b : rnd(p, b);
  const int64_t R = A.size(0), H = A.size(1);
  return at::baddbmm(c.reshape({R * H, c.size(2), c.size(3)}),
                     A.reshape({R * H, A.size(2), A.size(3)}),
                     B.reshape({R * H, B.size(2), B.size(3)}))
      .view({R, H, A.size(2), B.size(3)});
}

void mma_(const Prec& p, at::Tensor& c, const at::Tensor& a, const at::Tensor& b, bool a_exact,
          bool b_exact) {
  if (!c.is_contiguous()) c = c.contiguous();
  const at::Tensor A = a_exact ? a : rnd(p, a), B = b_exact ? b : rnd(p, b);
  const int64_t R = A.size(0), H = A.size(1);
  c.view({R * H, c.size(2), c.size(3)})
      .baddbmm_(A.reshape({R * H, A.size(2), A.size(3)}), B.reshape({R * H, B.size(2), B.size(3)}));
}

Act activate(const at::Tensor& z, MlpActivation a, bool second) {
  Act r;
  if (a == MlpActivation::kSilu) {
    const at::Tensor s = at::sigmoid(z);
    r.h = z * s;
    r.dh = at::addcmul(s + r.h, r.h, s, -1);  // s (1 + z (1 − s)) = s + h − h s
    if (second) r.d2h = (s - s * s) * (2 + z - 2 * r.h);
  } else {
    const at::Tensor cdf = 0.5 * (1 + at::erf(z * M_SQRT1_2));
    const at::Tensor pdf = at::exp(-0.5 * z * z) * (0.5 * M_2_SQRTPI * M_SQRT1_2);
    r.h = z * cdf;
    r.dh = cdf + z * pdf;
    if (second) r.d2h = pdf * (2 - z * z);
  }
  return r;
}

std::vector<Chunk> chunk_grid(int64_t T, int64_t n0, int64_t C) {
  std::vector<Chunk> out;
  int64_t s = 0, n = n0;
  while (s < T) {
    const int64_t e = std::min(T, s + C - n);
    out.push_back({s, e, n + (e - s) == C});
    n = (n + e - s) % C;
    s = e;
  }
  return out;
}

at::Tensor rows_of(const at::Tensor& t, int64_t len, int64_t nr, int64_t r) {
  return t.unflatten(2, {len, nr}).select(3, r);  // [R, H, len, ·]
}

Fwd chunk_forward(const Rows& rw, const State& st, const Chunk& c, const MlpScanArgs& a,
                  const Prec& p) {
  Fwd f;
  f.len = c.e - c.s;
  f.lay = rw.lay;
  const int64_t nr = rw.lay.nr, kK = rw.lay.ik;
  f.U = rw.U.narrow(2, c.s, f.len).flatten(2, 3);              // [R, H, len·nr, D]
  f.Z = mm(p, f.U, tr(st.w1), f.lay.exact);                          // every row's pre-activation
  Act act = activate(f.Z, a.activation, false);
  f.Hall = act.h;
  f.dHall = act.dh;
  f.Out = a.residual ? mma(p, f.U, f.Hall, tr(st.w2))          // M(u) = [u +] W2 σ(W1 u)
                     : mm(p, f.Hall, tr(st.w2));
  f.K = rows_of(f.U, f.len, nr, kK);
  f.Zk = rows_of(f.Z, f.len, nr, kK);
  f.Hk = rows_of(f.Hall, f.len, nr, kK);
  f.dHk = rows_of(f.dHall, f.len, nr, kK);
  const at::Tensor target = rw.lay.iv >= 0 ? rows_of(f.Out, f.len, nr, rw.lay.iv)
                                            : rw.V.narrow(2, c.s, f.len);
  f.E = a.objective == MlpObjective::kL2 ? rows_of(f.Out, f.len, nr, kK) - target : -target;
  f.eta = rw.eta.narrow(2, c.s, f.len).unsqueeze(-1);          // [R, H, len, 1]
  f.Eeta = f.eta * f.E;
  f.Rr = mm(p, f.Eeta, st.w2);                                 // R = Eη W2   [len, F]
  f.Q1 = f.dHk * f.Rr;
  if (a.dgd_erase) f.Q1 = at::addcmul(f.Q1, f.eta, f.Zk);      // W1 Kᵀ diag(η) K = (ηZ)ᵀ K
  f.gsum = f.len == 1 ? rw.g.select(2, c.s) : rw.g.narrow(2, c.s, f.len).sum(-1);  // [R, H]
  return f;
}

State chunk_update(const State& st, const Fwd& f, const Chunk& c, const MlpScanArgs& a,
                   const Prec& p) {
  State n = st;
  n.ag = st.ag.defined() ? st.ag + f.gsum : f.gsum;
  // G1 = A1 + Q1ᵀ K, G2 = A2 + Eηᵀ H
  const bool inline_g = c.complete && !p.round && f.len <= kInlineTokens;
  if (!inline_g) {
    n.a1 = st.a1.defined() ? mma(p, st.a1, tr(f.Q1), f.K, false, f.lay.exact)
                           : mm(p, tr(f.Q1), f.K, false, f.lay.exact);
    n.a2 = st.a2.defined() ? mma(p, st.a2, tr(f.Eeta), f.Hk) : mm(p, tr(f.Eeta), f.Hk);
  }
  if (!c.complete) return n;
  // P ← μ P − G, W ← ᾱ W + P, one pass per weight
  const at::Tensor alpha = n.ag.exp();
  std::tie(n.w1, n.p1) = inline_g ? fused_update(st.w1, st.p1, st.a1, f.Q1, f.K, alpha, a.momentum)
                                  : fused_update(st.w1, st.p1, n.a1, {}, {}, alpha, a.momentum);
  std::tie(n.w2, n.p2) = inline_g ? fused_update(st.w2, st.p2, st.a2, f.Eeta, f.Hk, alpha, a.momentum)
                                  : fused_update(st.w2, st.p2, n.a2, {}, {}, alpha, a.momentum);
  n.a1 = n.a2 = n.ag = at::Tensor();
  return n;
}

Grad chunk_backward(const State& st, const Fwd& f, const Chunk& c, const Grad& gn,
                    const MlpScanArgs& a, const Prec& p, const at::Tensor& dY,
                    at::Tensor dU, at::Tensor dV, at::Tensor deta, at::Tensor dg) {
  Grad gs;
  at::Tensor dG1, dG2, dsum;
  // Inner gradient G1 = Q1ᵀ K, G2 = Eηᵀ H: its backward needs dQ1 = K dG1ᵀ, dK = Q1 dG1,
  // K2 = H dG2ᵀ and dH = Eη dG2; small complete chunks get them from the state pass.
  at::Tensor dQ1, dK, K2, dHk;
  if (c.complete) {
    // T = dP' + dW', dG = −T, dP = μ T, dW = ᾱ dW', dΣg = ᾱ (⟨dW1', W1⟩ + ⟨dW2', W2⟩)
    const at::Tensor alpha = (st.ag.defined() ? st.ag + f.gsum : f.gsum).exp();  // [R, H]
    const bool gemv = !p.round && f.len <= kInlineTokens;
    StateBack b1 = gemv ? fused_state_backward(gn.w1, gn.p1, st.w1, alpha, a.momentum, f.K, f.Q1)
                        : fused_state_backward(gn.w1, gn.p1, st.w1, alpha, a.momentum);
    StateBack b2 = gemv ? fused_state_backward(gn.w2, gn.p2, st.w2, alpha, a.momentum, f.Hk,
                                               f.Eeta)
                        : fused_state_backward(gn.w2, gn.p2, st.w2, alpha, a.momentum);
    dQ1 = b1.o1;
    dK = b1.o2;
    K2 = b2.o1;
    dHk = b2.o2;
    dG1 = b1.dG;
    dG2 = b2.dG;
    gs.p1 = b1.gP;  // undefined (zero) when μ = 0
    gs.p2 = b2.gP;
    gs.w1 = b1.gW;
    gs.w2 = b2.gW;
    dsum = alpha * (b1.dot + b2.dot);
  } else {
    dG1 = gn.a1;
    dG2 = gn.a2;
    dsum = gn.ag;
    gs.w1 = gn.w1;
    gs.w2 = gn.w2;
    gs.p1 = gn.p1;
    gs.p2 = gn.p2;
  }
  gs.a1 = dG1;  // G = A + (this chunk's sum): the carried-in accumulators get dG
  gs.a2 = dG2;
  gs.ag = dsum;
  dg.copy_(dsum.unsqueeze(-1).expand_as(dg));

  const int64_t nr = f.lay.nr, kK = f.lay.ik;
  if (!dQ1.defined()) {
    dQ1 = mm(p, f.K, tr(dG1), f.lay.exact);                     // [len, F]
    dK = mm(p, f.Q1, dG1);                                      // [len, D]
    K2 = mm(p, f.Hk, tr(dG2));                                  // [len, D]
    dHk = mm(p, f.Eeta, dG2);                                   // [len, F]
  }
  at::Tensor dZk = activate(f.Zk, a.activation, true).d2h * f.Rr * dQ1;  // σ''(Z) ⊙ R ⊙ dQ1
  const at::Tensor dR = f.dHk * dQ1;
  const at::Tensor dEeta = mma(p, K2, dR, tr(st.w2));
  at::Tensor d_eta = (f.E * dEeta).sum(-1);
  if (a.dgd_erase) {
    dZk = at::addcmul(dZk, f.eta, dQ1);
    d_eta = d_eta + (f.Zk * dQ1).sum(-1);
  }
  const at::Tensor dE = f.eta * dEeta;

  // Gradients of the memory outputs, row by row: x rows get dY, k rows dPr, v rows dTg.
  const at::Tensor dPr = a.objective == MlpObjective::kL2 ? dE : at::zeros_like(dE);
  std::vector<at::Tensor> rows(nr);
  if (f.lay.ix >= 0) rows[f.lay.ix] = dY;
  rows[kK] = dPr;
  if (f.lay.iv >= 0)
    rows[f.lay.iv] = -dE;
  else
    dV.copy_(-dE);
  const at::Tensor dOut = at::stack(rows, 3).flatten(2, 3);     // [R, H, len·nr, D]
  at::Tensor dHall = mm(p, dOut, st.w2);                       // [len·nr, F]
  rows_of(dHall, f.len, nr, kK).add_(dHk);
  mma_(p, gs.w2, tr(at::cat({f.Eeta, dOut}, 2)), at::cat({dR, f.Hall}, 2));  // Eηᵀ dR + dOutᵀ H
  at::Tensor dZ = dHall * f.dHall;
  rows_of(dZ, f.len, nr, kK).add_(dZk);
  const at::Tensor dUc = a.residual ? mma(p, dOut, dZ, st.w1) : mm(p, dZ, st.w1);
  mma_(p, gs.w1, tr(dZ), f.U, false, f.lay.exact);
  at::Tensor dUr = dUc.unflatten(2, {f.len, nr});
  dUr.select(3, kK).add_(dK);
  dU.copy_(dUr);
  deta.copy_(d_eta);
  return gs;
}

bool token_step_applies(const Rows& rw, const State& st, const Chunk& c, const Prec& p) {
  return c.e - c.s == 1 && c.complete && !p.round && !st.a1.defined() && !st.ag.defined() &&
         rw.U.is_contiguous() && rw.eta.is_contiguous() && rw.g.is_contiguous() &&
         (rw.lay.iv >= 0 || rw.V.is_contiguous());
}

State token_step(const Rows& rw, const State& st, const Chunk& c, const MlpScanArgs& a,
                 const Prec& p, at::Tensor y) {
  const at::Tensor W1 = st.w1.contiguous(), W2 = st.w2.contiguous();
  const at::Tensor P1 = st.p1.contiguous(), P2 = st.p2.contiguous();
  const int64_t R = W1.size(0), H = W1.size(1), F = W1.size(2), D = W1.size(3);
  const int64_t T = rw.U.size(2), nr = rw.lay.nr, t = c.s;
  State n;
  n.w1 = at::empty_like(W1);
  n.w2 = at::empty_like(W2);
  n.p1 = at::empty_like(W1);
  n.p2 = at::empty_like(W2);
  const bool f64 = W1.scalar_type() == at::kDouble;
  // y [R, H, D] in the work dtype, rows of D contiguous, (r, h) at a fixed stride
  const bool want_y = y.defined();
  TORCH_INTERNAL_ASSERT(!want_y || (y.stride(2) == 1 && y.stride(0) == H * y.stride(1)));
  const int64_t y_stride = want_y ? y.stride(1) : 0;
  at::parallel_for(0, R * H, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t tok = b * T + t;
      auto run = [&](auto zero) {
        using S = decltype(zero);
        const S* U = rw.U.data_ptr<S>() + tok * nr * D;
        const S* Vt = rw.lay.iv >= 0 ? nullptr : rw.V.data_ptr<S>() + tok * D;
        const S eta = rw.eta.data_ptr<S>()[tok], g = rw.g.data_ptr<S>()[tok];
        const int64_t wb = b * F * D;
        S* yp = want_y ? y.data_ptr<S>() + b * y_stride : nullptr;
        if constexpr (std::is_same_v<S, float>)
          token_block_f32(U, Vt, eta, g, nr, rw.lay.ix, rw.lay.ik, rw.lay.iv, D, F, a,
                          W1.data_ptr<S>() + wb, W2.data_ptr<S>() + wb, P1.data_ptr<S>() + wb,
                          P2.data_ptr<S>() + wb, n.w1.data_ptr<S>() + wb,
                          n.w2.data_ptr<S>() + wb, n.p1.data_ptr<S>() + wb,
                          n.p2.data_ptr<S>() + wb, yp);
        else
          token_block_f64(U, Vt, eta, g, nr, rw.lay.ix, rw.lay.ik, rw.lay.iv, D, F, a,
                          W1.data_ptr<S>() + wb, W2.data_ptr<S>() + wb, P1.data_ptr<S>() + wb,
                          P2.data_ptr<S>() + wb, n.w1.data_ptr<S>() + wb,
                          n.w2.data_ptr<S>() + wb, n.p1.data_ptr<S>() + wb,
                          n.p2.data_ptr<S>() + wb, yp);
      };
      if (f64)
        run(double{});
      else
        run(float{});
    }
  });
  return n;
}

Grad token_backward(const Rows& rw, const State& st, const Chunk& c, const Grad& gn,
                    const MlpScanArgs& a, const Prec& p, const at::Tensor& dY, at::Tensor& dU,
                    at::Tensor& dV, at::Tensor& deta, at::Tensor& dg) {
  TORCH_INTERNAL_ASSERT(token_step_applies(rw, st, c, p));
  TORCH_INTERNAL_ASSERT(dU.is_contiguous() && dV.is_contiguous() && deta.is_contiguous() &&
                        dg.is_contiguous() && (!dY.defined() || dY.is_contiguous()));
  const at::Tensor W1 = st.w1.contiguous(), W2 = st.w2.contiguous();
  const int64_t R = W1.size(0), H = W1.size(1), F = W1.size(2), D = W1.size(3);
  const int64_t T = rw.U.size(2), nr = rw.lay.nr, t = c.s;
  const bool has_mu = a.momentum != 0.0;
  auto cont = [&](const at::Tensor& x, const at::Tensor& like) {
    return x.defined() ? x.contiguous() : at::zeros_like(like);
  };
  const at::Tensor gW1n = cont(gn.w1, W1), gW2n = cont(gn.w2, W2);
  const at::Tensor gP1n = gn.p1.defined() ? gn.p1.contiguous() : at::Tensor();
  const at::Tensor gP2n = gn.p2.defined() ? gn.p2.contiguous() : at::Tensor();
  Grad gs;
  gs.w1 = at::empty_like(W1);
  gs.w2 = at::empty_like(W2);
  if (has_mu) {
    gs.p1 = at::empty_like(W1);
    gs.p2 = at::empty_like(W2);
  }
  const bool f64 = W1.scalar_type() == at::kDouble;
  at::parallel_for(0, R * H, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t bi = b0; bi < b1; ++bi) {
      const int64_t tok = bi * T + t;
      auto run = [&](auto zero) {
        using S = decltype(zero);
        auto at_ = [&](const at::Tensor& x, int64_t off) -> const S* {
          return x.defined() ? x.data_ptr<S>() + off : nullptr;
        };
        auto mut = [&](at::Tensor& x, int64_t off) -> S* {
          return x.defined() ? x.data_ptr<S>() + off : nullptr;
        };
        const int64_t wb = bi * F * D;
        TokenBack<S> tb{};
        tb.U = rw.U.data_ptr<S>() + tok * nr * D;
        tb.Vt = rw.lay.iv >= 0 ? nullptr : rw.V.data_ptr<S>() + tok * D;
        tb.W1 = W1.data_ptr<S>() + wb;
        tb.W2 = W2.data_ptr<S>() + wb;
        tb.gW1n = gW1n.data_ptr<S>() + wb;
        tb.gW2n = gW2n.data_ptr<S>() + wb;
        tb.gP1n = at_(gP1n, wb);
        tb.gP2n = at_(gP2n, wb);
        tb.dY = rw.lay.ix >= 0 ? at_(dY, tok * D) : nullptr;
        tb.eta = rw.eta.data_ptr<S>()[tok];
        tb.g = rw.g.data_ptr<S>()[tok];
        tb.gW1 = gs.w1.data_ptr<S>() + wb;
        tb.gW2 = gs.w2.data_ptr<S>() + wb;
        tb.gP1 = mut(gs.p1, wb);
        tb.gP2 = mut(gs.p2, wb);
        tb.dU = dU.data_ptr<S>() + tok * nr * D;
        tb.dV = rw.lay.iv >= 0 ? nullptr : dV.data_ptr<S>() + tok * D;
        tb.deta = deta.data_ptr<S>() + tok;
        tb.dg = dg.data_ptr<S>() + tok;
        if constexpr (std::is_same_v<S, float>)
          token_back_f32(tb, nr, rw.lay.ix, rw.lay.ik, rw.lay.iv, D, F, a);
        else
          token_back_f64(tb, nr, rw.lay.ix, rw.lay.ik, rw.lay.iv, D, F, a);
      };
      if (f64)
        run(double{});
      else
        run(float{});
    }
  });
  return gs;
}

std::vector<Group> make_groups(const std::optional<at::Tensor>& cu_seqlens, int64_t B, int64_t T,
                               int64_t N, const std::vector<int64_t>& n0) {
  std::vector<Group> out;
  const bool same_n = std::all_of(n0.begin(), n0.end(), [&](int64_t v) { return v == n0[0]; });
  if (!cu_seqlens) {
    if (same_n) {
      Group g{{}, {}, 0, T, N ? n0[0] : 0};
      for (int64_t b = 0; b < B; ++b) {
        g.seqs.push_back(b);
        g.rows.push_back(b);
      }
      out.push_back(g);
    } else {
      for (int64_t b = 0; b < B; ++b) out.push_back({{b}, {b}, 0, T, n0[b]});
    }
    return out;
  }
  at::Tensor cs = cu_seqlens->to(at::kCPU, at::kLong).contiguous();
  const int64_t* c = cs.data_ptr<int64_t>();
  for (int64_t i = 0; i < N; ++i) out.push_back({{i}, {0}, c[i], c[i + 1], n0[i]});
  return out;
}

std::vector<int64_t> initial_counts(const std::optional<at::Tensor>& n, int64_t N) {
  std::vector<int64_t> n0(N, 0);
  if (n) {
    at::Tensor t = n->to(at::kCPU, at::kLong).contiguous();
    for (int64_t i = 0; i < N; ++i) n0[i] = t.data_ptr<int64_t>()[i];
  }
  return n0;
}

at::Tensor long_tensor(const std::vector<int64_t>& v) {
  return at::tensor(v, at::TensorOptions().dtype(at::kLong));
}

at::Tensor index_rows(const at::Tensor& t, const std::vector<int64_t>& idx) {
  return t.index_select(0, long_tensor(idx));
}

State gather_state(const StateIn& s, at::ScalarType work, const std::vector<int64_t>& seqs) {
  const int64_t R = static_cast<int64_t>(seqs.size());
  auto weight = [&](const at::Tensor& w) {
    at::Tensor t = w.to(work);
    if (t.dim() == 3) return t.unsqueeze(0).expand({R, t.size(0), t.size(1), t.size(2)});
    return index_rows(t, seqs);
  };
  State st;
  st.w1 = weight(s.w_in);
  st.w2 = weight(s.w_out);
  if (s.p_in) {
    st.p1 = index_rows(s.p_in->to(work), seqs);
    st.p2 = index_rows(s.p_out->to(work), seqs);
    st.a1 = index_rows(s.acc_in->to(work), seqs);
    st.a2 = index_rows(s.acc_out->to(work), seqs);
    st.ag = index_rows(s.acc_g->to(work), seqs);
  } else {
    st.p1 = at::zeros_like(st.w1, at::MemoryFormat::Contiguous);
    st.p2 = at::zeros_like(st.w2, at::MemoryFormat::Contiguous);
  }
  return st;
}

std::vector<at::Tensor> state_buffers(int64_t N, int64_t H, int64_t F, int64_t D,
                                      const at::TensorOptions& opt, bool zero) {
  auto make = [&](at::IntArrayRef shape) { return zero ? at::zeros(shape, opt) : at::empty(shape, opt); };
  return {make({N, H, F, D}), make({N, H, D, F}), make({N, H, F, D}), make({N, H, D, F}),
          make({N, H, F, D}), make({N, H, D, F}), make({N, H})};
}

void scatter_state(std::vector<at::Tensor>& dst, const State& st, const at::Tensor& idx,
                   bool zero_undefined) {
  const at::Tensor parts[7] = {st.w1, st.w2, st.p1, st.p2, st.a1, st.a2, st.ag};
  for (int j = 0; j < 7; ++j) {
    if (parts[j].defined())
      dst[j].index_copy_(0, idx, parts[j].contiguous());
    else if (zero_undefined)
      dst[j].index_fill_(0, idx, 0);
  }
}

Grad final_grads(const std::vector<at::Tensor>& d_final, const at::Tensor& idx, int64_t H,
                 int64_t F, int64_t D, const at::TensorOptions& opt) {
  const int64_t R = idx.numel();
  auto get = [&](size_t j, at::IntArrayRef shape) {
    if (j < d_final.size() && d_final[j].defined())
      return d_final[j].to(opt.dtype()).index_select(0, idx);
    return at::zeros(shape, opt);
  };
  return Grad{get(0, {R, H, F, D}), get(1, {R, H, D, F}), get(2, {R, H, F, D}),
              get(3, {R, H, D, F}), get(4, {R, H, F, D}), get(5, {R, H, D, F}), get(6, {R, H})};
}

at::Tensor take_tokens(const at::Tensor& t, const Group& gr, at::ScalarType work) {
  return index_rows(t, gr.rows).narrow(1, gr.t0, gr.t1 - gr.t0).to(work).transpose(1, 2);
}

void put_tokens(at::Tensor& dst, const at::Tensor& src, const Group& gr, bool varlen) {
  const at::Tensor s = src.transpose(1, 2);
  if (varlen)
    dst.narrow(1, gr.t0, gr.t1 - gr.t0).copy_(s);
  else if (static_cast<int64_t>(gr.rows.size()) == dst.size(0))  // every row, in order
    dst.copy_(s);
  else
    dst.index_copy_(0, long_tensor(gr.rows), s.to(dst.scalar_type()).contiguous());
}

}  // namespace nlcore::cpu::mlp
