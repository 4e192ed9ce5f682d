// The tiny check harness of the host-only C++ tests: CHECK(cond, printf-args) counts passes and
// failures; check_summary() prints "N passed, M failed" and returns the exit status.
#pragma once

#include <cstdio>

namespace nlcore_test {
inline int g_pass = 0, g_fail = 0;

inline int check_summary() {
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail == 0 ? 0 : 1;
}
}  // namespace nlcore_test

#define CHECK(cond, ...)                                           \
  do {                                                             \
    if (cond) {                                                    \
      ++nlcore_test::g_pass;                                       \
    } else {                                                       \
      ++nlcore_test::g_fail;                                       \
      std::printf("FAIL %s:%d: %s — ", __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                                    \
      std::printf("\n");                                           \
    }                                                              \
  } while (0)
