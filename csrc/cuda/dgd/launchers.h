// Internal interface between the DGD host driver (api.cpp, plain C++) and the kernels (*.cu).
// Not installed; hidden symbols.
#ifndef NLCORE_CUDA_DGD_LAUNCHERS_H_
#define NLCORE_CUDA_DGD_LAUNCHERS_H_

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "dgd/tiling.h"
#include "nlcore/status.h"

namespace nlcore::dgd {

// Everything a kernel needs, passed by value. Pointers to inputs / outputs are in the layouts of
// nlcore/dgd.h; workspace pointers are carved by make_layout().
struct Params {
  // problem
  int64_t B, T, N;
  int H, HV, K, V, group;  // group = HV / H
  int has_g, has_erase, has_init, read_before;
  float scale;
  int64_t nc_bound;
  int vtile, ntiles;
  // cu_seqlens (device; NULL: fixed length)
  const void* cu;
  int cu_is64;
  // inputs
  const void* q;
  const void* k;
  const void* v;
  const float* beta;
  const float* g;
  const float* erase;
  const float* h0;
  // forward outputs
  void* o;
  float* hT;
  // backward inputs / outputs
  const void* dO;
  const float* dhT;
  void* dq;
  void* dk;
  void* dv;
  float* dbeta;
  float* dg;
  float* derase;
  float* dh0;
  // workspace
  int64_t* chunks;
  int64_t* seqs;
  int64_t* meta;
  float* wv;
  float* wk;
  float* s0;
  float* dw;
  float* ds;
  float* ddp;
  float* decp;
  float* dqp;
  float* dkp;
};

// Per-dtype drivers (dtype-independent kernels live in common.cu). Each records errors with
// detail::fail() and returns the status of its launches.
using DgdFn = nlcore_status_t (*)(const Params& p, cudaStream_t stream);
nlcore_status_t forward_bf16(const Params& p, cudaStream_t stream);
nlcore_status_t backward_bf16(const Params& p, cudaStream_t stream);
#if !defined(NLCORE_KERNEL_SET_CI)
nlcore_status_t forward_f16(const Params& p, cudaStream_t stream);
nlcore_status_t backward_f16(const Params& p, cudaStream_t stream);
nlcore_status_t forward_f32(const Params& p, cudaStream_t stream);
nlcore_status_t backward_f32(const Params& p, cudaStream_t stream);
#endif

// dtype-independent steps (common.cu)
nlcore_status_t launch_chunk_table(const Params& p, cudaStream_t stream);
// Zero the rows of an output not covered by [cu[0], cu[N]) (varlen only; no-op otherwise).
struct ZeroRows {
  void* ptr[8];
  int64_t row_bytes[8];
  int count;
};
nlcore_status_t launch_zero_uncovered(const Params& p, const ZeroRows& z, cudaStream_t stream);

// Error helpers (common.cu).
nlcore_status_t launch_status(const char* what);
nlcore_status_t cuda_status(cudaError_t e, const char* what);

}  // namespace nlcore::dgd

#endif  // NLCORE_CUDA_DGD_LAUNCHERS_H_
