"""CUDA kernels of nlcore.ops.dgd against the CPU op (same chunk algorithm) and the float64
reference, with the CUDA caching allocator poisoned by NaNs before every run so an output
or workspace element the kernels never write shows up."""
import itertools

import pytest
import torch

from nlcore.ops import dgd, gated_delta_rule
from nlcore.reference import dgd as ref_dgd

from conftest import poison_cuda_cache, rel_err
from test_dgd import LOW, as64, contract_bound, grads_of, make_inputs, run

pytestmark = pytest.mark.cuda
NAMES = ("q", "k", "v", "beta", "g", "erase", "initial_state")


_poison = poison_cuda_cache


def to_cuda(x):
    return {n: (None if t is None else t.detach().cuda()) for n, t in x.items()}


@pytest.mark.parametrize("T", [1, 63, 64, 65, 1000])
@pytest.mark.parametrize("K, V", [(32, 32), (64, 64), (128, 128), (256, 256), (64, 128),
                                  (128, 32)])
def test_forward_fp32_vs_cpu(T, K, V):
    x = make_inputs(B=2, T=T, H=2, HV=4, K=K, V=V)
    _poison()
    o, s = run(dgd, to_cuda(x), read="before" if T % 2 else "after")
    oc, sc = run(dgd, x, read="before" if T % 2 else "after")
    assert rel_err(o, oc) < 1e-4 and rel_err(s, sc) < 1e-4


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("read, with_g, with_erase, h0",
                         list(itertools.product(["after", "before"], [True, False],
                                                [True, False], [True, False])))
def test_forward_low_precision(dtype, read, with_g, with_erase, h0):
    x = make_inputs(B=2, T=130, H=2, HV=4, K=64, V=64, dtype=dtype, g=with_g,
                    erase=with_erase, h0=h0)
    _poison()
    o, s = run(dgd, to_cuda(x), read=read)
    to, ts = run(ref_dgd, as64(x), read=read)
    bo, bs = contract_bound(x, dtype, "fwd", read=read)
    assert rel_err(o, to) <= bo and rel_err(s, ts) <= bs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_varlen(dtype):
    lens = [17, 64, 1, 200, 0, 33]
    cu = torch.tensor([0] + list(itertools.accumulate(lens)), dtype=torch.int32)
    x = make_inputs(B=1, T=sum(lens), H=2, HV=4, K=64, V=64, N=len(lens), dtype=dtype)
    _poison()
    o, s = run(dgd, to_cuda(x), cu_seqlens=cu.cuda())
    oc, sc = run(dgd, x, cu_seqlens=cu)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert rel_err(o, oc) < tol and rel_err(s, sc) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("read", ["after", "before"])
def test_grads_vs_reference(dtype, read):
    x = make_inputs(B=2, T=100, H=2, HV=4, K=64, V=32, dtype=dtype)
    wo, ws = torch.randn(2, 100, 4, 32), torch.randn(2, 4, 64, 32)
    _poison()
    ours = grads_of(dgd, to_cuda(x), wo.cuda(), ws.cuda(), read=read)
    truth = grads_of(ref_dgd, as64(x), wo.double(), ws.double(), read=read)
    bounds = contract_bound(x, dtype, "grads", wo, ws, read=read)
    for n in truth:
        bound = 1e-4 if bounds is None else bounds[n]
        assert rel_err(ours[n], truth[n]) <= bound, n


def test_gated_delta_rule_cuda():
    x = make_inputs(B=2, T=300, H=4, K=128, V=128, dtype=torch.bfloat16)
    xc = to_cuda(x)
    o, s = gated_delta_rule(xc["q"], xc["k"], xc["v"], xc["g"], xc["beta"],
                            initial_state=xc["initial_state"], output_final_state=True)
    oc, sc = gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"],
                              initial_state=x["initial_state"], output_final_state=True)
    assert rel_err(o, oc) < 2e-2 and rel_err(s, sc) < 2e-2


def test_float64_is_type_error():
    x = to_cuda(as64(make_inputs(B=1, T=4, H=1, K=32, V=32)))
    with pytest.raises(TypeError, match="float64"):
        run(dgd, x)


def test_compile_and_graph_capture():
    x = to_cuda(make_inputs(B=1, T=256, H=2, K=64, V=64, dtype=torch.bfloat16))
    f = torch.compile(lambda q, k, v, b: dgd(q, k, v, b)[0] * 2, fullgraph=True)
    ref = dgd(x["q"], x["k"], x["v"], x["beta"])[0] * 2
    assert rel_err(f(x["q"], x["k"], x["v"], x["beta"]), ref) < 1e-6
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = dgd(x["q"], x["k"], x["v"], x["beta"])[0]
    g.replay()
    torch.cuda.synchronize()
    assert rel_err(out * 2, ref) < 1e-6
