// Internal helpers of the nlcore C library: recording the per-thread error message, naming
// dtypes in messages.
// Host-only, framework-free; not part of the public API (hidden visibility).
#ifndef NLCORE_CUDA_COMMON_ERROR_H_
#define NLCORE_CUDA_COMMON_ERROR_H_

#include "nlcore/status.h"

namespace nlcore::detail {

// Formats a message (printf-style) into the calling thread's last-error slot and returns
// `status` unchanged, so a failing check reads `return fail(STATUS, "...", ...)`.
nlcore_status_t fail(nlcore_status_t status, const char* fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

// Name of an nlcore_dtype_t value for messages ("FLOAT32", ...; "unknown" otherwise).
inline const char* dtype_name(int d) {
  switch (d) {
    case NLCORE_DTYPE_FLOAT32: return "FLOAT32";
    case NLCORE_DTYPE_BFLOAT16: return "BFLOAT16";
    case NLCORE_DTYPE_FLOAT16: return "FLOAT16";
    case NLCORE_DTYPE_FLOAT64: return "FLOAT64";
    case NLCORE_DTYPE_INT32: return "INT32";
    case NLCORE_DTYPE_INT64: return "INT64";
  }
  return "unknown";
}

}  // namespace nlcore::detail

#endif  // NLCORE_CUDA_COMMON_ERROR_H_
