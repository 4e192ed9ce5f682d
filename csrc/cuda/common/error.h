// Internal helpers of the nlcore C library: recording the per-thread error message.
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

}  // namespace nlcore::detail

#endif  // NLCORE_CUDA_COMMON_ERROR_H_
