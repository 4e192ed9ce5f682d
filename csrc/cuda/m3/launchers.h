// Internal interface between the M3 host driver (api.cpp, plain C++) and the kernels
// (kernels.cu). Not installed; hidden symbols.
#ifndef NLCORE_CUDA_M3_LAUNCHERS_H_
#define NLCORE_CUDA_M3_LAUNCHERS_H_

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "nlcore/m3.h"
#include "nlcore/status.h"

namespace nlcore::m3 {

constexpr int kMaxTensors = NLCORE_M3_MAX_TENSORS_PER_LAUNCH;

// One launch's tensors, passed by value as the kernel parameter (< 4 KiB). vec[i] = 1 when
// every pointer of tensor i is 16-byte aligned (vectorized body + scalar tail).
struct PreChunk {
  void* m1[kMaxTensors];
  void* s[kMaxTensors];
  void* fast[kMaxTensors];
  const void* g[kMaxTensors];
  int64_t n[kMaxTensors];
  uint8_t vec[kMaxTensors];
  int count;
  float w_m1;    // 1 - beta1 (rounded from double, as torch passes a scalar weight)
  float w_fast;  // beta1
  int nesterov;
};

struct PostChunk {
  void* p[kMaxTensors];
  const void* u[kMaxTensors];
  const void* o2[kMaxTensors];
  int64_t n[kMaxTensors];
  float lr[kMaxTensors];
  uint8_t vec[kMaxTensors];
  int count;
  float decay;
  float alpha;
};

static_assert(sizeof(PreChunk) <= 4000, "PreChunk must fit the 4 KiB kernel parameter space");
static_assert(sizeof(PostChunk) <= 4000, "PostChunk must fit the 4 KiB kernel parameter space");

// Grid: x blocks grid-stride over each tensor, y = tensor of the chunk. max_n = the largest
// numel of the chunk. Return the launch status (NLCORE_STATUS_CUDA_ERROR with a message).
nlcore_status_t launch_pre(const PreChunk& c, int64_t max_n, int dtype, cudaStream_t stream);
nlcore_status_t launch_post(const PostChunk& c, int64_t max_n, int dtype, cudaStream_t stream);

}  // namespace nlcore::m3

#endif  // NLCORE_CUDA_M3_LAUNCHERS_H_
