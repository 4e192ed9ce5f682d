// Host-only tests of the M3 C API (nlcore/m3.h, no GPU needed): every invalid argument of the
// two multi-tensor launchers comes back as NLCORE_STATUS_INVALID_VALUE with a message naming
// the argument, before any CUDA call (fake device pointers are never dereferenced), and an
// empty call succeeds without touching the device. Prints "N passed, M failed".
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "nlcore/nlcore.h"
#include "check.h"

namespace {

void* fake(uintptr_t a) { return reinterpret_cast<void*>(a); }

bool contains(const std::string& hay, const char* needle) {
  return hay.find(needle) != std::string::npos;
}

// Three tensors, all pointers fake and distinct.
struct Lists {
  int64_t numel[3] = {16, 0, 33};
  float lr[3] = {0.01f, 0.02f, 0.03f};
  void* m1[3] = {fake(0x1000), fake(0x2000), fake(0x3000)};
  void* s[3] = {fake(0x4000), fake(0x5000), fake(0x6000)};
  void* fast[3] = {fake(0x7000), fake(0x8000), fake(0x9000)};
  const void* g[3] = {fake(0xa000), fake(0xb000), fake(0xc000)};
  void* p[3] = {fake(0xd000), fake(0xe000), fake(0xf000)};
  const void* u[3] = {fake(0x10000), fake(0x11000), fake(0x12000)};
  const void* o2[3] = {fake(0x13000), fake(0x14000), fake(0x15000)};

