"""nlcore.ops.newton_schulz against the float64 reference (DESIGN §3.4, §2, §6)."""
import pytest
import torch
from torch.optim._muon import _zeropower_via_newtonschulz

import nlcore
from nlcore import _coefficients
from nlcore.ops import newton_schulz
from nlcore.reference import newton_schulz as ref_ns

from conftest import rel_err

LOW = (torch.bfloat16, torch.float16)
MUON = (3.4445, -4.7750, 2.0315)
SHAPES = [(16, 16), (8, 24), (24, 8), (1, 9), (9, 1), (1, 12, 20), (3, 2, 17, 5),
          (1000, 4, 6), (64, 96)]
COEFS = ["muon", "polar_express", (3.0, -3.2, 1.2), "list"]


def _coefficients_arg(name, steps):
    if name == "list":  # one explicit triple per step, all different
        return [(3.4 - 0.1 * i, -4.7 + 0.2 * i, 2.0 - 0.05 * i) for i in range(steps)]
    return name


def _check_contract(out, G, steps, coefficients, compute_dtype, eps=1e-7):
    """err(op) ≤ 3·err(emulated reference) for bf16/fp16 compute; 1e-4 for fp32."""
    truth = ref_ns(G.double(), steps, coefficients, eps)
    err = rel_err(out, truth)
    if compute_dtype == torch.float32 and G.dtype == torch.float32:
        assert err <= 1e-4, f"fp32 compute: rel err {err:.3e} > 1e-4"
        return err
    emulated = ref_ns(G.double(), steps, coefficients, eps,
                      emulate=compute_dtype if compute_dtype in LOW else None)
    if G.dtype in LOW:  # the output is rounded to G's dtype as well
        emulated = emulated.to(G.dtype)
    bound = 3 * rel_err(emulated, truth) + 1e-6
    assert err <= bound, f"rel err {err:.3e} > 3 x emulated ({bound:.3e})"
    return err


# ---------------------------------------------------------------- forward -------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("coefficients", COEFS)
def test_forward_bf16_compute(shape, coefficients):
    steps = 5
    G = torch.randn(shape)
    coefs = _coefficients_arg(coefficients, steps)
    out = newton_schulz(G, steps, coefs)
    assert out.shape == G.shape and out.dtype == G.dtype
    _check_contract(out, G, steps, coefs, torch.bfloat16)


