// nlcore::m3_muon_pre_ / m3_muon_post_ on CUDA: thin calls into the framework-free C API
// (csrc/include/nlcore/m3.h). Tensors must be contiguous; one C call per dtype present.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <map>
#include <vector>

#include "nlcore/m3.h"
#include "torch/checks.h"
#include "torch/cuda_status.h"
#include "torch/m3.h"

namespace nlcore::glue {
namespace {

// CUDA-only requirements on top of the shared checks; returns the indices grouped by dtype.
std::map<at::ScalarType, std::vector<size_t>> cuda_groups(
    const char* op, std::initializer_list<std::pair<const char*, at::TensorList>> ls) {
  std::map<at::ScalarType, std::vector<size_t>> groups;
  const at::TensorList ref = ls.begin()->second;
  for (size_t i = 0; i < ref.size(); ++i) {
    TORCH_CHECK_TYPE(ref[i].scalar_type() != at::kDouble, op, ": float64 is not supported on "
                     "CUDA (", ls.begin()->first, "[", i, "] is float64); use float32, bfloat16 "
                     "or float16");
    TORCH_CHECK_VALUE(ref[i].is_cuda(), op, ": ", ls.begin()->first, "[", i,
                      "] is on ", ref[i].device(), ", expected a CUDA device");
    for (const auto& l : ls)
      TORCH_CHECK_VALUE(l.second[i].is_contiguous(), op, ": ", l.first, "[", i,
                        "] must be contiguous on CUDA (shape ", l.second[i].sizes(), ", strides ",
                        l.second[i].strides(), ")");
    groups[ref[i].scalar_type()].push_back(i);
  }
  return groups;
}

void m3_muon_pre_cuda(at::TensorList momentum, at::TensorList slow_sum, at::TensorList fast,
                      at::TensorList grads, double beta1, bool nesterov) {
  check_m3_muon_pre_args(momentum, slow_sum, fast, grads, beta1);
  auto groups = cuda_groups("m3_muon_pre_", {{"momentum", momentum},
                                             {"slow_sum", slow_sum},
                                             {"fast", fast},
                                             {"grads", grads}});
  if (momentum.empty()) return;
  c10::cuda::CUDAGuard guard(momentum[0].device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(momentum[0].device().index()).stream();
  for (const auto& [dtype, idx] : groups) {
    std::vector<int64_t> numel;
    std::vector<void*> m1, s, f;
    std::vector<const void*> g;
    for (size_t i : idx) {
      numel.push_back(momentum[i].numel());
      m1.push_back(momentum[i].data_ptr());
      s.push_back(slow_sum[i].data_ptr());
      f.push_back(fast[i].data_ptr());
      g.push_back(grads[i].data_ptr());
    }
    nlcore_m3_muon_pre_t a{};
    a.num_tensors = static_cast<int64_t>(idx.size());
    a.numel = numel.data();
    a.dtype = to_nlcore_dtype(dtype);
    a.beta1 = beta1;
    a.nesterov = nesterov ? 1 : 0;
    a.momentum = m1.data();
    a.slow_sum = s.data();
    a.fast = f.data();
    a.grads = g.data();
    check_status(nlcore_m3_muon_pre(&a, stream), "m3_muon_pre_");
  }
}

void m3_muon_post_cuda(at::TensorList params, at::TensorList updates, at::TensorList slow_update,
                       at::ArrayRef<double> lr, double decay, double alpha) {
  check_m3_muon_post_args(params, updates, slow_update, lr, decay, alpha);
  auto groups = cuda_groups("m3_muon_post_", {{"params", params},
                                              {"updates", updates},
                                              {"slow_update", slow_update}});
  if (params.empty()) return;
  c10::cuda::CUDAGuard guard(params[0].device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(params[0].device().index()).stream();
  for (const auto& [dtype, idx] : groups) {
    std::vector<int64_t> numel;
    std::vector<float> lrs;
    std::vector<void*> p;
    std::vector<const void*> u, o2;
    for (size_t i : idx) {
      numel.push_back(params[i].numel());
      lrs.push_back(static_cast<float>(lr[i]));
      p.push_back(params[i].data_ptr());
      u.push_back(updates[i].data_ptr());
      o2.push_back(slow_update[i].data_ptr());
    }
    nlcore_m3_muon_post_t a{};
    a.num_tensors = static_cast<int64_t>(idx.size());
    a.numel = numel.data();
    a.dtype = to_nlcore_dtype(dtype);
    a.lr = lrs.data();
    a.decay = static_cast<float>(decay);
    a.alpha = static_cast<float>(alpha);
    a.params = p.data();
    a.updates = u.data();
    a.slow_update = o2.data();
    check_status(nlcore_m3_muon_post(&a, stream), "m3_muon_post_");
  }
}

}  // namespace
}  // namespace nlcore::glue

TORCH_LIBRARY_IMPL(nlcore, CUDA, m) {
  m.impl("m3_muon_pre_", &nlcore::glue::m3_muon_pre_cuda);
  m.impl("m3_muon_post_", &nlcore::glue::m3_muon_post_cuda);
}
