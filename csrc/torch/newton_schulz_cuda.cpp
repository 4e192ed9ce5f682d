// nlcore::newton_schulz on CUDA: a thin call into the framework-free C API.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "nlcore/newton_schulz.h"
#include "torch/checks.h"
#include "torch/cuda_status.h"
#include "torch/newton_schulz.h"

namespace nlcore::glue {
namespace {

at::Tensor newton_schulz_cuda(const at::Tensor& G, at::ArrayRef<double> coefficients, double eps,
                              double norm_scale, bool norm_additive,
                              at::ScalarType compute_dtype, int64_t flags) {
  auto args = check_newton_schulz_args(G, coefficients, eps, norm_scale, norm_additive,
                                       compute_dtype);
  TORCH_CHECK_TYPE(G.scalar_type() != at::kDouble,
                   "newton_schulz: float64 is not supported on CUDA (G is float64 on ", G.device(),
                   "); use float32, bfloat16 or float16");
  const int64_t steps = static_cast<int64_t>(coefficients.size() / 3);
  TORCH_CHECK_VALUE(steps <= NLCORE_NS_MAX_STEPS, "newton_schulz: steps must be <= ",
                    NLCORE_NS_MAX_STEPS, " on CUDA, got ", steps);
  c10::cuda::CUDAGuard guard(G.device());
  at::Tensor Gc = G.contiguous();
  at::Tensor O = at::empty_like(Gc, at::MemoryFormat::Contiguous);
  if (G.numel() == 0) return O;

  std::vector<float> coef(coefficients.begin(), coefficients.end());
  nlcore_ns_problem_t p{};
  p.rows = G.size(-2);
  p.cols = G.size(-1);
  p.batch = G.numel() / (p.rows * p.cols);
  p.io_dtype = to_nlcore_dtype(G.scalar_type());
  p.compute_dtype = to_nlcore_dtype(compute_dtype);
  p.steps = static_cast<int32_t>(steps);
  p.coefficients = coef.data();
  p.eps = static_cast<float>(eps);
  p.norm_scale = static_cast<float>(norm_scale);
  p.norm_additive = norm_additive ? 1 : 0;
  p.flags = static_cast<uint32_t>(flags);

  size_t ws_bytes = 0;
  nlcore_status_t st = nlcore_newton_schulz_workspace_size(&p, &ws_bytes);
  check_status(st, "newton_schulz");
  at::Tensor ws = at::empty({static_cast<int64_t>(ws_bytes > 0 ? ws_bytes : 1)},
                            G.options().dtype(at::kByte));
  st = nlcore_newton_schulz_forward(&p, Gc.data_ptr(), O.data_ptr(), ws.data_ptr(), ws_bytes,
                                    c10::cuda::getCurrentCUDAStream(G.device().index()).stream());
  check_status(st, "newton_schulz");
  return O;
}

}  // namespace
}  // namespace nlcore::glue

TORCH_LIBRARY_IMPL(nlcore, CUDA, m) {
  m.impl("newton_schulz", &nlcore::glue::newton_schulz_cuda);
}