@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("compute_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(32, 48), (2, 40, 24)])
def test_forward_dtypes(in_dtype, compute_dtype, shape):
    G = torch.randn(shape).to(in_dtype)
    out = newton_schulz(G, 5, "muon", compute_dtype=compute_dtype)
    assert out.dtype == in_dtype
    _check_contract(out, G, 5, "muon", compute_dtype)


@pytest.mark.parametrize("steps", [1, 3, 8, 11])
def test_polar_express_steps_beyond_table(steps):
    G = torch.randn(4, 20, 30)
    out = newton_schulz(G, steps, "polar_express", compute_dtype=torch.float32)
    _check_contract(out, G, steps, "polar_express", torch.float32)


def test_float64_is_exact():
    G = torch.randn(3, 12, 7, dtype=torch.float64)
    out = newton_schulz(G, 6, "polar_express")  # compute_dtype is ignored for float64
    assert out.dtype == torch.float64
    assert rel_err(out, ref_ns(G, 6, "polar_express")) < 1e-12


def test_polar_express_table_matches_design():
    pe = _coefficients.POLAR_EXPRESS
    assert len(pe) == 8 and pe[-1] == (1.875, -1.25, 0.375)
    assert pe[0] == pytest.approx((8.28721201814563 / 1.01, -23.595886519098837 / 1.01**3,
                                   17.300387312530933 / 1.01**5), rel=1e-15)
    triples, scale, additive = _coefficients.resolve("polar_express", 10)
    assert triples[8] == triples[9] == pe[-1] and scale == 1.01 and additive


def test_orthogonalizes():
    """The point of NS: singular values pushed toward 1 (polar_express converges tightly)."""
    G = torch.randn(8, 32, 64, dtype=torch.float64)
    out = newton_schulz(G, 8, "polar_express")
    sv = torch.linalg.svdvals(out)
    assert (sv - 1).abs().max() < 0.05, sv
    sv_in = torch.linalg.svdvals(G / G.norm(dim=(-2, -1), keepdim=True))
    assert (sv_in - 1).abs().max() > 0.5  # the input was far from orthogonal


@pytest.mark.parametrize("shape", [(64, 64), (32, 80), (80, 32), (1, 50)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_torch_muon(shape, dtype):
    """2-D inputs: agree with torch.optim.Muon's NS within the precision contract."""
    G = torch.randn(shape).to(dtype)
    ours = newton_schulz(G, 5, MUON, eps=1e-7)
    theirs = _zeropower_via_newtonschulz(G, MUON, 5, 1e-7).to(dtype)
    truth = ref_ns(G.double(), 5, MUON, 1e-7)
    assert rel_err(ours, truth) <= 3 * rel_err(theirs, truth) + 1e-6
    assert rel_err(ours, theirs) < 0.05


def test_leading_dims_noncontiguous_and_empty_batch():
    base = torch.randn(2, 3, 20, 12)
    G = base.transpose(-1, -2)  # non-contiguous [2, 3, 12, 20]
    out = newton_schulz(G, compute_dtype=torch.float32)
    per = torch.stack([newton_schulz(G[i, j].contiguous(), compute_dtype=torch.float32)
                       for i in range(2) for j in range(3)]).reshape(out.shape)
    assert rel_err(out, per) < 1e-6
    empty = newton_schulz(torch.randn(0, 5, 7))
    assert empty.shape == (0, 5, 7)


def test_dropping_a_term_is_caught():
    """The tolerances above are far tighter than the effect of a wrong term."""
    G = torch.randn(4, 24, 40)
    truth = ref_ns(G.double(), 5, MUON)
    out = newton_schulz(G, 5, MUON)
    tol = 3 * rel_err(ref_ns(G.double(), 5, MUON, emulate=torch.bfloat16), truth)
    no_cubic = ref_ns(G.double(), 5, (MUON[0], MUON[1], 0.0))
    assert rel_err(no_cubic, truth) > 10 * tol
    assert rel_err(out, truth) <= tol


# ---------------------------------------------------------------- gradients -----------------
@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (2, 5, 5), (1, 7)])
@pytest.mark.parametrize("coefficients", ["muon", "polar_express", "list"])
def test_gradcheck(shape, coefficients):
    G = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    coefs = _coefficients_arg(coefficients, 3)
    assert torch.autograd.gradcheck(lambda g: newton_schulz(g, 3, coefs), (G,))


def test_gradcheck_small_norm_clamped():
    """‖G‖ < eps: the max(‖X‖, eps) branch (constant denominator)."""
    G = (1e-9 * torch.randn(3, 4, dtype=torch.float64)).requires_grad_()
    # finite-difference step far below ‖G‖ so the probe stays on the clamped branch
    assert torch.autograd.gradcheck(lambda g: newton_schulz(g, 2, "muon", eps=1e-7), (G,),
                                    eps=1e-14, atol=1e-3, rtol=1e-4)


def _grads(fn, G, W):
    G = G.detach().clone().requires_grad_()
    (fn(G) * W).sum().backward()
    return G.grad


@pytest.mark.parametrize("shape", [(16, 24), (24, 16), (3, 12, 12)])
@pytest.mark.parametrize("coefficients", ["muon", "polar_express"])
def test_grad_vs_reference_float64(shape, coefficients):
    G = torch.randn(shape, dtype=torch.float64)
    W = torch.randn(shape, dtype=torch.float64)
    ours = _grads(lambda g: newton_schulz(g, 5, coefficients), G, W)
    truth = _grads(lambda g: ref_ns(g, 5, coefficients), G, W)
    assert rel_err(ours, truth) < 1e-10


@pytest.mark.parametrize("compute_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16])
def test_grad_precision_contract(compute_dtype, in_dtype):
    G = torch.randn(3, 20, 28).to(in_dtype)
    W = torch.randn(3, 20, 28)
    truth = _grads(lambda g: ref_ns(g, 5, "muon"), G.double(), W.double())
    ours = _grads(lambda g: newton_schulz(g, 5, "muon", compute_dtype=compute_dtype).float(),
                  G, W)
    err = rel_err(ours, truth)
    if compute_dtype == torch.float32:
        assert err < (1e-4 if in_dtype == torch.float32 else 1e-2), err
    else:
        emu = _grads(lambda g: ref_ns(g, 5, "muon", emulate=compute_dtype), G.double(),
                     W.double())
        assert err <= 3 * rel_err(emu, truth) + 1e-6, (err, rel_err(emu, truth))


def test_dropping_a_gradient_term_is_caught():
    """Treating A = X Xᵀ as a constant in backward is far outside the gradient tolerance."""
    G = torch.randn(12, 20, dtype=torch.float64)
    W = torch.randn(12, 20, dtype=torch.float64)

    def ns_detached_gram(g):
        X = g / g.norm()
        for a, b, c in [MUON] * 5:
            A = (X @ X.mT).detach()
            X = a * X + (b * A + c * A @ A) @ X
        return X

    truth = _grads(lambda g: ref_ns(g, 5, MUON), G, W)
    ours = _grads(lambda g: newton_schulz(g, 5, MUON), G, W)
    wrong = _grads(ns_detached_gram, G, W)
    assert rel_err(ours, truth) < 1e-10
    assert rel_err(wrong, truth) > 0.1


# ---------------------------------------------------------------- op machinery ---------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck(dtype):
    G = torch.randn(2, 6, 9, dtype=dtype)
    coefs = [c for t in [MUON] * 3 for c in t]
    for requires_grad in (False, True):
        x = G.clone().requires_grad_(requires_grad and dtype != torch.bfloat16)
        torch.library.opcheck(torch.ops.nlcore.newton_schulz.default,
                              (x, coefs, 1e-7, 1.0, False, torch.bfloat16, 0))
    torch.library.opcheck(torch.ops.nlcore.newton_schulz_backward.default,
                          (torch.randn_like(G), G, coefs, 1e-7, 1.01, True, torch.float32))


def test_torch_compile_fullgraph():
    def f(g):
        return newton_schulz(g, 4, "polar_express", compute_dtype=torch.float32).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    G = torch.randn(3, 10, 14, requires_grad=True)
    G2 = G.detach().clone().requires_grad_()
    f(G).backward()
    compiled(G2).backward()
    assert rel_err(G2.grad, G.grad) < 1e-6


def test_torch_compile_inductor():
    compiled = torch.compile(lambda g: newton_schulz(g, 5) * 2.0, fullgraph=True)
    G = torch.randn(4, 16, 24)
    assert rel_err(compiled(G), newton_schulz(G, 5) * 2.0) < 1e-6


# ---------------------------------------------------------------- bad input -----------------
@pytest.mark.parametrize("G, kwargs, exc, match", [
    (torch.randn(5), {}, ValueError, "at least 2 dims"),
    (torch.randn(0, 4), {}, ValueError, "non-empty"),
    (torch.randn(4, 0), {}, ValueError, "non-empty"),
    (torch.ones(4, 4, dtype=torch.int32), {}, TypeError, "float32, bfloat16"),
    (torch.randn(4, 4), {"steps": 0}, ValueError, "steps must be an int >= 1"),
    (torch.randn(4, 4), {"steps": -2}, ValueError, "steps must be an int >= 1"),
    (torch.randn(4, 4), {"steps": 2.5}, ValueError, "steps must be an int"),
    (torch.randn(4, 4), {"steps": True}, ValueError, "steps must be an int"),
    (torch.randn(4, 4), {"steps": 3, "coefficients": [MUON, MUON]}, ValueError,
     "one triple per step"),
    (torch.randn(4, 4), {"coefficients": (1.0, 2.0)}, ValueError, "triple"),
    (torch.randn(4, 4), {"coefficients": "newton"}, ValueError, "'muon', 'polar_express'"),
    (torch.randn(4, 4), {"coefficients": (1.0, float("nan"), 2.0)}, ValueError, "finite"),
    (torch.randn(4, 4), {"compute_dtype": torch.int8}, TypeError, "compute_dtype"),
    (torch.randn(4, 4), {"eps": -1.0}, ValueError, "eps"),
    (torch.randn(4, 4), {"kernel": "fastest"}, ValueError, "kernel"),
    ([[1.0, 2.0]], {}, TypeError, "torch.Tensor"),
])
def test_bad_input(G, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        newton_schulz(G, **kwargs)


def test_bad_input_through_raw_op():
    """The C++ checks back up the Python ones with the same kinds of errors."""
    op = torch.ops.nlcore.newton_schulz
    with pytest.raises(ValueError, match="at least 2 dims"):
        op(torch.randn(3), [1.0, 2.0, 3.0], 1e-7, 1.0, False, torch.bfloat16)
    with pytest.raises(ValueError, match="3 values per step"):
        op(torch.randn(3, 3), [1.0, 2.0], 1e-7, 1.0, False, torch.bfloat16)
    with pytest.raises(TypeError, match="compute_dtype"):
        op(torch.randn(3, 3), [1.0, 2.0, 3.0], 1e-7, 1.0, False, torch.int32)
    with pytest.raises(ValueError, match="norm_scale"):
        op(torch.randn(3, 3), [1.0, 2.0, 3.0], 1e-7, 0.0, False, torch.bfloat16)


def test_cuda_kernels_flag_is_boolean():
    assert isinstance(nlcore.cuda_kernels_available(), bool)


def test_autocast_does_not_change_the_kernels_precision():
    """Inside the op, ATen calls are not autocast: fp32 compute stays fp32 under autocast."""
    G = torch.randn(3, 24, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = newton_schulz(G, 5, "muon", compute_dtype=torch.float32)
    assert out.dtype == torch.float32
    assert rel_err(out, ref_ns(G.double(), 5, "muon")) <= 1e-4
