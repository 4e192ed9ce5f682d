/*
 * nlcore C API — status codes and shared types.
 *
 * Every nlcore entry point returns an nlcore_status_t. On failure a human-readable
 * message describing the first problem seen on the calling thread is available from
 * nlcore_last_error_message() until the next failing call on that thread.
 * No exception ever crosses this boundary.
 */
#ifndef NLCORE_STATUS_H_
#define NLCORE_STATUS_H_

#include <stddef.h>
#include <stdint.h>

#define NLCORE_VERSION_MAJOR 0
#define NLCORE_VERSION_MINOR 1
#define NLCORE_VERSION_PATCH 0

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define NLCORE_API __declspec(dllexport)
#else
#define NLCORE_API __attribute__((visibility("default")))
#endif

typedef enum nlcore_status_t {
  NLCORE_STATUS_SUCCESS = 0,
  NLCORE_STATUS_INVALID_VALUE = 1,          /* a problem field or pointer is invalid */
  NLCORE_STATUS_NOT_SUPPORTED = 2,          /* valid, but no kernel in this build handles it */
  NLCORE_STATUS_INSUFFICIENT_WORKSPACE = 3, /* workspace smaller than *_workspace_size() */
  NLCORE_STATUS_CUDA_ERROR = 4,             /* a CUDA runtime call or launch failed */
  NLCORE_STATUS_INTERNAL_ERROR = 5
} nlcore_status_t;

/* Element types of tensors crossing the API. */
typedef enum nlcore_dtype_t {
  NLCORE_DTYPE_FLOAT32 = 0,
  NLCORE_DTYPE_BFLOAT16 = 1,
  NLCORE_DTYPE_FLOAT16 = 2,
  NLCORE_DTYPE_FLOAT64 = 3, /* accepted by no CUDA kernel; listed for completeness */
  NLCORE_DTYPE_INT32 = 4,   /* index tensors (cu_seqlens) */
  NLCORE_DTYPE_INT64 = 5
} nlcore_dtype_t;

/* Short fixed name of a status code ("NLCORE_STATUS_SUCCESS", ...). Never NULL. */
NLCORE_API const char* nlcore_status_string(nlcore_status_t status);

/* Detailed message of the last failing nlcore call on this thread ("" if none). */
NLCORE_API const char* nlcore_last_error_message(void);

/* Library version as MAJOR*10000 + MINOR*100 + PATCH. */
NLCORE_API int nlcore_version(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* NLCORE_STATUS_H_ */
