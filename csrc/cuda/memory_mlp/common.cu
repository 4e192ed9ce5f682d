// MLP scan: dtype-independent kernels — the device-built sequence table, the initial state,
// the chunk gates (ᾱ), the backward through a chunk's update, the per-token gate gradients and
// the sum over sequences of shared-weight gradients — and the CUDA-error -> status helpers.
#include <cuda_runtime.h>
#include <stdint.h>

#include "common/error.h"
#include "memory_mlp/launchers.h"
#include "memory_mlp/layout.h"

namespace nlcore::memory_mlp {
namespace {

__device__ __forceinline__ int64_t cu_at(const void* cu, int is64, int64_t i) {
  return is64 ? static_cast<const int64_t*>(cu)[i]
              : static_cast<int64_t>(static_cast<const int32_t*>(cu)[i]);
}

__device__ __forceinline__ ChunkSpan seq_chunk(const Params& p, int64_t s, int64_t j) {
  const int64_t* e = p.seq + s * kSeqEntry;
  return chunk_span(e[0], e[1], e[2], p.C, j);
}

// Sum over the CTA (kRowThreads threads, all must call); a fixed tree, so the result is the same
// in the forward and in the backward's recomputation. Every thread gets the total.
__device__ float block_sum(float v, float* red) {
  const int tid = threadIdx.x;
  red[tid] = v;
  __syncthreads();
  for (int off = kRowThreads / 2; off > 0; off >>= 1) {
    if (tid < off) red[tid] += red[tid + off];
    __syncthreads();
  }
  const float total = red[0];
  __syncthreads();
  return total;
}

// Σ_t g_t over the chunk's tokens (0 without g).
__device__ float chunk_gsum(const Params& p, const ChunkSpan& cs, int h, float* red) {
  float part = 0.0f;
  if (p.has_g)
    for (int64_t t = threadIdx.x; t < cs.len; t += kRowThreads) part += p.g[(cs.row0 + t) * p.H + h];
  return block_sum(part, red);
}

// Sequence n covers token rows [start, start + len) (clamped to [0, B*T)); n0 = the open
// chunk's tokens carried in (clamped to [0, C)). Also the final token counts.
__global__ void table_kernel(const Params p) {
  const int64_t rows = p.B * p.T;
  for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < p.N;
       n += int64_t(gridDim.x) * blockDim.x) {
    int64_t s, e;
    if (p.cu != nullptr) {
      s = cu_at(p.cu, p.cu_is64, n);
      e = cu_at(p.cu, p.cu_is64, n + 1);
    } else {
      s = n * p.T;
      e = s + p.T;
    }
    s = s < 0 ? 0 : (s > rows ? rows : s);
    e = e < s ? s : (e > rows ? rows : e);
    int64_t n0 = p.has_init ? p.n_init[n] : 0;
    n0 = n0 < 0 ? 0 : (n0 >= p.C ? p.C - 1 : n0);
    int64_t* t = p.seq + n * kSeqEntry;
    t[0] = s;
    t[1] = e - s;
    t[2] = n0;
    t[3] = 0;
    if (p.n_out != nullptr) p.n_out[n] = final_count(e - s, n0, p.C);
  }
}

// State slabs ← the initial state: weights broadcast over the sequences when shared; momentum
// buffers and accumulators from the initial state, else zero.
__global__ void init_state_kernel(const Params p) {
  const int64_t fd = int64_t(p.F) * p.D;
  const int64_t total = p.N * p.H * fd;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t sh = e / fd, off = e % fd;
    const int64_t w = p.w_shared ? (sh % p.H) * fd + off : e;
    p.w1[e] = p.w1_init[w];
    p.w2[e] = p.w2_init[w];
    p.p1[e] = p.has_init ? p.p1_init[e] : 0.0f;
    p.p2[e] = p.has_init ? p.p2_init[e] : 0.0f;
    p.a1[e] = p.has_init ? p.a1_init[e] : 0.0f;
    p.a2[e] = p.has_init ? p.a2_init[e] : 0.0f;
    if (off == 0) p.ag[sh] = p.has_init ? p.ag_init[sh] : 0.0f;
  }
}

