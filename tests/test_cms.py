"""nlcore.nn.CMS / CMSLevel (DESIGN §3.2, CMS paragraph): shapes, the documented level math
against the float64 reference scan, streaming, varlen, gradients, from_mlp, bad arguments."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nlcore
from nlcore.nn import CMS, CMSLevel
from nlcore.reference import memory_mlp_scan as ref_scan

from conftest import rel_err

D_MODEL, HEADS = 16, 2


def small_cms(**kw):
    """Three tiny levels, η large enough that the memories move materially."""
    args = dict(chunk_sizes=(2, 4, 8), hidden_size=(32, 16, 32), eta_max=(0.05, 0.03, 0.02),
                momentum=(0.0, 0.5, 0.0), retention=True)
    args.update(kw)
    return CMS(D_MODEL, HEADS, **args)


def randn_u(B=2, T=21, dtype=torch.float32):
    return torch.randn(B, T, D_MODEL, dtype=dtype)


def static_mlp(level, u):
    """The level's initial memory read on u, `[u +] W_out σ(W_in u)` per head (no learning)."""
    B, T, _ = u.shape
    x = u.view(B, T, level.num_heads, level.head_dim)
    z = torch.einsum("bthd,hfd->bthf", x, level.w_in)
    h = F.silu(z) if level.activation == "silu" else F.gelu(z)
    y = torch.einsum("bthf,hdf->bthd", h, level.w_out)
    return (x + y if level.residual else y).reshape(B, T, -1)


