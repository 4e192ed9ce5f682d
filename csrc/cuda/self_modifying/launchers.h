// Internal interface between the self-modifying host driver (driver.cpp, api.cpp: plain C++)
// and its token kernels (self_modifying_<dtype>.cu). The GEMMs and state kernels are the MLP
// scan's (memory_mlp/launchers.h), run over 4·N "sequences" (see layout.h). Not installed;
// hidden symbols.
#ifndef NLCORE_CUDA_SELF_MODIFYING_LAUNCHERS_H_
#define NLCORE_CUDA_SELF_MODIFYING_LAUNCHERS_H_

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "memory_mlp/launchers.h"
#include "nlcore/status.h"
#include "self_modifying/layout.h"

namespace nlcore::self_modifying {

// What the token kernels need, by value. Token tensors [B·T][H][D] (dtype T) / [B·T][H]
// (fp32); per-chunk buffers [4·N·H][rows][·] indexed by sh' = mem_row(m, s, h) (layout.h);
// grid.x of every token kernel = N·H (one (sequence, head) per x-block).
struct TokParams {
  int64_t N, C;
  int H, D, F;
  int rows;             // Cm: rows of the per-chunk buffers
  int erase;            // dgd_erase
  float eta_max;
  const int64_t* seq;   // the chunk table (its first N entries: the real sequences)
  // derive (forward and the backward's recomputation)
  const void* x;        // [B·T][H][D]
  const float* Ox;      // [4NH][rows][D]: σ(Zx) W2ᵀ of the four memories
  const float* w_eta;   // [H][D]
  const float* w_alpha;
  const float* b_eta;   // [H] or NULL
  const float* b_alpha;
  void* k;              // [B·T][H][D] written
  void* v;
  float* eta;           // [B·T][H] written
  float* g;
  // backward
  const void* grad_k;   // [B·T][H][D] or NULL
  const void* grad_v;
  const float* grad_eta;  // [B·T][H] or NULL
  const float* grad_g;
  const float* E;       // [4NH][rows][D]
  const float* dEeta;
  const float* dE;
  const float* dK;      // Q1 dG1 + dZ W1 of each memory
  const float* dV;      // dZv W1 of each memory
  const float* Z;       // [4NH][rows][F]
  const float* dQ1;
  const float* dsg;     // [4NH]: dΣg of the current chunk
  float* dRx;           // [4NH][rows][D] written: gradient of each memory's read
  const float* dX;      // [NH][rows][D]: Σ_m dZx_m W1_m
  void* dx;             // [B·T][H][D] written
  float* dwe;           // [NH][D] += Σ_t da_t r_eta,t      (this (sequence, head)'s share)
  float* dwa;           // [NH][D] += Σ_t db_t r_alpha,t
  float* dbe;           // [NH]    += Σ_t da_t
  float* dba;           // [NH]    += Σ_t db_t
};

// Per-dtype token kernels (self_modifying_<dtype>.cu), all for chunk j of every sequence:
//   derive:    r_m = x + Ox_m → k, v, eta, g of the chunk's tokens
//   token_bwd: the four memories' token gradients summed with the output gradients, then the
//              derive backward → dRx_m, and the dw_eta, dw_alpha, db_eta, db_alpha sums
//   dx:        dx = dX + Σ_m dRx_m
struct TokenKernels {
  nlcore_status_t (*derive)(const TokParams& q, int64_t j, cudaStream_t stream);
  nlcore_status_t (*token_bwd)(const TokParams& q, int64_t j, cudaStream_t stream);
  nlcore_status_t (*dx)(const TokParams& q, int64_t j, cudaStream_t stream);
  memory_mlp::GemmFn gemm;
};
TokenKernels kernels_bf16();
#if !defined(NLCORE_KERNEL_SET_CI)
TokenKernels kernels_f16();
TokenKernels kernels_f32();
#endif

// Launch / runtime-call status with a "self_modifying:" message (driver.cpp).
nlcore_status_t launch_status(const char* what);
nlcore_status_t cuda_status(cudaError_t e, const char* what);

// Host drivers (driver.cpp). `mp` is the MLP scan's Params over 4·N sequences with the state
// pointers set (forward: the final-state outputs, a_g in the workspace; backward: the work
// slabs); `tp` the token kernels' parameters.
struct Outputs {
  int64_t N;                   // real sequences
  const void* w_in;            // initial weights ([4, H, ...] shared or [4, N, H, ...])
  const void* w_out;
  const float* acc_g;          // initial acc_g [N][H] or NULL
  int64_t* n_final;            // forward: final n [N] (NULL in the backward)
  float* acc_g_final;          // forward: final acc_g [N][H]
};
struct BackwardBuffers {
  float* ckpt;                 // [n_ckpt − 1][4 slabs: W1, W2, P1, P2]
  float* seg;                  // [ckpt_every][2 slabs: W1, W2]
  int64_t ckpt_every;          // min(checkpoint_every, nc_bound)
  int64_t n_ckpt;
  const float* grad_final[7];  // gradients of the final w_in, w_out, p_in, p_out, acc_in,
                               // acc_out, acc_g (NULL: zero)
  float* dX;                   // [NH][rows][D] workspace
  float* dK;                   // [4NH][rows][D] workspace
  float* dV;
  float* dRx;
  float* dw_in;                // w_in's layout
  float* dw_out;
  float* dw_eta;               // [H][D]
  float* dw_alpha;
  float* db_eta;               // [H] or NULL
  float* db_alpha;
  float* d_init[5];            // dp_in, dp_out, dacc_in, dacc_out, dacc_g (has_init only)
};
nlcore_status_t run_forward(const memory_mlp::Params& mp, const TokParams& tp,
                            const Outputs& out, const TokenKernels& kern, cudaStream_t stream);
nlcore_status_t run_backward(const memory_mlp::Params& mp, const TokParams& tp,
                             const Outputs& out, const BackwardBuffers& bb,
                             const TokenKernels& kern, cudaStream_t stream);

}  // namespace nlcore::self_modifying

#endif  // NLCORE_CUDA_SELF_MODIFYING_LAUNCHERS_H_
