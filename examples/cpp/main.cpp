// Standalone use of the nlcore C API: the DGD forward as the gated delta rule
// (erase = exp(g)·beta, DESIGN §3.1) on device buffers allocated with cudaMalloc, checked
// against a token-by-token host loop of the recurrence
//
//   S_t = exp(g_t) S_{t-1} - a_t k_t (k_t^T S_{t-1}) + beta_t k_t v_t^T,   a_t = erase_t
//   o_t = scale S_t^T q_t                                                   (read "after")
//
// per sequence n and value head j (q/k head j / (HV / H)).
// Exit codes: 0 = matches the reference, 1 = mismatch or an API / CUDA error,
//             77 = skipped (no usable CUDA device or driver).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "nlcore/nlcore.h"

namespace {

constexpr int kExitSkipped = 77;

#define CUDA_CHECK(expr)                                                                    \
  do {                                                                                      \
    cudaError_t err_ = (expr);                                                              \
    if (err_ != cudaSuccess) {                                                              \
      std::fprintf(stderr, "%s:%d: %s failed: %s (%s)\n", __FILE__, __LINE__, #expr,        \
                   cudaGetErrorName(err_), cudaGetErrorString(err_));                       \
      std::exit(1);                                                                         \
    }                                                                                       \
  } while (0)

#define NLCORE_CHECK(expr)                                                                  \
  do {                                                                                      \
    nlcore_status_t st_ = (expr);                                                           \
    if (st_ != NLCORE_STATUS_SUCCESS) {                                                     \
      std::fprintf(stderr, "%s:%d: %s failed: %s: %s\n", __FILE__, __LINE__, #expr,          \
                   nlcore_status_string(st_), nlcore_last_error_message());                 \
      std::exit(1);                                                                         \
    }                                                                                       \
  } while (0)

// bfloat16 on the host as its bit pattern (round to nearest even; inputs are finite).
uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
float from_bf16(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// cuda_runtime_api.h (the C API, included by nlcore's headers) has only cudaMalloc(void**, ...).
void* device_alloc(size_t bytes) {
  void* d = nullptr;
  CUDA_CHECK(cudaMalloc(&d, bytes));
  return d;
}

template <class T>
T* device_copy(const std::vector<T>& host) {
  T* d = static_cast<T*>(device_alloc(host.size() * sizeof(T)));
  CUDA_CHECK(cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

}  // namespace

int main() {
  std::printf("nlcore C API version %d (header %d.%d.%d)\n", nlcore_version(),
              NLCORE_VERSION_MAJOR, NLCORE_VERSION_MINOR, NLCORE_VERSION_PATCH);

  // --- a GPU, or skip --------------------------------------------------------------------
  int device_count = 0;
  cudaError_t probe = cudaGetDeviceCount(&device_count);
  if (probe != cudaSuccess || device_count == 0) {
    std::printf("SKIPPED: no usable CUDA device (%s); exit %d\n",
                probe != cudaSuccess ? cudaGetErrorString(probe) : "0 devices", kExitSkipped);
    return kExitSkipped;
  }
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device 0: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  CUDA_CHECK(cudaSetDevice(0));

  // --- the problem: B sequences of T tokens, GVA (HV = 2 H), bf16 q/k/v/o, fp32 gates -------
  // bf16 is instantiated by both kernel sets ("ci" builds only bf16).
  const int B = 2, T = 100, H = 2, HV = 4, K = 64, V = 64, group = HV / H;
  nlcore_dgd_problem_t p{};
  p.batch = B;
  p.seqlen = T;
  p.num_sequences = B;
  p.heads_qk = H;
  p.heads_v = HV;
  p.head_dim_k = K;
  p.head_dim_v = V;
  p.dtype = NLCORE_DTYPE_BFLOAT16;
  p.gate_dtype = NLCORE_DTYPE_FLOAT32;
  p.has_g = 1;
  p.has_erase = 1;  // erase = exp(g)·beta: the gated delta rule
  p.has_initial_state = 1;
  p.read_before = 0;
  p.scale = 1.0f / std::sqrt(static_cast<float>(K));
  p.chunk_size = 64;  // T = 100 leaves a partial last chunk
  p.cu_seqlens = nullptr;
  p.cu_seqlens_dtype = NLCORE_DTYPE_INT32;
  p.flags = NLCORE_DGD_FLAG_DEFAULT;

  // --- random inputs (unit-norm keys, beta in (0, 1), g = log sigmoid(.) < 0) --------------
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> uniform(0.f, 1.f);
  const size_t nqk = size_t(B) * T * H * K, nv = size_t(B) * T * HV * V, ng = size_t(B) * T * HV;
  const size_t ns = size_t(B) * HV * K * V;
  std::vector<uint16_t> q(nqk), k(nqk), v(nv);
  std::vector<float> beta(ng), g(ng), erase(ng), s0(ns);
  for (auto& x : q) x = to_bf16(normal(rng));
  for (size_t row = 0; row < nqk / K; ++row) {
    std::vector<float> r(K);
    double nrm = 0;
    for (auto& x : r) { x = normal(rng); nrm += double(x) * x; }
    for (int i = 0; i < K; ++i) k[row * K + i] = to_bf16(float(r[i] / std::sqrt(nrm)));
  }
  for (auto& x : v) x = to_bf16(normal(rng));
  for (size_t i = 0; i < ng; ++i) {
    beta[i] = 0.1f + 0.8f * uniform(rng);
    const float z = normal(rng) + 3.0f;
    g[i] = -std::log1p(std::exp(-z));  // log sigmoid(z), near 0
    erase[i] = std::exp(g[i]) * beta[i];
  }
  for (auto& x : s0) x = 0.1f * normal(rng);

  // --- device buffers, stream, workspace ---------------------------------------------------
  uint16_t *d_q = device_copy(q), *d_k = device_copy(k), *d_v = device_copy(v);
  float *d_beta = device_copy(beta), *d_g = device_copy(g), *d_erase = device_copy(erase);
  float* d_s0 = device_copy(s0);
  void* d_o = device_alloc(nv * sizeof(uint16_t));
  void* d_sT = device_alloc(ns * sizeof(float));

  size_t ws_bytes = 0;
  NLCORE_CHECK(nlcore_dgd_workspace_size(&p, /*backward=*/0, &ws_bytes));
  void* d_ws = ws_bytes ? device_alloc(ws_bytes) : nullptr;
  std::printf("forward workspace: %zu bytes\n", ws_bytes);

  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  nlcore_dgd_tensors_t t{};
  t.q = d_q;
  t.k = d_k;
  t.v = d_v;
  t.beta = d_beta;
  t.g = d_g;
  t.erase = d_erase;
  t.initial_state = d_s0;
  t.o = d_o;
  t.final_state = d_sT;
  NLCORE_CHECK(nlcore_dgd_forward(&p, &t, d_ws, ws_bytes, stream));

  std::vector<uint16_t> o(nv);
  std::vector<float> sT(ns);
  CUDA_CHECK(cudaMemcpyAsync(o.data(), d_o, nv * sizeof(uint16_t), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaMemcpyAsync(sT.data(), d_sT, ns * sizeof(float), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));

  // --- host reference: the recurrence token by token, in double on the bf16-rounded inputs --
  double o_err = 0, o_max = 0, s_err = 0, s_max = 0;
  std::vector<double> S(size_t(K) * V), kS(V), w(V);
  for (int n = 0; n < B; ++n) {
    for (int j = 0; j < HV; ++j) {
      const int hq = j / group;
      const float* s_init = &s0[(size_t(n) * HV + j) * K * V];
      for (size_t i = 0; i < S.size(); ++i) S[i] = s_init[i];
      for (int tt = 0; tt < T; ++tt) {
        const size_t qk_off = ((size_t(n) * T + tt) * H + hq) * K;
        const size_t v_off = ((size_t(n) * T + tt) * HV + j) * V;
        const size_t gi = (size_t(n) * T + tt) * HV + j;
        const double decay = std::exp(double(g[gi])), a = erase[gi], b = beta[gi];
        std::fill(kS.begin(), kS.end(), 0.0);
        for (int i = 0; i < K; ++i) {
          const double ki = from_bf16(k[qk_off + i]);
          for (int c = 0; c < V; ++c) kS[c] += ki * S[size_t(i) * V + c];
        }
        for (int c = 0; c < V; ++c) w[c] = b * from_bf16(v[v_off + c]) - a * kS[c];
        for (int i = 0; i < K; ++i) {
          const double ki = from_bf16(k[qk_off + i]);
          for (int c = 0; c < V; ++c) S[size_t(i) * V + c] = decay * S[size_t(i) * V + c] + ki * w[c];
        }
        for (int c = 0; c < V; ++c) {
          double acc = 0;
          for (int i = 0; i < K; ++i) acc += double(from_bf16(q[qk_off + i])) * S[size_t(i) * V + c];
          const double ref = p.scale * acc;
          o_err = std::max(o_err, std::fabs(ref - double(from_bf16(o[v_off + c]))));
          o_max = std::max(o_max, std::fabs(ref));
        }
      }
      const float* s_fin = &sT[(size_t(n) * HV + j) * K * V];
      for (size_t i = 0; i < S.size(); ++i) {
        s_err = std::max(s_err, std::fabs(S[i] - double(s_fin[i])));
        s_max = std::max(s_max, std::fabs(S[i]));
      }
    }
  }

  // bf16 GEMM operands (the fp32 state included) and a bf16 output: ~1e-2 relative.
  const double tol = 3e-2;
  const double o_rel = o_err / std::max(o_max, 1e-30), s_rel = s_err / std::max(s_max, 1e-30);
  std::printf("o:           max abs error %.3e (max |o| %.3e, relative %.3e)\n", o_err, o_max, o_rel);
  std::printf("final_state: max abs error %.3e (max |S| %.3e, relative %.3e)\n", s_err, s_max, s_rel);
  const bool ok = std::isfinite(o_rel) && std::isfinite(s_rel) && o_rel < tol && s_rel < tol;

  CUDA_CHECK(cudaStreamDestroy(stream));
  for (void* ptr : {static_cast<void*>(d_q), static_cast<void*>(d_k), static_cast<void*>(d_v),
                    static_cast<void*>(d_beta), static_cast<void*>(d_g),
                    static_cast<void*>(d_erase), static_cast<void*>(d_s0),
                    d_o, d_sT, d_ws})
    CUDA_CHECK(cudaFree(ptr));

  std::printf("%s (relative tolerance %.0e)\n", ok ? "PASSED" : "FAILED", tol);
  return ok ? 0 : 1;
}
