// nlcore C API: status strings, the per-thread last-error message and the version.
#include <cstdarg>
#include <cstdio>
#include <string>

#include "common/error.h"
#include "nlcore/status.h"

namespace nlcore::detail {
namespace {
thread_local std::string g_last_error;
}  // namespace

nlcore_status_t fail(nlcore_status_t status, const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  const int n = std::vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  try {
    g_last_error.assign(buf, n < 0 ? 0 : (n < static_cast<int>(sizeof(buf)) ? n : sizeof(buf) - 1));
  } catch (...) {
    // Out of memory while recording the message: keep the status, drop the text.
  }
  return status;
}

}  // namespace nlcore::detail

extern "C" {

NLCORE_API const char* nlcore_status_string(nlcore_status_t status) {
  switch (status) {
    case NLCORE_STATUS_SUCCESS: return "NLCORE_STATUS_SUCCESS";
    case NLCORE_STATUS_INVALID_VALUE: return "NLCORE_STATUS_INVALID_VALUE";
    case NLCORE_STATUS_NOT_SUPPORTED: return "NLCORE_STATUS_NOT_SUPPORTED";
    case NLCORE_STATUS_INSUFFICIENT_WORKSPACE: return "NLCORE_STATUS_INSUFFICIENT_WORKSPACE";
    case NLCORE_STATUS_CUDA_ERROR: return "NLCORE_STATUS_CUDA_ERROR";
    case NLCORE_STATUS_INTERNAL_ERROR: return "NLCORE_STATUS_INTERNAL_ERROR";
  }
  return "NLCORE_STATUS_UNKNOWN";
}

NLCORE_API const char* nlcore_last_error_message(void) {
  return nlcore::detail::g_last_error.c_str();
}

NLCORE_API int nlcore_version(void) {
  return NLCORE_VERSION_MAJOR * 10000 + NLCORE_VERSION_MINOR * 100 + NLCORE_VERSION_PATCH;
}

}  // extern "C"