// One CTA per (sequence, head): Σg = a_g + Σ_chunk g_t; ᾱ = exp(Σg);
// a_g ← 0 (complete chunk: the update consumes it) or Σg (incomplete: carried out).
__global__ void __launch_bounds__(kRowThreads) gates_kernel(const Params p, int64_t j) {
  __shared__ float red[kRowThreads];
  const int64_t sh = blockIdx.x;
  const int h = static_cast<int>(sh % p.H);
  const ChunkSpan cs = seq_chunk(p, sh / p.H, j);
  if (cs.len <= 0) return;
  const float gsum = chunk_gsum(p, cs, h, red);
  if (threadIdx.x == 0) {
    const float sg = p.ag[sh] + gsum;
    p.alpha[sh] = expf(sg);
    p.ag[sh] = cs.complete ? 0.0f : sg;
  }
}

// Backward through the end of chunk j (one CTA per (sequence, head)), given the gradients
// (dW', dP', dA', d a_g') of the state after it in p.dw*, p.dp*, p.da*, p.dag:
// complete chunk (W' = ᾱ W + P', P' = μ P − G, A' = 0):
//   T = dP' + dW',  dG = −T,  dP = μ T,  dW = ᾱ dW',  dΣg = ᾱ (⟨dW1', W1⟩ + ⟨dW2', W2⟩)
// incomplete chunk (A' = G, a_g' = Σg; W, P pass through): dG = dA', dΣg = d a_g'.
// dG is left in p.da* (it is also the gradient of the chunk-start accumulators), dΣg in
// p.dsg and p.dag (the gradient of the chunk-start a_g).
__global__ void __launch_bounds__(kRowThreads) bwd_update_kernel(const Params p, int64_t j,
                                                                 const float* w1,
                                                                 const float* w2) {
  __shared__ float red[kRowThreads];
  const int64_t sh = blockIdx.x;
  const int h = static_cast<int>(sh % p.H);
  const ChunkSpan cs = seq_chunk(p, sh / p.H, j);
  if (cs.len <= 0) return;
  if (!cs.complete) {
    if (threadIdx.x == 0) p.dsg[sh] = p.dag[sh];
    return;
  }
  const float gsum = chunk_gsum(p, cs, h, red);
  const float ag0 = (j == 0 && p.has_init) ? p.ag_init[sh] : 0.0f;  // a_g at the chunk start
  const float alpha = expf(ag0 + gsum);
  const int64_t fd = int64_t(p.F) * p.D;
  float dot = 0.0f;
  for (int64_t e = sh * fd + threadIdx.x; e < (sh + 1) * fd; e += kRowThreads) {
    const float t1 = p.dp1[e] + p.dw1[e];
    dot += p.dw1[e] * w1[e];
    p.da1[e] = -t1;
    p.dp1[e] = p.momentum * t1;
    p.dw1[e] = alpha * p.dw1[e];
    const float t2 = p.dp2[e] + p.dw2[e];
    dot += p.dw2[e] * w2[e];
    p.da2[e] = -t2;
    p.dp2[e] = p.momentum * t2;
    p.dw2[e] = alpha * p.dw2[e];
  }
  const float dsum = block_sum(dot, red);
  if (threadIdx.x == 0) {
    p.dsg[sh] = alpha * dsum;
    p.dag[sh] = alpha * dsum;
  }
}

// One warp per token of chunk j: deta_t = ⟨E_t, dEη_t⟩ [+ ⟨Z_t, dQ1_t⟩ (dgd_erase)];
// dg_t = dΣg.
__global__ void __launch_bounds__(kThreads) token_grads_kernel(const Params p, int64_t j) {
  const int64_t sh = blockIdx.x;
  const int h = static_cast<int>(sh % p.H);
  const ChunkSpan cs = seq_chunk(p, sh / p.H, j);
  const int lane = threadIdx.x & 31;
  const int64_t step = int64_t(gridDim.y) * (kThreads / 32);
  for (int64_t t = int64_t(blockIdx.y) * (kThreads / 32) + (threadIdx.x >> 5); t < cs.len;
       t += step) {  // per warp; no barrier
    const float* e = p.E + (sh * p.rows + t) * p.D;
    const float* de = p.dEeta + (sh * p.rows + t) * p.D;
    float s = 0.0f;
    for (int d = lane; d < p.D; d += 32) s += e[d] * de[d];
    if (p.erase) {
      const float* z = p.Z + (sh * p.rows + t) * p.F;
      const float* dq = p.dQ1 + (sh * p.rows + t) * p.F;
      for (int f = lane; f < p.F; f += 32) s += z[f] * dq[f];
    }
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) {
      const int64_t idx = (cs.row0 + t) * p.H + h;
      p.deta[idx] = s;
      if (p.has_g) p.dg[idx] = p.dsg[sh];
    }
  }
}

