// Shared by the CUDA glue: nlcore C API status -> Python exception, dtype mapping.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "nlcore/status.h"

namespace nlcore::glue {

inline nlcore_dtype_t to_nlcore_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return NLCORE_DTYPE_FLOAT32;
    case at::kBFloat16: return NLCORE_DTYPE_BFLOAT16;
    case at::kHalf: return NLCORE_DTYPE_FLOAT16;
    case at::kInt: return NLCORE_DTYPE_INT32;
    case at::kLong: return NLCORE_DTYPE_INT64;
    default: return NLCORE_DTYPE_FLOAT64;
  }
}

// Throws ValueError (INVALID_VALUE), NotImplementedError (NOT_SUPPORTED) or RuntimeError,
// carrying the library's own message.
inline void check_status(nlcore_status_t st, const char* what) {
  if (st == NLCORE_STATUS_SUCCESS) return;
  const char* msg = nlcore_last_error_message();
  if (st == NLCORE_STATUS_INVALID_VALUE) TORCH_CHECK_VALUE(false, what, ": ", msg);
  if (st == NLCORE_STATUS_NOT_SUPPORTED) TORCH_CHECK_NOT_IMPLEMENTED(false, what, ": ", msg);
  TORCH_CHECK(false, what, ": ", nlcore_status_string(st), ": ", msg);
}

}  // namespace nlcore::glue
