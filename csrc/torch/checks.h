// Argument checks shared by the torch glue: messages name the argument, what was seen and
// what was wanted.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <string>

namespace nlcore::glue {

inline bool is_sequence_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kDouble;
}

inline std::string dtype_name(at::ScalarType t) { return c10::toString(t); }

}  // namespace nlcore::glue