// dst[h][e] = Σ_s src[s][h][e], s ascending.
__global__ void sum_sequences_kernel(const Params p, const float* src, float* dst,
                                     int64_t per_head) {
  const int64_t total = int64_t(p.H) * per_head;
  const int64_t stride = int64_t(p.H) * per_head;
  for (int64_t x = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; x < total;
       x += int64_t(gridDim.x) * blockDim.x) {
    float acc = 0.0f;
    for (int64_t s = 0; s < p.N; ++s) acc += src[s * stride + x];
    dst[x] = acc;
  }
}

unsigned grid_for(int64_t n, int threads) {
  int64_t b = ceil_div(n, threads);
  return static_cast<unsigned>(b < 1 ? 1 : (b > 8192 ? 8192 : b));
}

}  // namespace

nlcore_status_t launch_status(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    return detail::fail(NLCORE_STATUS_CUDA_ERROR, "memory_mlp: %s failed: %s (%s)", what,
                        cudaGetErrorString(e), cudaGetErrorName(e));
  return NLCORE_STATUS_SUCCESS;
}

nlcore_status_t cuda_status(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return detail::fail(NLCORE_STATUS_CUDA_ERROR, "memory_mlp: %s failed: %s (%s)", what,
                        cudaGetErrorString(e), cudaGetErrorName(e));
  }
  return NLCORE_STATUS_SUCCESS;
}

nlcore_status_t launch_table(const Params& p, cudaStream_t stream) {
  table_kernel<<<grid_for(p.N, 256), 256, 0, stream>>>(p);
  return launch_status("table_kernel launch");
}

nlcore_status_t launch_init_state(const Params& p, cudaStream_t stream) {
  init_state_kernel<<<grid_for(p.N * p.H * int64_t(p.F) * p.D, 256), 256, 0, stream>>>(p);
  return launch_status("init_state_kernel launch");
}

nlcore_status_t launch_gates(const Params& p, int64_t j, cudaStream_t stream) {
  gates_kernel<<<static_cast<unsigned>(p.N * p.H), kRowThreads, 0, stream>>>(p, j);
  return launch_status("gates_kernel launch");
}

nlcore_status_t launch_bwd_update(const Params& p, int64_t j, const float* w1, const float* w2,
                                  cudaStream_t stream) {
  bwd_update_kernel<<<static_cast<unsigned>(p.N * p.H), kRowThreads, 0, stream>>>(p, j, w1, w2);
  return launch_status("bwd_update_kernel launch");
}

nlcore_status_t launch_token_grads(const Params& p, int64_t j, cudaStream_t stream) {
  int64_t ty = ceil_div(p.rows, kThreads / 32);
  ty = ty > kMaxGridY ? kMaxGridY : ty;
  const dim3 grid(static_cast<unsigned>(p.N * p.H), static_cast<unsigned>(ty));
  token_grads_kernel<<<grid, kThreads, 0, stream>>>(p, j);
  return launch_status("token_grads_kernel launch");
}

nlcore_status_t launch_sum_sequences(const Params& p, const float* src, float* dst,
                                     int64_t per_head, cudaStream_t stream) {
  sum_sequences_kernel<<<grid_for(int64_t(p.H) * per_head, 256), 256, 0, stream>>>(p, src, dst,
                                                                                   per_head);
  return launch_status("sum_sequences_kernel launch");
}

}  // namespace nlcore::memory_mlp
