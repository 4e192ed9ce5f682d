// nlcore::dgd on CUDA: a thin call into the framework-free C API (csrc/include/nlcore/dgd.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "nlcore/dgd.h"
#include "torch/checks.h"
#include "torch/cuda_status.h"
#include "torch/dgd.h"

namespace nlcore::glue {
namespace {

constexpr int32_t kCudaChunk = 64;

struct Prepared {
  nlcore_dgd_problem_t p{};
  nlcore_dgd_tensors_t t{};
  at::Tensor q, k, v, beta, g, erase, h0, cu;  // contiguous (gates and state in fp32)
};

Prepared prepare(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const at::Tensor& beta, const std::optional<at::Tensor>& g,
                 const std::optional<at::Tensor>& erase,
                 const std::optional<at::Tensor>& initial_state,
                 const std::optional<at::Tensor>& cu_seqlens, double scale, bool read_before,
                 int64_t chunk_size) {
  check_dgd_args(q, k, v, beta, g, erase, initial_state, cu_seqlens, scale, chunk_size);
  TORCH_CHECK_TYPE(q.scalar_type() != at::kDouble,
                   "dgd: float64 is not supported on CUDA (q is float64 on ", q.device(),
                   "); use float32, bfloat16 or float16");
  Prepared r;
  auto f32 = [](const at::Tensor& x) { return x.to(at::kFloat).contiguous(); };
  r.q = q.contiguous();
  r.k = k.contiguous();
  r.v = v.contiguous();
  r.beta = f32(beta);
  if (g) r.g = f32(*g);
  if (erase) r.erase = f32(*erase);
  if (initial_state) r.h0 = f32(*initial_state);
  if (cu_seqlens) r.cu = cu_seqlens->contiguous();
  nlcore_dgd_problem_t& p = r.p;
  p.batch = q.size(0);
  p.seqlen = q.size(1);
  p.num_sequences = cu_seqlens ? cu_seqlens->numel() - 1 : q.size(0);
  p.heads_qk = static_cast<int32_t>(q.size(2));
  p.heads_v = static_cast<int32_t>(v.size(2));
  p.head_dim_k = static_cast<int32_t>(q.size(3));
  p.head_dim_v = static_cast<int32_t>(v.size(3));
  p.dtype = to_nlcore_dtype(q.scalar_type());
  p.gate_dtype = NLCORE_DTYPE_FLOAT32;
  p.has_g = g.has_value();
  p.has_erase = erase.has_value();
  p.has_initial_state = initial_state.has_value();
  p.read_before = read_before ? 1 : 0;
  p.scale = static_cast<float>(scale);
  // The chunk size is an implementation detail (results do not depend on it beyond
  // rounding); the CUDA kernels are built for 64-token chunks.
  p.chunk_size = kCudaChunk;
  p.cu_seqlens = cu_seqlens ? r.cu.data_ptr() : nullptr;
  p.cu_seqlens_dtype = (cu_seqlens && cu_seqlens->scalar_type() == at::kInt) ? NLCORE_DTYPE_INT32
                                                                             : NLCORE_DTYPE_INT64;
  p.flags = NLCORE_DGD_FLAG_DEFAULT;
  nlcore_dgd_tensors_t& t = r.t;
  t.q = r.q.data_ptr();
  t.k = r.k.data_ptr();
  t.v = r.v.data_ptr();
  t.beta = r.beta.data_ptr();
  t.g = g ? r.g.data_ptr() : nullptr;
  t.erase = erase ? r.erase.data_ptr() : nullptr;
  t.initial_state = initial_state ? r.h0.data_ptr() : nullptr;
  return r;
}

at::Tensor workspace(const nlcore_dgd_problem_t& p, int32_t backward, const at::Tensor& like,
                     size_t* bytes) {
  check_status(nlcore_dgd_workspace_size(&p, backward, bytes), "dgd");
  return at::empty({static_cast<int64_t>(*bytes > 0 ? *bytes : 1)}, like.options().dtype(at::kByte));
}

std::tuple<at::Tensor, at::Tensor> dgd_cuda(const at::Tensor& q, const at::Tensor& k,
                                            const at::Tensor& v, const at::Tensor& beta,
                                            const std::optional<at::Tensor>& g,
                                            const std::optional<at::Tensor>& erase,
                                            const std::optional<at::Tensor>& initial_state,
                                            const std::optional<at::Tensor>& cu_seqlens,
                                            double scale, bool read_before, int64_t chunk_size) {
  c10::cuda::CUDAGuard guard(q.device());
  Prepared r = prepare(q, k, v, beta, g, erase, initial_state, cu_seqlens, scale, read_before,
                       chunk_size);
  at::Tensor o = at::empty_like(r.v, at::MemoryFormat::Contiguous);
  at::Tensor final_state = at::empty({r.p.num_sequences, r.p.heads_v, r.p.head_dim_k,
                                      r.p.head_dim_v}, q.options().dtype(at::kFloat));
  if (r.p.seqlen == 0 || r.p.batch == 0) {  // nothing to run: the state passes through
    if (initial_state) final_state.copy_(r.h0); else final_state.zero_();
    return {o, final_state};
  }
  r.t.o = o.data_ptr();
  r.t.final_state = final_state.data_ptr();
  size_t bytes = 0;
  at::Tensor ws = workspace(r.p, 0, q, &bytes);
  check_status(nlcore_dgd_forward(&r.p, &r.t, ws.data_ptr(), bytes,
                                  c10::cuda::getCurrentCUDAStream(q.device().index()).stream()),
               "dgd");
  return {o, final_state};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
dgd_backward_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& beta, const std::optional<at::Tensor>& g,
                  const std::optional<at::Tensor>& erase,
                  const std::optional<at::Tensor>& initial_state,
                  const std::optional<at::Tensor>& cu_seqlens, const at::Tensor& grad_o,
                  const std::optional<at::Tensor>& grad_final_state, double scale,
                  bool read_before, int64_t chunk_size) {
  c10::cuda::CUDAGuard guard(q.device());
  Prepared r = prepare(q, k, v, beta, g, erase, initial_state, cu_seqlens, scale, read_before,
                       chunk_size);
  TORCH_CHECK_VALUE(grad_o.sizes() == v.sizes(), "dgd_backward: grad_o must have v's shape ",
                    v.sizes(), ", got ", grad_o.sizes());
  at::Tensor go = grad_o.to(v.scalar_type()).contiguous();
  at::Tensor gfs;
  if (grad_final_state) gfs = grad_final_state->to(at::kFloat).contiguous();
  at::Tensor dq = at::empty_like(r.q), dk = at::empty_like(r.k), dv = at::empty_like(r.v);
  at::Tensor dbeta = at::empty_like(r.beta);
  at::Tensor dg = g ? at::empty_like(r.g) : at::empty({0}, q.options());
  at::Tensor derase = erase ? at::empty_like(r.erase) : at::empty({0}, q.options());
  at::Tensor dh0 = initial_state ? at::empty_like(r.h0) : at::empty({0}, q.options());
  if (r.p.seqlen == 0 || r.p.batch == 0) {
    dq.zero_(); dk.zero_(); dv.zero_(); dbeta.zero_(); dg.zero_(); derase.zero_();
    if (initial_state) {
      if (grad_final_state) dh0.copy_(gfs); else dh0.zero_();
    }
    auto cast = [](const at::Tensor& d, const std::optional<at::Tensor>& x) {
      return x ? d.to(x->scalar_type()) : d;
    };
    return {dq, dk, dv, dbeta.to(beta.scalar_type()), cast(dg, g), cast(derase, erase),
            cast(dh0, initial_state)};
  }
  nlcore_dgd_grads_t gr{};
  gr.grad_o = go.data_ptr();
  gr.grad_final_state = grad_final_state ? gfs.data_ptr() : nullptr;
  gr.dq = dq.data_ptr();
  gr.dk = dk.data_ptr();
  gr.dv = dv.data_ptr();
  gr.dbeta = dbeta.data_ptr();
  gr.dg = g ? dg.data_ptr() : nullptr;
  gr.derase = erase ? derase.data_ptr() : nullptr;
  gr.dinitial_state = initial_state ? dh0.data_ptr() : nullptr;
  size_t bytes = 0;
  at::Tensor ws = workspace(r.p, 1, q, &bytes);
  check_status(nlcore_dgd_backward(&r.p, &r.t, &gr, ws.data_ptr(), bytes,
                                   c10::cuda::getCurrentCUDAStream(q.device().index()).stream()),
               "dgd_backward");
  // gradients come back in each input's own dtype
  auto back = [](const at::Tensor& d, const std::optional<at::Tensor>& x) {
    return x ? d.to(x->scalar_type()) : d;
  };
  return {dq, dk, dv, dbeta.to(beta.scalar_type()), back(dg, g), back(derase, erase),
          back(dh0, initial_state)};
}

}  // namespace
}  // namespace nlcore::glue

TORCH_LIBRARY_IMPL(nlcore, CUDA, m) {
  m.impl("dgd", &nlcore::glue::dgd_cuda);
  m.impl("dgd_backward", &nlcore::glue::dgd_backward_cuda);
}
