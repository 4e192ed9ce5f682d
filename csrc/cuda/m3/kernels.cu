// M3 muon-variant elementwise kernels (nlcore/m3.h): one launch per chunk of tensors; blockIdx.y
// picks the tensor of the chunk, the x blocks grid-stride over its elements, 16-byte vector
// loads/stores where every pointer of the tensor is 16-byte aligned (scalar tail), fp32
// arithmetic, one rounding to the storage dtype per result.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/error.h"
#include "m3/launchers.h"

namespace nlcore::m3 {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocksPerLaunch = 4096;

template <typename T>
struct Cvt;
template <>
struct Cvt<float> {
  static __device__ __forceinline__ float in(float x) { return x; }
  static __device__ __forceinline__ float out(float x) { return x; }
};
template <>
struct Cvt<__nv_bfloat16> {
  static __device__ __forceinline__ float in(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 out(float x) { return __float2bfloat16_rn(x); }
};
template <>
struct Cvt<__half> {
  static __device__ __forceinline__ float in(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half out(float x) { return __float2half_rn(x); }
};

template <typename T>
struct alignas(16) Vec {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

// torch.lerp's formula (ATen/native/Lerp.h).
__device__ __forceinline__ float lerp(float a, float b, float w) {
  return fabsf(w) < 0.5f ? a + w * (b - a) : b - (b - a) * (1.0f - w);
}

template <typename T>
struct PreOp {
  float w_m1, w_fast;
  int nesterov;
  __device__ __forceinline__ void operator()(T& m1, T& s, T& fast, T g_) const {
    const float g = Cvt<T>::in(g_);
    const T m_new = Cvt<T>::out(lerp(Cvt<T>::in(m1), g, w_m1));
    m1 = m_new;
    s = Cvt<T>::out(Cvt<T>::in(s) + g);
    fast = nesterov ? Cvt<T>::out(lerp(g, Cvt<T>::in(m_new), w_fast)) : m_new;
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) pre_kernel(const __grid_constant__ PreChunk c) {
  const int t = blockIdx.y;
  const int64_t n = c.n[t];
  T* m1 = static_cast<T*>(c.m1[t]);
  T* s = static_cast<T*>(c.s[t]);
  T* fast = static_cast<T*>(c.fast[t]);
  const T* g = static_cast<const T*>(c.g[t]);
  const PreOp<T> op{c.w_m1, c.w_fast, c.nesterov};
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if (c.vec[t]) {
    using V = Vec<T>;
    const int64_t nv = n / V::N;
    for (int64_t i = tid; i < nv; i += stride) {
      V vm = reinterpret_cast<const V*>(m1)[i];
      V vs = reinterpret_cast<const V*>(s)[i];
      const V vg = reinterpret_cast<const V*>(g)[i];
      V vf;
#pragma unroll
      for (int j = 0; j < V::N; ++j) op(vm.v[j], vs.v[j], vf.v[j], vg.v[j]);
      reinterpret_cast<V*>(m1)[i] = vm;
      reinterpret_cast<V*>(s)[i] = vs;
      reinterpret_cast<V*>(fast)[i] = vf;
    }
    done = nv * V::N;
  }
  for (int64_t i = done + tid; i < n; i += stride) {
    T vm = m1[i], vs = s[i], vf;
    op(vm, vs, vf, g[i]);
    m1[i] = vm;
    s[i] = vs;
    fast[i] = vf;
  }
}

template <typename T>
struct PostOp {
  float decay, alpha, lr;
  __device__ __forceinline__ T operator()(T p_, T u_, T o2_) const {
    const float p = Cvt<T>::in(p_) * decay;
    const float u = Cvt<T>::in(u_) + alpha * Cvt<T>::in(o2_);
    return Cvt<T>::out(p - lr * u);
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) post_kernel(const __grid_constant__ PostChunk c) {
  const int t = blockIdx.y;
  const int64_t n = c.n[t];
  T* p = static_cast<T*>(c.p[t]);
  const T* u = static_cast<const T*>(c.u[t]);
  const T* o2 = static_cast<const T*>(c.o2[t]);
  const PostOp<T> op{c.decay, c.alpha, c.lr[t]};
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if (c.vec[t]) {
    using V = Vec<T>;
    const int64_t nv = n / V::N;
    for (int64_t i = tid; i < nv; i += stride) {
      V vp = reinterpret_cast<const V*>(p)[i];
      const V vu = reinterpret_cast<const V*>(u)[i];
      const V vo = reinterpret_cast<const V*>(o2)[i];
#pragma unroll
      for (int j = 0; j < V::N; ++j) vp.v[j] = op(vp.v[j], vu.v[j], vo.v[j]);
      reinterpret_cast<V*>(p)[i] = vp;
    }
    done = nv * V::N;
  }
  for (int64_t i = done + tid; i < n; i += stride) p[i] = op(p[i], u[i], o2[i]);
}

dim3 grid_for(int64_t max_n, int count, int elems_per_thread) {
  const int64_t per_block = static_cast<int64_t>(kThreads) * elems_per_thread;
  int64_t bx = (max_n + per_block - 1) / per_block;
  int64_t cap = kMaxBlocksPerLaunch / count;
  if (cap < 8) cap = 8;
  if (bx > cap) bx = cap;
  if (bx < 1) bx = 1;
  return dim3(static_cast<unsigned>(bx), static_cast<unsigned>(count), 1);
}

nlcore_status_t launch_status(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    return detail::fail(NLCORE_STATUS_CUDA_ERROR, "%s: kernel launch failed: %s (%s)", what,
                        cudaGetErrorString(e), cudaGetErrorName(e));
  return NLCORE_STATUS_SUCCESS;
}

template <typename T>
nlcore_status_t pre_t(const PreChunk& c, int64_t max_n, cudaStream_t stream) {
  pre_kernel<T><<<grid_for(max_n, c.count, Vec<T>::N), kThreads, 0, stream>>>(c);
  return launch_status("m3_muon_pre");
}

template <typename T>
nlcore_status_t post_t(const PostChunk& c, int64_t max_n, cudaStream_t stream) {
  post_kernel<T><<<grid_for(max_n, c.count, Vec<T>::N), kThreads, 0, stream>>>(c);
  return launch_status("m3_muon_post");
}

}  // namespace

nlcore_status_t launch_pre(const PreChunk& c, int64_t max_n, int dtype, cudaStream_t stream) {
  switch (dtype) {
    case NLCORE_DTYPE_FLOAT32: return pre_t<float>(c, max_n, stream);
    case NLCORE_DTYPE_BFLOAT16: return pre_t<__nv_bfloat16>(c, max_n, stream);
    case NLCORE_DTYPE_FLOAT16: return pre_t<__half>(c, max_n, stream);
  }
  return detail::fail(NLCORE_STATUS_INTERNAL_ERROR, "m3_muon_pre: unexpected dtype %d", dtype);
}

nlcore_status_t launch_post(const PostChunk& c, int64_t max_n, int dtype, cudaStream_t stream) {
  switch (dtype) {
    case NLCORE_DTYPE_FLOAT32: return post_t<float>(c, max_n, stream);
    case NLCORE_DTYPE_BFLOAT16: return post_t<__nv_bfloat16>(c, max_n, stream);
    case NLCORE_DTYPE_FLOAT16: return post_t<__half>(c, max_n, stream);
  }
  return detail::fail(NLCORE_STATUS_INTERNAL_ERROR, "m3_muon_post: unexpected dtype %d", dtype);
}

}  // namespace nlcore::m3
