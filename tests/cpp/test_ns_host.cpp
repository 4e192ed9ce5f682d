// Host-only tests of the nlcore C library (no GPU needed): validation of every problem field
// (status + message), workspace sizes, path selection, and the tiling / fragment helpers of
// the Newton–Schulz kernels. Prints "N passed, M failed"; exits non-zero on failure.
#include <sys/stat.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "newton_schulz/tiling.cuh"
#include "nlcore/nlcore.h"
#include "check.h"

namespace {

const float kMuon[3] = {3.4445f, -4.7750f, 2.0315f};
std::vector<float> g_coef;

nlcore_ns_problem_t base(int64_t batch = 4, int64_t rows = 64, int64_t cols = 96, int steps = 5) {
  g_coef.assign(3 * static_cast<size_t>(steps), 0.0f);
  for (int s = 0; s < steps; ++s)
    for (int k = 0; k < 3; ++k) g_coef[3 * s + k] = kMuon[k];
  nlcore_ns_problem_t p{};
  p.batch = batch;
  p.rows = rows;
  p.cols = cols;
  p.io_dtype = NLCORE_DTYPE_FLOAT32;
  p.compute_dtype = NLCORE_DTYPE_BFLOAT16;
  p.steps = steps;
  p.coefficients = g_coef.data();
  p.eps = 1e-7f;
  p.norm_scale = 1.0f;
  p.norm_additive = 0;
  p.flags = NLCORE_NS_FLAG_DEFAULT;
  return p;
}

bool contains(const char* hay, const char* needle) { return std::strstr(hay, needle) != nullptr; }

// All three entry points must reject `p` with `want` and a message containing every needle.
void expect_reject(const char* name, const nlcore_ns_problem_t* p, nlcore_status_t want,
                   std::vector<const char*> needles) {
  size_t ws = 12345;
  int32_t path = -7;
  void* fake_g = reinterpret_cast<void*>(uintptr_t{0x100000});
  void* fake_o = reinterpret_cast<void*>(uintptr_t{0x900000});
  nlcore_status_t s1 = nlcore_newton_schulz_workspace_size(p, &ws);
  std::string m1 = nlcore_last_error_message();
  nlcore_status_t s2 = nlcore_newton_schulz_path(p, &path);
  std::string m2 = nlcore_last_error_message();
  nlcore_status_t s3 = nlcore_newton_schulz_forward(p, fake_g, fake_o, nullptr, 0, nullptr);
  std::string m3 = nlcore_last_error_message();
  CHECK(s1 == want && s2 == want && s3 == want, "%s: got %s/%s/%s, want %s (msg: %s)", name,
        nlcore_status_string(s1), nlcore_status_string(s2), nlcore_status_string(s3),
        nlcore_status_string(want), m3.c_str());
  CHECK(ws == 12345 && path == -7, "%s: outputs written on failure", name);
  for (const char* n : needles)
    CHECK(contains(m1.c_str(), n) && contains(m2.c_str(), n) && contains(m3.c_str(), n),
          "%s: message '%s' lacks '%s'", name, m3.c_str(), n);
}

int path_of(const nlcore_ns_problem_t& p, nlcore_status_t* st = nullptr) {
  int32_t path = -1;
  nlcore_status_t s = nlcore_newton_schulz_path(&p, &path);
  if (st) *st = s;
  return s == NLCORE_STATUS_SUCCESS ? path : -1;
}

size_t ws_of(const nlcore_ns_problem_t& p) {
  size_t ws = 0;
  nlcore_status_t s = nlcore_newton_schulz_workspace_size(&p, &ws);
  return s == NLCORE_STATUS_SUCCESS ? ws : SIZE_MAX;
}

void test_status_api() {
  CHECK(nlcore_version() == NLCORE_VERSION_MAJOR * 10000 + NLCORE_VERSION_MINOR * 100 +
                                NLCORE_VERSION_PATCH, "version %d", nlcore_version());
  CHECK(std::strcmp(nlcore_status_string(NLCORE_STATUS_SUCCESS), "NLCORE_STATUS_SUCCESS") == 0, "success");
  CHECK(std::strcmp(nlcore_status_string(NLCORE_STATUS_INSUFFICIENT_WORKSPACE),
                    "NLCORE_STATUS_INSUFFICIENT_WORKSPACE") == 0, "insufficient");
  CHECK(nlcore_status_string(static_cast<nlcore_status_t>(99)) != nullptr, "unknown status");
  CHECK(nlcore_last_error_message() != nullptr && nlcore_last_error_message()[0] == '\0',
        "initial message '%s'", nlcore_last_error_message());
}

void test_validation() {
  expect_reject("NULL problem", nullptr, NLCORE_STATUS_INVALID_VALUE, {"problem"});
  nlcore_ns_problem_t p;
  p = base(); p.batch = 0;
  expect_reject("batch 0", &p, NLCORE_STATUS_INVALID_VALUE, {"batch", "0"});
  p = base(); p.batch = -3;
  expect_reject("batch -3", &p, NLCORE_STATUS_INVALID_VALUE, {"batch", "-3"});
  p = base(); p.rows = 0;
  expect_reject("rows 0", &p, NLCORE_STATUS_INVALID_VALUE, {"rows", "0"});
  p = base(); p.cols = -1;
  expect_reject("cols -1", &p, NLCORE_STATUS_INVALID_VALUE, {"cols", "-1"});
  p = base(); p.io_dtype = static_cast<nlcore_dtype_t>(7);
  expect_reject("io_dtype 7", &p, NLCORE_STATUS_INVALID_VALUE, {"io_dtype", "7"});
  p = base(); p.io_dtype = NLCORE_DTYPE_FLOAT64;
  expect_reject("io_dtype f64", &p, NLCORE_STATUS_NOT_SUPPORTED, {"io_dtype", "FLOAT64"});
  p = base(); p.compute_dtype = static_cast<nlcore_dtype_t>(-2);
  expect_reject("compute_dtype -2", &p, NLCORE_STATUS_INVALID_VALUE, {"compute_dtype", "-2"});
  p = base(); p.compute_dtype = NLCORE_DTYPE_FLOAT64;
  expect_reject("compute_dtype f64", &p, NLCORE_STATUS_NOT_SUPPORTED, {"compute_dtype", "FLOAT64"});
  p = base(); p.steps = 0;
  expect_reject("steps 0", &p, NLCORE_STATUS_INVALID_VALUE, {"steps", "0"});
  p = base(); p.steps = NLCORE_NS_MAX_STEPS + 1;
  expect_reject("steps 1025", &p, NLCORE_STATUS_INVALID_VALUE, {"steps", "1025"});
  p = base(); p.coefficients = nullptr;
  expect_reject("coefficients NULL", &p, NLCORE_STATUS_INVALID_VALUE, {"coefficients", "NULL"});
  p = base(); g_coef[3 * 1 + 2] = std::numeric_limits<float>::quiet_NaN();
  expect_reject("coefficient NaN", &p, NLCORE_STATUS_INVALID_VALUE, {"coefficients[1][2]", "nan"});
  p = base(); g_coef[3 * 4 + 0] = -std::numeric_limits<float>::infinity();
  expect_reject("coefficient -inf", &p, NLCORE_STATUS_INVALID_VALUE, {"coefficients[4][0]", "inf"});
  p = base(); p.eps = -1e-3f;
  expect_reject("eps < 0", &p, NLCORE_STATUS_INVALID_VALUE, {"eps", "-0.001"});
  p = base(); p.eps = std::numeric_limits<float>::quiet_NaN();
  expect_reject("eps NaN", &p, NLCORE_STATUS_INVALID_VALUE, {"eps", "nan"});
  p = base(); p.norm_scale = 0.0f;
  expect_reject("norm_scale 0", &p, NLCORE_STATUS_INVALID_VALUE, {"norm_scale", "0"});
  p = base(); p.norm_scale = -1.01f;
  expect_reject("norm_scale < 0", &p, NLCORE_STATUS_INVALID_VALUE, {"norm_scale", "-1.01"});
  p = base(); p.norm_scale = std::numeric_limits<float>::infinity();
  expect_reject("norm_scale inf", &p, NLCORE_STATUS_INVALID_VALUE, {"norm_scale", "inf"});
  p = base(); p.norm_additive = 2;
  expect_reject("norm_additive 2", &p, NLCORE_STATUS_INVALID_VALUE, {"norm_additive", "2"});
  p = base(); p.flags = 0x100;
  expect_reject("unknown flag", &p, NLCORE_STATUS_INVALID_VALUE, {"flags", "0x100"});
  p = base(); p.flags = NLCORE_NS_FLAG_FORCE_SMALL | NLCORE_NS_FLAG_FORCE_GENERAL;
  expect_reject("force both", &p, NLCORE_STATUS_INVALID_VALUE, {"flags", "FORCE_SMALL", "FORCE_GENERAL"});
  p = base(); p.flags = NLCORE_NS_FLAG_CLUSTER | NLCORE_NS_FLAG_FORCE_GENERAL;
  expect_reject("cluster+force", &p, NLCORE_STATUS_INVALID_VALUE, {"flags", "CLUSTER"});
  p = base(); p.flags = NLCORE_NS_FLAG_CLUSTER | NLCORE_NS_FLAG_FORCE_SMALL;
  expect_reject("cluster+force small", &p, NLCORE_STATUS_INVALID_VALUE, {"flags", "CLUSTER", "FORCE_SMALL"});
  p = base(2, 200, 256); p.flags = NLCORE_NS_FLAG_CLUSTER | NLCORE_NS_FLAG_FORCE_GENERAL;
  expect_reject("cluster+force general 200", &p, NLCORE_STATUS_INVALID_VALUE, {"CLUSTER", "FORCE_GENERAL"});
  p = base(); p.flags = NLCORE_NS_FLAG_CLUSTER;  // 64 x 96: the small kernel's domain
  expect_reject("cluster 64x96", &p, NLCORE_STATUS_NOT_SUPPORTED, {"CLUSTER", "64", "96", "128 < min"});
  p = base(2, 128, 256); p.flags = NLCORE_NS_FLAG_CLUSTER;
  expect_reject("cluster m 128", &p, NLCORE_STATUS_NOT_SUPPORTED, {"CLUSTER", "128 < min"});
  p = base(2, 200, 257); p.flags = NLCORE_NS_FLAG_CLUSTER;
  expect_reject("cluster n 257", &p, NLCORE_STATUS_NOT_SUPPORTED, {"CLUSTER", "257", "<= 256"});
  p = base(2, 300, 200); p.flags = NLCORE_NS_FLAG_CLUSTER;
  expect_reject("cluster 300x200", &p, NLCORE_STATUS_NOT_SUPPORTED, {"CLUSTER", "300"});
  p = base(2, 200, 200); p.compute_dtype = NLCORE_DTYPE_FLOAT32; p.flags = NLCORE_NS_FLAG_CLUSTER;
  expect_reject("cluster fp32", &p, NLCORE_STATUS_NOT_SUPPORTED, {"CLUSTER", "FLOAT32"});
  p = base(2, 200, 200); p.flags = NLCORE_NS_FLAG_CLUSTER | NLCORE_NS_FLAG_SYMMETRIC;
  expect_reject("cluster+symmetric", &p, NLCORE_STATUS_NOT_SUPPORTED, {"CLUSTER", "SYMMETRIC"});
  p = base(int64_t{1} << 30, 200, 200); p.flags = NLCORE_NS_FLAG_CLUSTER;
  expect_reject("cluster batch 2^30", &p, NLCORE_STATUS_NOT_SUPPORTED, {"CLUSTER", "batch"});
  p = base(2, 200, 200, 100); p.flags = NLCORE_NS_FLAG_CLUSTER;
  for (int s = 0; s < 100; ++s) g_coef[3 * s] = 3.0f + 0.001f * s;
  expect_reject("cluster 100 runs", &p, NLCORE_STATUS_NOT_SUPPORTED, {"CLUSTER", "64 runs"});
  p = base(2, 200, 300); p.flags = NLCORE_NS_FLAG_FORCE_SMALL;
  expect_reject("force small 200x300", &p, NLCORE_STATUS_NOT_SUPPORTED, {"FORCE_SMALL", "200", "300"});
  p = base(2, 64, 512); p.flags = NLCORE_NS_FLAG_FORCE_SMALL;
  expect_reject("force small n 512", &p, NLCORE_STATUS_NOT_SUPPORTED, {"FORCE_SMALL", "512"});
  p = base(); p.compute_dtype = NLCORE_DTYPE_FLOAT32; p.flags = NLCORE_NS_FLAG_FORCE_SMALL;
  expect_reject("force small fp32", &p, NLCORE_STATUS_NOT_SUPPORTED, {"FORCE_SMALL", "FLOAT32"});
  p = base(2, 300, 200); p.compute_dtype = NLCORE_DTYPE_FLOAT32; p.flags = NLCORE_NS_FLAG_SYMMETRIC;
  expect_reject("symmetric general fp32", &p, NLCORE_STATUS_NOT_SUPPORTED, {"SYMMETRIC", "FLOAT32"});
  p = base(); p.compute_dtype = NLCORE_DTYPE_FLOAT32;
  p.flags = NLCORE_NS_FLAG_SYMMETRIC | NLCORE_NS_FLAG_FORCE_GENERAL;
  expect_reject("symmetric forced general fp32", &p, NLCORE_STATUS_NOT_SUPPORTED, {"SYMMETRIC", "FLOAT32"});
  p = base(int64_t{1} << 40, int64_t{1} << 20, int64_t{1} << 20);
  expect_reject("too large", &p, NLCORE_STATUS_INVALID_VALUE, {"too large"});
#if defined(NLCORE_KERNEL_SET_CI)
  p = base(); p.io_dtype = NLCORE_DTYPE_FLOAT16; p.flags = NLCORE_NS_FLAG_FORCE_SMALL;
  expect_reject("ci: small fp16 io", &p, NLCORE_STATUS_NOT_SUPPORTED, {"not built", "ci"});
  p = base(); p.compute_dtype = NLCORE_DTYPE_FLOAT16;
  expect_reject("ci: fp16 compute", &p, NLCORE_STATUS_NOT_SUPPORTED, {"not built", "FLOAT16"});
  p = base(2, 300, 200); p.compute_dtype = NLCORE_DTYPE_FLOAT16; p.flags = NLCORE_NS_FLAG_SYMMETRIC;
  expect_reject("ci: symmetric fp16", &p, NLCORE_STATUS_NOT_SUPPORTED, {"not built", "FLOAT16"});
  p = base(2, 200, 256); p.io_dtype = NLCORE_DTYPE_FLOAT16; p.flags = NLCORE_NS_FLAG_CLUSTER;
  expect_reject("ci: cluster fp16 io", &p, NLCORE_STATUS_NOT_SUPPORTED, {"CLUSTER", "not built", "ci"});
  p = base(2, 200, 256); p.compute_dtype = NLCORE_DTYPE_FLOAT16; p.flags = NLCORE_NS_FLAG_CLUSTER;
  expect_reject("ci: cluster fp16 compute", &p, NLCORE_STATUS_NOT_SUPPORTED, {"CLUSTER", "not built"});
#endif

  // many distinct coefficient triples: the small kernel carries at most 64 runs
  p = base(2, 32, 32, 100);
  for (int s = 0; s < 100; ++s) g_coef[3 * s] = 3.0f + 0.001f * s;
  CHECK(path_of(p) == 1, "100 distinct triples should take the GEMM path");
  p.flags = NLCORE_NS_FLAG_FORCE_SMALL;
  expect_reject("force small 100 runs", &p, NLCORE_STATUS_NOT_SUPPORTED, {"64 runs"});

  // NULL outputs of the query functions
  p = base();
  CHECK(nlcore_newton_schulz_workspace_size(&p, nullptr) == NLCORE_STATUS_INVALID_VALUE &&
            contains(nlcore_last_error_message(), "workspace_bytes"), "ws NULL: %s", nlcore_last_error_message());
  CHECK(nlcore_newton_schulz_path(&p, nullptr) == NLCORE_STATUS_INVALID_VALUE &&
            contains(nlcore_last_error_message(), "path"), "path NULL: %s", nlcore_last_error_message());
}

void test_forward_pointers() {
  void* g = reinterpret_cast<void*>(uintptr_t{0x100000});
  void* o = reinterpret_cast<void*>(uintptr_t{0x900000});
  nlcore_ns_problem_t p = base();  // small path: workspace 0
  nlcore_status_t s = nlcore_newton_schulz_forward(&p, nullptr, o, nullptr, 0, nullptr);
  CHECK(s == NLCORE_STATUS_INVALID_VALUE && contains(nlcore_last_error_message(), "G is NULL"), "G NULL: %s", nlcore_last_error_message());
  s = nlcore_newton_schulz_forward(&p, g, nullptr, nullptr, 0, nullptr);
  CHECK(s == NLCORE_STATUS_INVALID_VALUE && contains(nlcore_last_error_message(), "O is NULL"), "O NULL: %s", nlcore_last_error_message());
  s = nlcore_newton_schulz_forward(&p, g, g, nullptr, 0, nullptr);
  CHECK(s == NLCORE_STATUS_INVALID_VALUE && contains(nlcore_last_error_message(), "O == G"), "alias: %s", nlcore_last_error_message());
  s = nlcore_newton_schulz_forward(&p, g, static_cast<char*>(g) + 64, nullptr, 0, nullptr);
  CHECK(s == NLCORE_STATUS_INVALID_VALUE && contains(nlcore_last_error_message(), "overlaps"), "overlap: %s", nlcore_last_error_message());
  s = nlcore_newton_schulz_forward(&p, static_cast<char*>(g) + 2, o, nullptr, 0, nullptr);
  CHECK(s == NLCORE_STATUS_INVALID_VALUE && contains(nlcore_last_error_message(), "aligned"), "misaligned G: %s", nlcore_last_error_message());

  p = base(3, 300, 200);  // general path
  const size_t need = ws_of(p);
  CHECK(need > 0 && need != SIZE_MAX, "general workspace %zu", need);
  void* ws = reinterpret_cast<void*>(uintptr_t{0x40000000});
  s = nlcore_newton_schulz_forward(&p, g, o, nullptr, need, nullptr);
  CHECK(s == NLCORE_STATUS_INVALID_VALUE && contains(nlcore_last_error_message(), "workspace is NULL"), "ws NULL: %s", nlcore_last_error_message());
  s = nlcore_newton_schulz_forward(&p, g, o, static_cast<char*>(ws) + 128, need, nullptr);
  CHECK(s == NLCORE_STATUS_INVALID_VALUE && contains(nlcore_last_error_message(), "256-byte aligned"), "ws misaligned: %s", nlcore_last_error_message());
  s = nlcore_newton_schulz_forward(&p, g, o, ws, need - 1, nullptr);
  CHECK(s == NLCORE_STATUS_INSUFFICIENT_WORKSPACE && contains(nlcore_last_error_message(), "workspace_bytes"), "ws small: %s", nlcore_last_error_message());

  // Without a GPU a valid call must fail cleanly with CUDA_ERROR (never crash). Skipped when
  // a GPU device node exists (the fake pointers would then reach a kernel).
  struct stat sb;
  if (stat("/dev/nvidia0", &sb) != 0 && stat("/dev/nvidiactl", &sb) != 0) {
    p = base();
    s = nlcore_newton_schulz_forward(&p, g, o, nullptr, 0, nullptr);
    CHECK(s == NLCORE_STATUS_CUDA_ERROR && contains(nlcore_last_error_message(), "failed"),
          "no-GPU small: %s %s", nlcore_status_string(s), nlcore_last_error_message());
    p = base(3, 300, 200);
    s = nlcore_newton_schulz_forward(&p, g, o, ws, need, nullptr);
    CHECK(s == NLCORE_STATUS_CUDA_ERROR && nlcore_last_error_message()[0] != '\0',
          "no-GPU general: %s %s", nlcore_status_string(s), nlcore_last_error_message());
    p = base(3, 300, 200);
    p.flags = NLCORE_NS_FLAG_SYMMETRIC;
    s = nlcore_newton_schulz_forward(&p, g, o, ws, need, nullptr);
    CHECK(s == NLCORE_STATUS_CUDA_ERROR && nlcore_last_error_message()[0] != '\0',
          "no-GPU symmetric general: %s %s", nlcore_status_string(s), nlcore_last_error_message());
    p = base(3, 200, 256);
    p.flags = NLCORE_NS_FLAG_CLUSTER;
    s = nlcore_newton_schulz_forward(&p, g, o, nullptr, 0, nullptr);
    CHECK(s == NLCORE_STATUS_CUDA_ERROR && nlcore_last_error_message()[0] != '\0',
          "no-GPU cluster: %s %s", nlcore_status_string(s), nlcore_last_error_message());
  }
}

void test_paths_and_workspace() {
  struct Case { int64_t rows, cols; int compute; uint32_t flags; int want; };
  const Case cases[] = {
      {64, 96, NLCORE_DTYPE_BFLOAT16, 0, 0},      {128, 256, NLCORE_DTYPE_BFLOAT16, 0, 0},
      {256, 128, NLCORE_DTYPE_BFLOAT16, 0, 0},    {1, 1, NLCORE_DTYPE_BFLOAT16, 0, 0},
      {9, 1, NLCORE_DTYPE_BFLOAT16, 0, 0},        {129, 256, NLCORE_DTYPE_BFLOAT16, 0, 1},
      {128, 257, NLCORE_DTYPE_BFLOAT16, 0, 1},    {257, 100, NLCORE_DTYPE_BFLOAT16, 0, 1},
      {1024, 4096, NLCORE_DTYPE_BFLOAT16, 0, 1},  {64, 96, NLCORE_DTYPE_FLOAT32, 0, 1},
      {64, 96, NLCORE_DTYPE_BFLOAT16, NLCORE_NS_FLAG_FORCE_GENERAL, 1},
      {64, 96, NLCORE_DTYPE_BFLOAT16, NLCORE_NS_FLAG_FORCE_SMALL, 0},
      {64, 96, NLCORE_DTYPE_BFLOAT16, NLCORE_NS_FLAG_SYMMETRIC, 0},
      // SYMMETRIC on the GEMM path (upper-triangle GEMMs + mirror)
      {300, 200, NLCORE_DTYPE_BFLOAT16, NLCORE_NS_FLAG_SYMMETRIC, 1},
      {1024, 4096, NLCORE_DTYPE_BFLOAT16, NLCORE_NS_FLAG_SYMMETRIC, 1},
      {64, 96, NLCORE_DTYPE_BFLOAT16, NLCORE_NS_FLAG_SYMMETRIC | NLCORE_NS_FLAG_FORCE_GENERAL, 1},
#if !defined(NLCORE_KERNEL_SET_CI)
      {300, 200, NLCORE_DTYPE_FLOAT16, NLCORE_NS_FLAG_SYMMETRIC, 1},
      {200, 256, NLCORE_DTYPE_FLOAT16, NLCORE_NS_FLAG_CLUSTER, 2},
#endif
      // CLUSTER: 128 < min <= 256, max <= 256, either orientation
      {129, 129, NLCORE_DTYPE_BFLOAT16, NLCORE_NS_FLAG_CLUSTER, 2},
      {200, 256, NLCORE_DTYPE_BFLOAT16, NLCORE_NS_FLAG_CLUSTER, 2},
      {256, 200, NLCORE_DTYPE_BFLOAT16, NLCORE_NS_FLAG_CLUSTER, 2},
      {256, 256, NLCORE_DTYPE_BFLOAT16, NLCORE_NS_FLAG_CLUSTER, 2},
      {200, 256, NLCORE_DTYPE_BFLOAT16, 0, 1},  // never by default
  };
  for (const Case& c : cases) {
    nlcore_ns_problem_t p = base(3, c.rows, c.cols);
    p.compute_dtype = static_cast<nlcore_dtype_t>(c.compute);
    p.flags = c.flags;
    nlcore_status_t st;
    const int got = path_of(p, &st);
    CHECK(got == c.want, "path %lldx%lld compute %d flags %u: got %d (%s: %s)", (long long)c.rows,
          (long long)c.cols, c.compute, c.flags, got, nlcore_status_string(st), nlcore_last_error_message());
    const size_t ws = ws_of(p);
    if (c.want == 0 || c.want == 2) CHECK(ws == 0, "on-chip path workspace %zu", ws);
    if (c.want == 1) CHECK(ws > 0 && ws % 256 == 0 && ws != SIZE_MAX, "general workspace %zu", ws);
  }
  // SYMMETRIC does not change the general workspace.
  for (int64_t m : {200, 1000}) {
    nlcore_ns_problem_t a = base(3, m, 1500), b = base(3, m, 1500);
    b.flags = NLCORE_NS_FLAG_SYMMETRIC;
    CHECK(ws_of(a) == ws_of(b) && ws_of(a) != SIZE_MAX, "symmetric workspace %zu vs %zu", ws_of(b), ws_of(a));
  }
  // Monotone in batch, rows, cols; large enough for two X buffers, A, B.
  size_t prev = 0;
  for (int64_t b = 1; b <= 9; b += 2) {
    nlcore_ns_problem_t p = base(b, 200, 300);
    const size_t ws = ws_of(p);
    CHECK(ws > prev && ws % 256 == 0, "batch monotone %zu <= %zu", ws, prev);
    CHECK(ws >= static_cast<size_t>(b) * (2 * 200 * 300 + 2 * 200 * 200) * 2, "too small %zu", ws);
    prev = ws;
  }
  prev = 0;
  for (int64_t n = 130; n <= 2000; n += 97) {
    nlcore_ns_problem_t p = base(2, 130, n);
    const size_t ws = ws_of(p);
    CHECK(ws >= prev && ws % 256 == 0, "cols monotone at %lld: %zu < %zu", (long long)n, ws, prev);
    prev = ws;
  }
  prev = 0;
  for (int64_t m = 130; m <= 2000; m += 97) {
    nlcore_ns_problem_t p = base(2, m, 2000);
    const size_t ws = ws_of(p);
    CHECK(ws >= prev && ws % 256 == 0, "rows monotone at %lld: %zu < %zu", (long long)m, ws, prev);
    prev = ws;
  }
  // transposition symmetry: rows x cols and cols x rows need the same workspace
  nlcore_ns_problem_t p1 = base(2, 300, 700), p2 = base(2, 700, 300);
  CHECK(ws_of(p1) == ws_of(p2), "transpose workspace %zu vs %zu", ws_of(p1), ws_of(p2));
  // fp32 compute needs twice the element bytes of bf16 (X, A, B parts)
  nlcore_ns_problem_t p3 = base(2, 300, 700);
  p3.compute_dtype = NLCORE_DTYPE_FLOAT32;
  CHECK(ws_of(p3) > ws_of(p1), "fp32 workspace %zu vs bf16 %zu", ws_of(p3), ws_of(p1));
}

void test_tiling() {
  using namespace nlcore::ns;
  // Geometry and shared memory over the whole small-path domain.
  size_t max_smem = 0;
  for (int m = 1; m <= kSmallMaxM; ++m)
    for (int n = m; n <= kSmallMaxN; n += (n < 40 ? 1 : 7)) {
      const SmallGeometry g = small_geometry(m, n);
      bool ok = g.m_pad >= m && g.m_pad % 32 == 0 && g.m_pad - m < 32 && g.n_pad >= n &&
                g.n_pad % 16 == 0 && g.n_pad - n < 16 && g.ldx % 8 == 0 && g.lda % 8 == 0 &&
                g.m_pad <= kSmallMaxM && g.n_pad <= kSmallMaxN;
      if (!ok) CHECK(ok, "geometry m=%d n=%d", m, n);
      const size_t b = small_smem_bytes(g, 2);
      if (b > max_smem) max_smem = b;
    }
  CHECK(max_smem <= kSmemOptinSm80, "max smem %zu", max_smem);
  CHECK(max_smem == small_smem_bytes(small_geometry(128, 256), 2), "max smem at the limits");
  CHECK(small_smem_bytes(small_geometry(128, 256), 2) == 137472, "smem 128x256 = %zu",
        small_smem_bytes(small_geometry(128, 256), 2));
  CHECK(small_shape_ok(128, 256) && !small_shape_ok(129, 256) && !small_shape_ok(128, 257) &&
            small_shape_ok(1, 1), "small_shape_ok");

  // Tile enumeration: full grid, and the upper triangle exactly once.
  for (int m_pad = 32; m_pad <= kSmallMaxM; m_pad += 32) {
    const int t = m_pad / 32;
    std::vector<int> seen(t * t, 0);
    for (int idx = 0; idx < small_ab_tiles(m_pad, false); ++idx) {
      int ti, tj;
      small_ab_tile_coords(idx, m_pad, false, &ti, &tj);
      if (ti >= 0 && ti < t && tj >= 0 && tj < t) seen[ti * t + tj]++;
    }
    bool ok = true;
    for (int v : seen) ok &= v == 1;
    CHECK(ok, "full tiles m_pad=%d", m_pad);
    std::fill(seen.begin(), seen.end(), 0);
    for (int idx = 0; idx < small_ab_tiles(m_pad, true); ++idx) {
      int ti, tj;
      small_ab_tile_coords(idx, m_pad, true, &ti, &tj);
      if (ti >= 0 && ti < t && tj >= 0 && tj < t) seen[ti * t + tj]++;
    }
    ok = true;
    for (int i = 0; i < t; ++i)
      for (int j = 0; j < t; ++j) ok &= seen[i * t + j] == (i <= j ? 1 : 0);
    CHECK(ok, "upper tiles m_pad=%d", m_pad);
  }

  // Upper-triangle tile enumeration (symmetric GEMM swizzle, mirror kernel): every tile with
  // ti <= tj exactly once, none below the diagonal, in row-major order; exhaustive for small
  // grids, sampled (against upper_row_start) for large ones.
  for (int t = 1; t <= 300; ++t) {
    std::vector<int> seen(static_cast<size_t>(t) * t, 0);
    bool ok = upper_tile_count(t) == static_cast<int64_t>(t) * (t + 1) / 2;
    int pi = 0, pj = -1;
    for (int64_t idx = 0; idx < upper_tile_count(t); ++idx) {
      int ti = -1, tj = -1;
      upper_tile_coords(idx, t, &ti, &tj);
      if (ti < 0 || tj < ti || tj >= t) { ok = false; break; }
      ok &= (ti == pi && tj == pj + 1) || (ti == pi + 1 && tj == ti);  // row-major order
      pi = ti;
      pj = tj;
      seen[static_cast<size_t>(ti) * t + tj]++;
    }
    for (int i = 0; i < t && ok; ++i)
      for (int j = 0; j < t; ++j) ok &= seen[static_cast<size_t>(i) * t + j] == (i <= j ? 1 : 0);
    if (!ok) CHECK(ok, "upper_tile_coords t=%d", t);
    else ++nlcore_test::g_pass;
  }
  {
    bool ok = true;
    uint64_t rng = 12345;
    for (int64_t t : {301, 1000, 4096, 8191, 32768, 65535}) {
      const int64_t total = upper_tile_count(t);
      for (int q = 0; q < 20000 && ok; ++q) {
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        int64_t idx = static_cast<int64_t>((rng >> 11) % static_cast<uint64_t>(total));
        if (q < 4) idx = q < 2 ? q : total - 1 - (q - 2);  // both ends
        int ti, tj;
        upper_tile_coords(idx, t, &ti, &tj);
        ok &= ti >= 0 && ti <= tj && tj < t && upper_row_start(ti, t) <= idx &&
              idx < upper_row_start(ti + 1, t) && tj - ti == idx - upper_row_start(ti, t);
        if (!ok) std::printf("  t=%lld idx=%lld -> (%d, %d)\n", (long long)t, (long long)idx, ti, tj);
      }
    }
    CHECK(ok, "upper_tile_coords on large grids");
  }

  // Cluster kernel geometry over its whole domain.
  {
    bool ok = true;
    size_t max_cluster = 0;
    for (int m = 1; m <= 300 && ok; ++m)
      for (int n = m; n <= 300; ++n) {
        const bool in = m > 128 && m <= 256 && n <= 256;
        if (cluster_shape_ok(m, n) != in) { ok = false; break; }
        if (!in) continue;
        const ClusterGeometry g = cluster_geometry(m, n);
        ok &= g.m_pad >= m && g.m_pad % 64 == 0 && g.m_pad - m < 64 && g.n_pad >= n &&
              g.n_pad % 64 == 0 && g.n_pad - n < 64 && g.n_pad >= g.m_pad && g.n_pad <= 256 &&
              g.half * 2 == g.m_pad && g.half % 32 == 0 && g.half <= 128 && g.half < m &&
              g.ld == g.n_pad + 8 && g.ld % 8 == 0;
        // every 32-row K chunk lies in one CTA's half
        for (int k0 = 0; k0 < g.m_pad; k0 += kClusterChunkK) ok &= k0 / g.half == (k0 + 31) / g.half;
        // passes of 128 columns over W in {m_pad, n_pad}: each column's 64-wide warp block exists
        ok &= g.m_pad % 64 == 0 && g.n_pad % 64 == 0;
        const size_t b = cluster_smem_bytes(g, 2);
        if (b > max_cluster) max_cluster = b;
        if (!ok) std::printf("  cluster geometry m=%d n=%d\n", m, n);
      }
    CHECK(ok, "cluster geometry");
    CHECK(max_cluster <= kSmemOptinSm90 && max_cluster == 220416, "cluster smem %zu", max_cluster);
  }

  // Fragment maps against an emulation of ldmatrix and of the PTX mma.m16n8k16 layouts.
  // Stored 16x16 matrices S with distinct entries; the emulated registers must hold what
  // the PTX ISA says the A (row-major 16x16) and B (16 x 8, two n-blocks) fragments hold.
  auto val = [](int r, int c) { return 1000 * r + c + 1; };
  // ldmatrix: matrix q's row j address comes from lane 8q + j; lane t receives, per matrix,
  // elements (t/4, 2(t%4)+{0,1}) of that 8x8 matrix, or with .trans (2(t%4)+{0,1}, t/4).
  auto ldsm = [&](RowCol (*addr)(int), bool trans, int lane, int q, int e) {
    const int j = trans ? 2 * (lane % 4) + e : lane / 4;
    const RowCol base = addr(8 * q + j);
    const int col = trans ? lane / 4 : 2 * (lane % 4) + e;
    return trans ? val(base.r, base.c + col) /* row j of the 8x8, column t/4 */ : val(base.r, base.c + col);
  };
  bool ok_a = true, ok_nk = true, ok_kn = true, ok_c = true;
  for (int lane = 0; lane < 32; ++lane) {
    const int gid = lane / 4, tig = lane % 4;
    for (int q = 0; q < 4; ++q)
      for (int e = 0; e < 2; ++e) {
        // A fragment register q, element e: row gid + 8(q&1), col 2 tig + e + 8(q>>1).
        ok_a &= ldsm(&ldsm_a_x4, false, lane, q, e) == val(gid + 8 * (q & 1), 2 * tig + e + 8 * (q >> 1));
        // B fragment: register q = (n-block q/2, b-register q%2): k = 2 tig + e + 8(q%2), n = gid + 8(q/2).
        const int k = 2 * tig + e + 8 * (q % 2), n = gid + 8 * (q / 2);
        ok_nk &= ldsm(&ldsm_b_nk_x4, false, lane, q, e) == val(n, k);  // stored N x K
        ok_kn &= ldsm(&ldsm_b_kn_x4_trans, true, lane, q, e) == val(k, n);  // stored K x N
      }
    for (int i = 0; i < 4; ++i) {
      const RowCol rc = mma_acc_pos(lane, i);
      ok_c &= rc.r == gid + 8 * (i >> 1) && rc.c == 2 * tig + (i & 1);
    }
  }
  CHECK(ok_a, "ldmatrix A-operand map");
  CHECK(ok_nk, "ldmatrix B-operand map (N x K, no trans)");
  CHECK(ok_kn, "ldmatrix B-operand map (K x N, trans)");
  CHECK(ok_c, "accumulator map");
  // Every ldmatrix row address is 16-byte aligned in a row of 8-element multiples.
  bool aligned = true;
  for (int lane = 0; lane < 32; ++lane)
    aligned &= ldsm_a_x4(lane).c % 8 == 0 && ldsm_b_nk_x4(lane).c % 8 == 0 && ldsm_b_kn_x4_trans(lane).c % 8 == 0;
  CHECK(aligned, "ldmatrix 16-byte alignment");

  // Coefficient runs.
  std::vector<float> c = {1, 2, 3, 1, 2, 3, 4, 5, 6, 1, 2, 3, 1, 2, 3, 1, 2, 3};
  SmallCoefs sc;
  CHECK(coefficient_runs(c.data(), 6) == 3, "runs %d", coefficient_runs(c.data(), 6));
  CHECK(encode_coefficient_runs(c.data(), 6, &sc) && sc.n_runs == 3 && sc.run_len[0] == 2 &&
            sc.run_len[1] == 1 && sc.run_len[2] == 3 && sc.a[1] == 4 && sc.c[2] == 3, "encode");
  // decode as the kernel does and compare
  bool dec_ok = true;
  int run = 0, left = sc.run_len[0];
  for (int s = 0; s < 6; ++s) {
    if (left == 0) { ++run; left = sc.run_len[run]; }
    --left;
    dec_ok &= sc.a[run] == c[3 * s] && sc.b[run] == c[3 * s + 1] && sc.c[run] == c[3 * s + 2];
  }
  CHECK(dec_ok, "decode");
  std::vector<float> many(3 * 65);
  for (int s = 0; s < 65; ++s) many[3 * s] = static_cast<float>(s);
  CHECK(!encode_coefficient_runs(many.data(), 65, &sc), "65 runs must not encode");
  CHECK(encode_coefficient_runs(many.data(), 64, &sc) && sc.n_runs == 64, "64 runs encode");

  // General layout: aligned, disjoint, in order, sized.
  for (int64_t b : {1, 3, 1000})
    for (int64_t m : {1, 7, 129, 1000})
      for (int64_t n : {m, m + 1, 4 * m + 3})
        for (size_t e : {2, 4}) {
          const GeneralLayout L = general_layout(b, m, n, e);
          const size_t xb = b * L.m_p * L.n_p * e, ab = b * L.m_p * L.m_p * e;
          bool ok = L.ok && L.m_p % 8 == 0 && L.n_p % 8 == 0 && L.m_p >= m && L.n_p >= n &&
                    L.off_x0 % 256 == 0 && L.off_x1 % 256 == 0 && L.off_a % 256 == 0 &&
                    L.off_b % 256 == 0 && L.off_partials % 256 == 0 && L.total % 256 == 0 &&
                    L.off_x1 >= L.off_x0 + xb && L.off_a >= L.off_x1 + xb && L.off_b >= L.off_a + ab &&
                    L.off_partials >= L.off_b + ab &&
                    L.total >= L.off_partials + b * L.chunks * sizeof(float) && L.chunks >= 1 &&
                    L.chunks <= kNormMaxChunks;
          if (!ok) CHECK(ok, "layout b=%lld m=%lld n=%lld e=%zu", (long long)b, (long long)m, (long long)n, e);
          else ++nlcore_test::g_pass;
        }
}

}  // namespace

int main() {
  test_status_api();
  test_validation();
  test_forward_pointers();
  test_paths_and_workspace();
  test_tiling();
  return nlcore_test::check_summary();
}
