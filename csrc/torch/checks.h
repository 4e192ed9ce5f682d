// Argument checks shared by the torch glue: messages name the argument, what was seen and
// what was wanted.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>

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

}  // namespace nlcore::glue