  nlcore_m3_muon_pre_t pre() {
    nlcore_m3_muon_pre_t a{};
    a.num_tensors = 3;
    a.numel = numel;
    a.dtype = NLCORE_DTYPE_FLOAT32;
    a.beta1 = 0.9;
    a.nesterov = 1;
    a.momentum = m1;
    a.slow_sum = s;
    a.fast = fast;
    a.grads = g;
    return a;
  }
  nlcore_m3_muon_post_t post() {
    nlcore_m3_muon_post_t a{};
    a.num_tensors = 3;
    a.numel = numel;
    a.dtype = NLCORE_DTYPE_BFLOAT16;
    a.lr = lr;
    a.decay = 0.999f;
    a.alpha = 0.5f;
    a.params = p;
    a.updates = u;
    a.slow_update = o2;
    return a;
  }
};

void expect(const char* name, nlcore_status_t got, std::vector<const char*> needles) {
  const std::string msg = nlcore_last_error_message();
  CHECK(got == NLCORE_STATUS_INVALID_VALUE, "%s: got %s, want INVALID_VALUE (msg: %s)", name,
        nlcore_status_string(got), msg.c_str());
  for (const char* n : needles)
    CHECK(contains(msg, n), "%s: message '%s' lacks '%s'", name, msg.c_str(), n);
}

void test_pre() {
  CHECK(nlcore_m3_muon_pre(nullptr, nullptr) == NLCORE_STATUS_INVALID_VALUE, "pre(NULL)");
  CHECK(contains(nlcore_last_error_message(), "args is NULL"), "pre(NULL) message");
  Lists L;
  nlcore_m3_muon_pre_t a = L.pre();
  a.num_tensors = -1;
  expect("pre num_tensors=-1", nlcore_m3_muon_pre(&a, nullptr), {"num_tensors", "-1"});
  a = L.pre();
  a.numel = nullptr;
  expect("pre numel=NULL", nlcore_m3_muon_pre(&a, nullptr), {"numel is NULL"});
  a = L.pre();
  int64_t neg[3] = {4, -5, 4};
  a.numel = neg;
  expect("pre numel[1]=-5", nlcore_m3_muon_pre(&a, nullptr), {"numel[1]", "-5"});
  for (int d : {3, 4, 5, 17, -1}) {
    a = L.pre();
    a.dtype = static_cast<nlcore_dtype_t>(d);
    char name[64];
    std::snprintf(name, sizeof name, "pre dtype=%d", d);
    expect(name, nlcore_m3_muon_pre(&a, nullptr), {"dtype"});
  }
  for (double b : {std::nan(""), std::numeric_limits<double>::infinity()}) {
    a = L.pre();
    a.beta1 = b;
    expect("pre beta1 not finite", nlcore_m3_muon_pre(&a, nullptr), {"beta1"});
  }
  a = L.pre();
  a.nesterov = 2;
  expect("pre nesterov=2", nlcore_m3_muon_pre(&a, nullptr), {"nesterov", "2"});
  const char* names[4] = {"momentum", "slow_sum", "fast", "grads"};
  for (int which = 0; which < 4; ++which) {
    a = L.pre();
    if (which == 0) a.momentum = nullptr;
    if (which == 1) a.slow_sum = nullptr;
    if (which == 2) a.fast = nullptr;
    if (which == 3) a.grads = nullptr;
    expect(names[which], nlcore_m3_muon_pre(&a, nullptr), {names[which], "NULL"});
  }
  // an entry may be NULL only where its tensor is empty (numel[1] = 0)
  Lists L2;
  L2.m1[1] = nullptr;
  a = L2.pre();
  L2.m1[2] = nullptr;
  expect("pre momentum[2]=NULL", nlcore_m3_muon_pre(&a, nullptr), {"momentum[2]", "NULL"});
  // nothing to do: success, no device touched
  a = L.pre();
  a.num_tensors = 0;
  a.numel = nullptr;
  a.momentum = a.slow_sum = a.fast = nullptr;
  a.grads = nullptr;
  CHECK(nlcore_m3_muon_pre(&a, nullptr) == NLCORE_STATUS_SUCCESS, "pre with no tensors: %s",
        nlcore_last_error_message());
  int64_t zeros[3] = {0, 0, 0};
  a = L.pre();
  a.numel = zeros;
  CHECK(nlcore_m3_muon_pre(&a, nullptr) == NLCORE_STATUS_SUCCESS, "pre with empty tensors: %s",
        nlcore_last_error_message());
}

void test_post() {
  CHECK(nlcore_m3_muon_post(nullptr, nullptr) == NLCORE_STATUS_INVALID_VALUE, "post(NULL)");
  Lists L;
  nlcore_m3_muon_post_t a = L.post();
  a.num_tensors = -3;
  expect("post num_tensors=-3", nlcore_m3_muon_post(&a, nullptr), {"num_tensors", "-3"});
  a = L.post();
  a.dtype = NLCORE_DTYPE_FLOAT64;
  expect("post dtype=f64", nlcore_m3_muon_post(&a, nullptr), {"dtype", "FLOAT64"});
  a = L.post();
  a.lr = nullptr;
  expect("post lr=NULL", nlcore_m3_muon_post(&a, nullptr), {"lr is NULL"});
  const float bad[2] = {std::nanf(""), std::numeric_limits<float>::infinity()};
  for (float v : bad) {
    a = L.post();
    a.decay = v;
    expect("post decay not finite", nlcore_m3_muon_post(&a, nullptr), {"decay"});
    a = L.post();
    a.alpha = v;
    expect("post alpha not finite", nlcore_m3_muon_post(&a, nullptr), {"alpha"});
    Lists L2;
    L2.lr[2] = v;
    a = L2.post();
    expect("post lr[2] not finite", nlcore_m3_muon_post(&a, nullptr), {"lr[2]"});
  }
  const char* names[3] = {"params", "updates", "slow_update"};
  for (int which = 0; which < 3; ++which) {
    a = L.post();
    if (which == 0) a.params = nullptr;
    if (which == 1) a.updates = nullptr;
    if (which == 2) a.slow_update = nullptr;
    expect(names[which], nlcore_m3_muon_post(&a, nullptr), {names[which], "NULL"});
  }
  Lists L3;
  L3.u[0] = nullptr;
  a = L3.post();
  expect("post updates[0]=NULL", nlcore_m3_muon_post(&a, nullptr), {"updates[0]", "NULL"});
  a = L.post();
  a.num_tensors = 0;
  a.numel = nullptr;
  a.lr = nullptr;
  a.params = nullptr;
  a.updates = a.slow_update = nullptr;
  CHECK(nlcore_m3_muon_post(&a, nullptr) == NLCORE_STATUS_SUCCESS, "post with no tensors: %s",
        nlcore_last_error_message());
}

}  // namespace

int main() {
  test_pre();
  test_post();
  return nlcore_test::check_summary();
}
