// Argument checks shared by the torch glue: messages name the argument, what was seen and
// what was wanted.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

namespace nlcore::glue {

inline bool is_sequence_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kDouble;
}

inline std::string dtype_name(at::ScalarType t) { return c10::toString(t); }

// Inside an op's kernel the ATen calls must not be autocast (an fp32 GEMM the precision
// contract asks for would silently become bf16): exclude the autocast keys while it runs.
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

// NLCORE_DEBUG=1: run the value checks that read a CUDA tensor (a host sync) too.
inline bool debug_checks() {
  const char* e = std::getenv("NLCORE_DEBUG");
  return e != nullptr && e[0] == '1';
}

// "<op>: <name> must be float32, bfloat16, float16 or float64, got <dtype>" (TypeError).
inline void check_float_arg(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(is_sequence_dtype(t.scalar_type()), op, ": ", name,
                   " must be float32, bfloat16, float16 or float64, got ",
                   dtype_name(t.scalar_type()));
}

// "<op>: <name> is on <device> but <ref_name> is on <device>" (ValueError).
inline void check_same_device(const char* op, const at::Tensor& t, const at::Tensor& ref,
                              const char* name, const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ",
                    ref_name, " is on ", ref.device());
}

// "<op>: <name> must be <what> = <want>, got <shape>" (ValueError).
inline void check_shape_arg(const char* op, const at::Tensor& t, at::IntArrayRef want,
                            const char* name, const char* what) {
  TORCH_CHECK_VALUE(t.sizes() == want, op, ": ", name, " must be ", what, " = ", want, ", got ",
                    t.sizes());
}

// cu_seqlens of a packed batch [1, T, ...] (DESIGN §2): 1-D int32/int64 offsets on `ref`'s
// device; its values (start 0, end T, non-decreasing) are checked for CPU tensors or under
// NLCORE_DEBUG=1. Returns N, the number of sequences. Messages start with `op`.
inline int64_t check_cu_seqlens(const char* op, const at::Tensor& cs, const at::Tensor& ref,
                                const char* ref_name, int64_t B, int64_t T) {
  TORCH_CHECK_VALUE(cs.dim() == 1 && cs.numel() >= 2, op,
                    ": cu_seqlens must be 1-D with at least 2 offsets, got shape ", cs.sizes());
  TORCH_CHECK_TYPE(cs.scalar_type() == at::kInt || cs.scalar_type() == at::kLong, op,
                   ": cu_seqlens must be int32 or int64, got ", dtype_name(cs.scalar_type()));
  TORCH_CHECK_VALUE(B == 1, op, ": with cu_seqlens the batch size must be 1, got B = ", B);
  TORCH_CHECK_VALUE(cs.device() == ref.device(), op, ": cu_seqlens is on ", cs.device(), " but ",
                    ref_name, " is on ", ref.device());
  const int64_t N = cs.numel() - 1;
  if (cs.device().is_cpu() || debug_checks()) {  // value checks read the tensor
    const at::Tensor c = cs.to(at::kCPU, at::kLong);
    const int64_t* p = c.data_ptr<int64_t>();
    TORCH_CHECK_VALUE(p[0] == 0, op, ": cu_seqlens must start at 0, got ", p[0]);
    TORCH_CHECK_VALUE(p[N] == T, op, ": cu_seqlens must end at T = ", T, ", got ", p[N]);
    for (int64_t i = 0; i < N; ++i)
      TORCH_CHECK_VALUE(p[i + 1] >= p[i], op, ": cu_seqlens must be non-decreasing, got ", p[i],
                        " then ", p[i + 1], " at index ", i + 1);
  }
  return N;
}

}  // namespace nlcore::glue
