"""CUDA kernels of nlcore.ops.newton_schulz against the CPU op and the float64 reference.

Every case poisons the CUDA caching allocator with NaNs first, so an output element or a
workspace word that the kernels never write shows up as NaN."""
import pytest
import torch

import nlcore
from nlcore.ops import newton_schulz
from nlcore.reference import newton_schulz as ref_ns

from conftest import poison_cuda_cache, rel_err

pytestmark = pytest.mark.cuda
LOW = (torch.bfloat16, torch.float16)


_poison = poison_cuda_cache


def _contract_bound(G, steps, coefficients, compute_dtype):
    truth = ref_ns(G.double().cpu(), steps, coefficients)
    if compute_dtype == torch.float32 and G.dtype == torch.float32:
        return truth, 1e-4
    emu = ref_ns(G.double().cpu(), steps, coefficients,
                 emulate=compute_dtype if compute_dtype in LOW else None)
    if G.dtype in LOW:
        emu = emu.to(G.dtype)
    return truth, 3 * rel_err(emu, truth) + 1e-6


def test_cuda_kernels_registered():
    assert nlcore.cuda_kernels_available()


SMALL = [(256, 128, 128), (16, 64, 64), (1000, 8, 8), (1, 1, 40), (7, 33, 100), (5, 100, 33),
         (3, 128, 256), (2, 1, 1)]
LARGE = [(1, 512, 512), (2, 300, 700), (1, 1024, 256), (4, 129, 129), (1, 1000, 3)]


@pytest.mark.parametrize("kernel", ["auto", "small", "general"])
@pytest.mark.parametrize("shape", SMALL)
@pytest.mark.parametrize("coefficients", ["muon", "polar_express"])
def test_small_shapes(kernel, shape, coefficients):
    G = torch.randn(shape, device="cuda")
    _poison()
    out = newton_schulz(G, 5, coefficients, kernel=kernel)
    torch.cuda.synchronize()
    truth, bound = _contract_bound(G, 5, coefficients, torch.bfloat16)
    assert rel_err(out, truth) <= bound
    cpu = newton_schulz(G.cpu(), 5, coefficients)
    assert rel_err(out, cpu) <= bound


@pytest.mark.parametrize("kernel", ["auto", "general"])
@pytest.mark.parametrize("shape", LARGE)
def test_large_shapes(kernel, shape):
    G = torch.randn(shape, device="cuda")
    _poison()
    out = newton_schulz(G, 5, "muon", kernel=kernel)
    truth, bound = _contract_bound(G, 5, "muon", torch.bfloat16)
    assert rel_err(out, truth) <= bound


@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("compute_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(64, 48, 96), (2, 200, 300)])
def test_dtypes(in_dtype, compute_dtype, shape):
    G = torch.randn(shape, device="cuda").to(in_dtype)
    _poison()
    try:
        out = newton_schulz(G, 5, "muon", compute_dtype=compute_dtype)
    except NotImplementedError as e:  # a combination not built into this kernel set
        pytest.fail(f"not built: {e}")
    assert out.dtype == in_dtype
    truth, bound = _contract_bound(G, 5, "muon", compute_dtype)
    assert rel_err(out, truth) <= bound


@pytest.mark.parametrize("shape", [(16, 128, 128), (8, 256, 256), (2, 200, 512), (1, 1024, 1024),
                                   (1, 4096, 1024), (3, 100, 60)])
@pytest.mark.parametrize("compute_dtype", [torch.bfloat16, torch.float16])
def test_experimental_symmetric(shape, compute_dtype):
    """Triangle-only A = X Xᵀ and A² (small path: upper tiles + mirror; general path: the
    upper-triangle tile swizzle + a mirror kernel)."""
    G = torch.randn(shape, device="cuda")
    _poison()
    out = newton_schulz(G, 5, "muon", compute_dtype=compute_dtype, kernel="symmetric")
    truth, bound = _contract_bound(G, 5, "muon", compute_dtype)
    assert rel_err(out, truth) <= bound
    plain = newton_schulz(G, 5, "muon", compute_dtype=compute_dtype)
    assert rel_err(out, plain) <= bound


@pytest.mark.parametrize("shape", [(8, 256, 256), (4, 200, 256), (3, 129, 200), (2, 256, 160),
                                   (5, 192, 192)])
@pytest.mark.parametrize("coefficients", ["muon", "polar_express"])
def test_experimental_cluster(shape, coefficients):
    """The 2-CTA cluster kernel for 128 < min(m, n) <= 256, max(m, n) <= 256 (sm_90a)."""
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the cluster kernel is built for sm_90a only")
    G = torch.randn(shape, device="cuda")
    _poison()
    out = newton_schulz(G, 5, coefficients, kernel="cluster")
    truth, bound = _contract_bound(G, 5, coefficients, torch.bfloat16)
    assert rel_err(out, truth) <= bound


def test_cluster_outside_its_domain_is_not_implemented():
    with pytest.raises(NotImplementedError):
        newton_schulz(torch.randn(2, 64, 64, device="cuda"), kernel="cluster")
    with pytest.raises(NotImplementedError):
        newton_schulz(torch.randn(2, 200, 512, device="cuda"), kernel="cluster")


def test_grad_matches_cpu():
    G = torch.randn(3, 40, 72, device="cuda")
    W = torch.randn_like(G)
    Gc = G.detach().clone().requires_grad_()
    (newton_schulz(Gc, 5, "polar_express", compute_dtype=torch.float32) * W).sum().backward()
    Gh = G.cpu().requires_grad_()
    (newton_schulz(Gh, 5, "polar_express", compute_dtype=torch.float32) * W.cpu()).sum().backward()
    assert rel_err(Gc.grad, Gh.grad) < 1e-4


def test_float64_is_type_error():
    with pytest.raises(TypeError, match="float64"):
        newton_schulz(torch.randn(4, 4, device="cuda", dtype=torch.float64))


def test_compile_fullgraph_cuda():
    f = torch.compile(lambda g: newton_schulz(g, 5) + 1.0, fullgraph=True)
    G = torch.randn(16, 64, 64, device="cuda")
    assert rel_err(f(G), newton_schulz(G, 5) + 1.0) < 1e-6


def test_graph_capture():
    """No host sync inside: the op can be captured in a CUDA graph."""
    G = torch.randn(32, 128, 128, device="cuda")
    newton_schulz(G)  # warm-up (kernel attributes, allocator)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = newton_schulz(G)
    G.copy_(torch.randn_like(G))
    g.replay()
    torch.cuda.synchronize()
    assert rel_err(out, newton_schulz(G)) < 1e-6