def test_exported():
    assert nlcore.nn.CMS is CMS and "nn" in nlcore.__all__


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_dtypes_and_state(dtype):
    cms = small_cms(dtype=dtype)
    u = randn_u(dtype=dtype)
    y = cms(u)
    assert y.shape == u.shape and y.dtype == dtype and torch.isfinite(y).all()
    y2, st = cms(u, return_state=True)
    assert torch.equal(y, y2) and len(st) == 3
    for level, s in zip(cms.levels, st):
        Fh = level.hidden_size // HEADS
        assert isinstance(s, nlcore.MLPMemoryState)
        assert s.w_in.shape == (2, HEADS, Fh, D_MODEL // HEADS)
        assert s.w_out.shape == (2, HEADS, D_MODEL // HEADS, Fh)
        assert s.n.tolist() == [21 % level.chunk_size] * 2
    # the in-context updates matter: the slowest level moved, and y is not the static chain
    assert rel_err(st[2].w_in[0], cms.levels[2].w_in) > 1e-2
    static = u
    for level in cms.levels:
        static = static_mlp(level, static)
    assert rel_err(y, static) > 1e-3


@pytest.mark.parametrize("norm", [None, "rmsnorm"])
def test_level_is_the_documented_scan(norm):
    """The module hands the scan exactly the documented inputs (float64 reference scan)."""
    level = CMSLevel(D_MODEL, HEADS, 4, 24, eta_max=0.05, momentum=0.3, retention=True,
                     norm=norm, dtype=torch.float64)
    u = randn_u(T=11, dtype=torch.float64)
    H, D = HEADS, D_MODEL // HEADS
    with torch.no_grad():
        x = u if norm is None else level.norm(u)
        k = F.normalize(level.k_proj(x).view(2, 11, H, D), dim=-1) * math.sqrt(D)
        v = level.v_proj(x).view(2, 11, H, D)
        eta = 0.05 * torch.sigmoid(level.eta_proj(x))
        g = F.logsigmoid(level.gate_proj(x)) / 4
        want, _ = ref_scan(x.view(2, 11, H, D), k, v, eta, level.w_in, level.w_out, 4, g=g,
                           momentum=0.3)
        want = want.reshape(u.shape)
        if norm is not None:
            want = want - x + u
        got = level(u)
    assert rel_err(got, want) < 1e-10


def test_default_eta_max_and_retention_init():
    cms = CMS(D_MODEL, HEADS, (4, 16), retention=True)
    D = D_MODEL // HEADS
    assert [lv.eta_max for lv in cms.levels] == [1 / (4 * D), 1 / (16 * D)]
    assert [lv.hidden_size for lv in cms.levels] == [4 * D_MODEL] * 2
    assert torch.allclose(torch.sigmoid(cms.levels[0].gate_proj.bias), torch.tensor(0.99))


@pytest.mark.parametrize("cuts", [(5,), (1, 3, 9), (8, 16)])
def test_streaming_in_pieces_equals_one_call(cuts):
    """Pieces cut inside chunks of every level (C = 2, 4, 8) continue exactly."""
    cms = small_cms()
    u = randn_u(T=21)
    y_full, st_full = cms(u, return_state=True)
    ys, st = [], None
    bounds = (0,) + cuts + (21,)
    for a, b in zip(bounds[:-1], bounds[1:]):
        y, st = cms(u[:, a:b], st, return_state=True)
        ys.append(y)
    assert rel_err(torch.cat(ys, 1), y_full) < 1e-5
    for s, sf in zip(st, st_full):
        for name in ("w_in", "w_out", "p_in", "p_out", "acc_in", "acc_out", "acc_g"):
            assert rel_err(getattr(s, name), getattr(sf, name)) < 1e-5, name
        assert torch.equal(s.n, sf.n)


def test_token_by_token_decoding_equals_full():
    cms = small_cms(chunk_sizes=(2, 3, 4))
    u = randn_u(B=1, T=9)
    y_full = cms(u)
    st, ys = None, []
    for t in range(9):
        y, st = cms(u[:, t:t + 1], st, return_state=True)
        ys.append(y)
    assert rel_err(torch.cat(ys, 1), y_full) < 1e-5


def test_varlen_equals_separate_calls():
    cms = small_cms()
    lens = [7, 13, 10]
    seqs = [randn_u(B=1, T=n) for n in lens]
    cu = torch.tensor([0, 7, 20, 30], dtype=torch.int32)
    y, st = cms(torch.cat(seqs, 1), cu_seqlens=cu, return_state=True)
    assert st[0].w_in.shape[0] == 3
    for i, s in enumerate(seqs):
        yi, sti = cms(s, return_state=True)
        assert rel_err(y[:, cu[i]:cu[i + 1]], yi) < 1e-5
        for lv in range(3):
            assert rel_err(st[lv].w_out[i], sti[lv].w_out[0]) < 1e-5
            assert st[lv].n[i] == sti[lv].n[0]


def test_varlen_streaming():
    """Packed sequences continue from a packed state."""
    cms = small_cms()
    cu1 = torch.tensor([0, 5, 11])
    cu2 = torch.tensor([0, 6, 9])
    a, b = randn_u(B=1, T=11), randn_u(B=1, T=9)
    ya, st = cms(a, cu_seqlens=cu1, return_state=True)
    yb = cms(b, st, cu_seqlens=cu2)
    for i in range(2):
        whole = torch.cat([a[:, cu1[i]:cu1[i + 1]], b[:, cu2[i]:cu2[i + 1]]], 1)
        want = cms(whole)
        got = torch.cat([ya[:, cu1[i]:cu1[i + 1]], yb[:, cu2[i]:cu2[i + 1]]], 1)
        assert rel_err(got, want) < 1e-5


def test_gradients_reach_every_parameter():
    cms = small_cms(norm="rmsnorm")
    u = randn_u(T=20).requires_grad_(True)
    (cms(u) * torch.randn(2, 20, D_MODEL)).sum().backward()
    for name, p in cms.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert u.grad is not None and u.grad.abs().sum() > 0


def test_gradients_flow_through_carried_state():
    cms = small_cms()
    u = randn_u(T=12)
    _, st = cms(u[:, :5], return_state=True)
    cms(u[:, 5:], st).sum().backward()
    assert all(p.grad is not None for p in cms.parameters())


def test_tiny_eta_is_a_static_mlp_chain():
    cms = small_cms(eta_max=1e-9, retention=False)
    u = randn_u(T=21)
    want = u
    for level in cms.levels:
        want = static_mlp(level, want)
    assert rel_err(cms(u), want) < 1e-6


@pytest.mark.parametrize("activation", ["silu", "gelu"])
@pytest.mark.parametrize("residual", [False, True])
def test_from_mlp_single_head_is_exact(activation, residual):
    lin1 = nn.Linear(D_MODEL, 40, bias=False)
    lin2 = nn.Linear(40, D_MODEL, bias=False)
    act = nn.SiLU() if activation == "silu" else nn.GELU()
    level = CMSLevel.from_mlp(lin1, lin2, chunk_size=3, eta_max=0.0, activation=activation,
                              residual=residual, momentum=0.5)
    assert level.num_heads == 1 and level.hidden_size == 40
    u = randn_u(T=10)
    with torch.no_grad():
        want = lin2(act(lin1(u))) + (u if residual else 0)
        assert rel_err(level(u), want) < 1e-6
    # with learning on, the same start diverges from the static MLP after the first chunk
    level.eta_max = 0.05
    with torch.no_grad():
        y = level(u)
    assert rel_err(y[:, :3], want[:, :3]) < 1e-6 and rel_err(y[:, 3:], want[:, 3:]) > 1e-4


def test_from_mlp_block_diagonal_heads():
    H, D, Fh = 2, D_MODEL // 2, 12
    lin1 = nn.Linear(D_MODEL, H * Fh, bias=False)
    lin2 = nn.Linear(H * Fh, D_MODEL, bias=False)
    with pytest.raises(ValueError, match="off-diagonal"):
        CMSLevel.from_mlp(lin1, lin2, 4, num_heads=H, eta_max=0.0)
    u = randn_u(T=9)
    with torch.no_grad():
        mask1 = torch.block_diag(*[torch.ones(Fh, D)] * H)
        level = CMSLevel.from_mlp(lin1, lin2, 4, num_heads=H, eta_max=0.0, residual=False,
                                  strict=False)
        lin1.weight.mul_(mask1)
        lin2.weight.mul_(mask1.T)
        want = lin2(F.silu(lin1(u)))
        assert rel_err(level(u), want) < 1e-6
        exact = CMSLevel.from_mlp(lin1, lin2, 4, num_heads=H, eta_max=0.0, residual=False)
        assert rel_err(exact(u), want) < 1e-6


def test_from_mlp_biases():
    lin1, lin2 = nn.Linear(D_MODEL, 32), nn.Linear(32, D_MODEL)
    with pytest.raises(ValueError, match="nonzero bias"):
        CMSLevel.from_mlp(lin1, lin2, 4)
    with torch.no_grad():
        lin1.bias.zero_()
        lin2.bias.zero_()
    CMSLevel.from_mlp(lin1, lin2, 4)  # zero biases are fine
    with pytest.raises(ValueError, match="linear_out must map"):
        CMSLevel.from_mlp(lin1, nn.Linear(16, D_MODEL, bias=False), 4)


def test_cms_from_mlp_stacks_levels():
    mlps = [(nn.Linear(D_MODEL, 24, bias=False), nn.Linear(24, D_MODEL, bias=False)),
            None,
            (nn.Linear(D_MODEL, 40, bias=False), nn.Linear(40, D_MODEL, bias=False))]
    cms = CMS.from_mlp(mlps, (2, 8, 32), eta_max=0.0)
    assert [lv.hidden_size for lv in cms.levels] == [24, 4 * D_MODEL, 40]
    u = randn_u(T=11)
    with torch.no_grad():
        h = u + mlps[0][1](F.silu(mlps[0][0](u)))
        h = static_mlp(cms.levels[1], h)
        want = h + mlps[2][1](F.silu(mlps[2][0](h)))
        assert rel_err(cms(u), want) < 1e-6
    one = CMS.from_mlp(mlps[0], 4, eta_max=0.0)
    assert len(one) == 1


def test_norm_variants_are_pre_norm_blocks():
    lin1 = nn.Linear(D_MODEL, 32, bias=False)
    lin2 = nn.Linear(32, D_MODEL, bias=False)
    level = CMSLevel.from_mlp(lin1, lin2, 4, eta_max=0.0, norm="layernorm")
    u = randn_u(T=6)
    with torch.no_grad():
        want = u + lin2(F.silu(lin1(F.layer_norm(u, (D_MODEL,)))))
        assert rel_err(level(u), want) < 1e-6


@pytest.mark.parametrize("kwargs,match", [
    (dict(d_model=15, num_heads=2), "divisible by num_heads"),
    (dict(chunk_sizes=()), "non-empty"),
    (dict(chunk_sizes=(4, 2.5)), r"chunk_sizes\[1\] must be an int"),
    (dict(chunk_sizes=(4, 0)), r"chunk_sizes\[1\] must be an int >= 1"),
    (dict(chunk_sizes=(4, True)), r"chunk_sizes\[1\]"),
    (dict(hidden_size=(32, 31)), "divisible by num_heads"),
    (dict(hidden_size=(32, 32, 32)), "3 entries for 2 levels"),
    (dict(eta_max=-1.0), "eta_max"),
    (dict(activation="relu"), "activation"),
    (dict(objective="l1"), "objective"),
    (dict(norm="batchnorm"), "norm"),
    (dict(hidden_mult=1.3), "hidden_mult"),
])
def test_bad_arguments(kwargs, match):
    args = dict(d_model=D_MODEL, num_heads=HEADS, chunk_sizes=(4, 16))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        CMS(**args)


def test_bad_forward_inputs():
    cms = small_cms()
    with pytest.raises(ValueError, match=r"\[B, T, d_model=16\]"):
        cms(torch.randn(2, 5, 12))
    _, st = cms(randn_u(T=3), return_state=True)
    with pytest.raises(ValueError, match="one MLPMemoryState"):
        cms(randn_u(T=3), st[:2])
    with pytest.raises(ValueError, match="linear_in must map"):
        cms.levels[0].load_mlp_(nn.Linear(3, 3), nn.Linear(3, 3))


def test_torch_compile_fullgraph():
    """One CMS forward+backward under torch.compile(fullgraph=True). backend="aot_eager"
    traces the full graph (dynamo + the op's fake/autograd registration) without inductor's
    C++ code generation, which would dominate the run time on a CPU machine."""
    cms = small_cms()
    u = randn_u(T=10)

    def f(uu):
        y, st = cms(uu, return_state=True)
        return y.square().mean() + st[-1].w_in.sum()
    want = torch.autograd.grad(f(u), list(cms.parameters()))
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(u), list(cms.parameters()))
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-5


@pytest.mark.slow
def test_torch_compile_inductor_forward():
    """The default (inductor) backend on one level's forward: ~10 s of C++ codegen on a busy
    CPU machine, hence `slow` (deselect with -m "not slow")."""
    level = CMSLevel(D_MODEL, HEADS, 4, eta_max=0.05)
    u = randn_u(T=10)
    with torch.no_grad():
        assert rel_err(torch.compile(level, fullgraph=True)(u), level(u)) < 1e-5
