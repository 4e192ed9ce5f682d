"""nlcore.ops.dgd / gated_delta_rule against the token-by-token float64 reference (DESIGN §3.1)."""
import importlib
import itertools

import pytest
import torch
import torch.nn.functional as F

from nlcore.ops import dgd, gated_delta_rule
from nlcore.reference import dgd as ref_dgd

from conftest import rel_err

dgd_module = importlib.import_module("nlcore.ops.dgd")
LOW = (torch.bfloat16, torch.float16)


def make_inputs(B=2, T=70, H=2, HV=None, K=16, V=8, dtype=torch.float32, g=True, erase=True,
                h0=True, N=None, requires_grad=False):
    """Inputs that make the state move: unit keys, beta in (0, 1), erase in (0, 1.5), mild
    retention, a random initial state."""
    HV = HV or H
    N = N or B
    x = dict(
        q=torch.randn(B, T, H, K),
        k=F.normalize(torch.randn(B, T, H, K), dim=-1),
        v=torch.randn(B, T, HV, V),
        beta=torch.rand(B, T, HV) * 0.9 + 0.05,
        g=(F.logsigmoid(torch.randn(B, T, HV) + 3.0) if g else None),
        erase=(torch.rand(B, T, HV) * 1.4 + 0.05 if erase else None),
        initial_state=(torch.randn(N, HV, K, V) if h0 else None),
    )
    for n in ("q", "k", "v"):
        x[n] = x[n].to(dtype)
    if requires_grad:
        for n, t in x.items():
            if t is not None:
                t.requires_grad_(True)
    return x


def as64(x):
    return {n: (None if t is None else t.detach().double().requires_grad_(t.requires_grad))
            for n, t in x.items()}


def run(fn, x, **kw):
    return fn(x["q"], x["k"], x["v"], x["beta"], g=x["g"], erase=x["erase"],
              initial_state=x["initial_state"], output_final_state=True, **kw)


def grads_of(fn, x, wo, ws, **kw):
    x = {n: (None if t is None else t.detach().clone().requires_grad_(True)) for n, t in x.items()}
    o, s = run(fn, x, **kw)
    ((o.to(wo.dtype) * wo).sum() + (s.to(ws.dtype) * ws).sum()).backward()
    return {n: t.grad for n, t in x.items() if t is not None}


def contract_bound(x, dtype, fwd_or_grads, wo=None, ws=None, **kw):
    """err bound: 1e-4 for float32 inputs; 3 x the emulated reference's error for bf16/fp16."""
    if dtype not in LOW:
        return None
    x64 = as64(x)
    if fwd_or_grads == "fwd":
        truth = run(ref_dgd, x64, **kw)
        emu = run(ref_dgd, x64, emulate=dtype, **kw)
        return [3 * rel_err(e.to(dtype) if i == 0 else e, t) + 1e-6
                for i, (e, t) in enumerate(zip(emu, truth))]
    truth = grads_of(ref_dgd, x64, wo.double(), ws.double(), **kw)
    emu = grads_of(lambda *a, **k: ref_dgd(*a, emulate=dtype, **k), x64, wo.double(),
                   ws.double(), **kw)
    return {n: 3 * rel_err(emu[n], truth[n]) + 1e-6 for n in truth}


# ------------------------------------------------------------------------------ forward --
GRID = list(itertools.product([1, 63, 64, 65], ["after", "before"], [True, False], [True, False]))


@pytest.mark.parametrize("T, read, with_g, with_erase", GRID)
def test_forward_fp32(T, read, with_g, with_erase):
    x = make_inputs(B=2, T=T, H=2, HV=4, K=16, V=8, g=with_g, erase=with_erase,
                    h0=(T % 2 == 1))
    o, s = run(dgd, x, read=read)
    to, ts = run(ref_dgd, as64(x), read=read)
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    assert rel_err(o, to) < 1e-4 and rel_err(s, ts) < 1e-4


@pytest.mark.parametrize("K, V", [(32, 32), (64, 64), (128, 128), (32, 64), (64, 32), (256, 32)])
def test_head_dims(K, V):
    x = make_inputs(B=1, T=100, H=2, K=K, V=V)
    o, s = run(dgd, x)
    to, ts = run(ref_dgd, as64(x))
    assert rel_err(o, to) < 1e-4 and rel_err(s, ts) < 1e-4


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("read", ["after", "before"])
def test_forward_low_precision(dtype, read):
    x = make_inputs(B=2, T=130, H=2, HV=4, K=32, V=16, dtype=dtype)
    o, s = run(dgd, x, read=read)
    assert o.dtype == dtype and s.dtype == torch.float32
    to, ts = run(ref_dgd, as64(x), read=read)
    bo, bs = contract_bound(x, dtype, "fwd", read=read)
    assert rel_err(o, to) <= bo and rel_err(s, ts) <= bs


def test_float64_exact_and_state_moves():
    x = as64(make_inputs(B=2, T=200, H=1, HV=2, K=16, V=16))
    o, s = run(dgd, x)
    to, ts = run(ref_dgd, x)
    assert rel_err(o, to) < 1e-12 and rel_err(s, ts) < 1e-12
    h0 = x["initial_state"]
    assert ((s - h0).norm() / h0.norm()).item() >= 0.1  # the state really moved


def test_long_sequence_finite():
    x = make_inputs(B=1, T=16384, H=1, K=32, V=32)
    o, s = run(dgd, x)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    to, ts = run(ref_dgd, as64(x))
    assert rel_err(o, to) < 1e-4 and rel_err(s, ts) < 1e-4


@pytest.mark.parametrize("chunk", [1, 7, 16, 100])
def test_independent_of_chunk_size(chunk, monkeypatch):
    x = make_inputs(B=2, T=150, H=2, K=16, V=16)
    base = run(dgd, x)
    monkeypatch.setattr(dgd_module, "CHUNK_SIZE", chunk)
    other = run(dgd, x)
    assert rel_err(other[0], base[0]) < 1e-5 and rel_err(other[1], base[1]) < 1e-5


def test_varlen_equals_separate_calls():
    lens = [17, 64, 1, 100, 0, 33]
    T = sum(lens)
    x = make_inputs(B=1, T=T, H=2, HV=4, K=16, V=8, N=len(lens))
    cu = torch.tensor([0] + list(itertools.accumulate(lens)), dtype=torch.int32)
    o, s = run(dgd, x, cu_seqlens=cu, read="before")
    for i, n in enumerate(lens):
        t0 = int(cu[i])
        sub = {k: (None if v is None else (v[i:i + 1] if k == "initial_state"
                                           else v[:, t0:t0 + n])) for k, v in x.items()}
        if n == 0:
            assert torch.equal(s[i], x["initial_state"][i])
            continue
        oi, si = run(dgd, sub, read="before")
        assert rel_err(o[:, t0:t0 + n], oi) < 1e-6 and rel_err(s[i:i + 1], si) < 1e-6
    to, ts = run(ref_dgd, as64(x), cu_seqlens=cu, read="before")
    assert rel_err(o, to) < 1e-4 and rel_err(s, ts) < 1e-4


def test_gated_delta_rule_is_dgd_with_gated_erase():
    x = make_inputs(B=2, T=80, H=2, K=16, V=16)
    o1, s1 = gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"],
                              initial_state=x["initial_state"], output_final_state=True)
    o2, s2 = dgd(x["q"], x["k"], x["v"], x["beta"], g=x["g"], erase=x["g"].exp() * x["beta"],
                 initial_state=x["initial_state"], output_final_state=True)
    assert rel_err(o1, o2) < 1e-6 and rel_err(s1, s2) < 1e-6
    # fla's own form of the recurrence, token by token
    q, k, v = (t.double() for t in (x["q"], x["k"], x["v"]))
    S = x["initial_state"].double()
    scale = 16 ** -0.5
    for t in range(80):
        gt = x["g"][:, t].double().exp()[..., None, None]
        bt = x["beta"][:, t].double()[..., None]
        S = gt * S
        kv = torch.einsum("bhk,bhkv->bhv", k[:, t], S)
        S = S + torch.einsum("bhk,bhv->bhkv", k[:, t], bt * (v[:, t] - kv))
        ot = scale * torch.einsum("bhk,bhkv->bhv", q[:, t], S)
        assert rel_err(o1[:, t], ot) < 1e-4
    assert rel_err(s1, S) < 1e-4


def test_gated_delta_rule_l2norm_and_none_state():
    x = make_inputs(B=1, T=20, H=2, K=16, V=16, h0=False)
    q, k = x["q"] * 3, torch.randn_like(x["k"]) * 2
    o1, s1 = gated_delta_rule(q, k, x["v"], x["g"], x["beta"], use_qk_l2norm_in_kernel=True)
    o2, _ = gated_delta_rule(F.normalize(q, dim=-1, eps=0), F.normalize(k, dim=-1, eps=0),
                             x["v"], x["g"], x["beta"])
    assert s1 is None and rel_err(o1, o2) < 1e-5


def _fla_gt_form(x, chunk=16):
    """fla's chunk solve: beta with G_t where DGD has the erase with G_{t-1}; it assumes
    erase = exp(g)·beta (erase itself is ignored). Used to show the tests have teeth."""
    q, k, v, beta, g = (x[n].double() for n in ("q", "k", "v", "beta", "g"))
    B, T, H, K = q.shape
    S = x["initial_state"].double().clone()
    out = torch.empty_like(v)
    for c0 in range(0, T, chunk):
        sl = slice(c0, min(T, c0 + chunk))
        Q, Kc, Vc = (t[:, sl].transpose(1, 2) for t in (q, k, v))
        be, gg = (t[:, sl].transpose(1, 2) for t in (beta, g))
        G = gg.cumsum(-1)
        C = G.shape[-1]
        low = torch.ones(C, C, dtype=torch.bool).tril(-1)
        inc = torch.ones(C, C, dtype=torch.bool).tril()
        gam = (G[..., :, None] - G[..., None, :]).masked_fill(~low, float("-inf")).exp()
        L = be[..., :, None] * gam * (Kc @ Kc.mT)
        U = be[..., None] * Vc - (be * G.exp())[..., None] * (Kc @ S)
        W = torch.linalg.solve_triangular(torch.eye(C, dtype=L.dtype) + L, U, upper=False,
                                          unitriangular=True)
        M = (G[..., :, None] - G[..., None, :]).masked_fill(~inc, float("-inf")).exp()
        out[:, sl] = (K ** -0.5 * (G.exp()[..., None] * (Q @ S) + (M * (Q @ Kc.mT)) @ W)
                      ).transpose(1, 2)
        S = G[..., -1, None, None].exp() * S + Kc.mT @ ((G[..., -1:] - G).exp()[..., None] * W)
    return out


def test_fla_gt_form_would_fail():
    x = make_inputs(B=1, T=64, H=2, K=16, V=16)
    truth, _ = run(ref_dgd, as64(x))
    ours, _ = run(dgd, x)
    assert rel_err(ours, truth) < 1e-4
    assert rel_err(_fla_gt_form(x), truth) > 1e-2  # far outside the tolerance
    gated = dict(x, erase=x["g"].exp() * x["beta"])  # ... and right where fla uses it
    assert rel_err(_fla_gt_form(gated), run(ref_dgd, as64(gated))[0]) < 1e-6


# ------------------------------------------------------------------------------ gradients --
@pytest.mark.parametrize("read", ["after", "before"])
@pytest.mark.parametrize("with_g, with_erase, h0", [(True, True, True), (False, False, False),
                                                    (True, False, True), (False, True, False)])
def test_grads_float64(read, with_g, with_erase, h0, monkeypatch):
    monkeypatch.setattr(dgd_module, "CHUNK_SIZE", 16)
    x = as64(make_inputs(B=2, T=37, H=1, HV=2, K=8, V=8, g=with_g, erase=with_erase, h0=h0))
    wo, ws = torch.randn(2, 37, 2, 8, dtype=torch.float64), torch.randn(2, 2, 8, 8,
                                                                         dtype=torch.float64)
    ours = grads_of(dgd, x, wo, ws, read=read)
    truth = grads_of(ref_dgd, x, wo, ws, read=read)
    assert ours.keys() == truth.keys()
    for n in truth:
        assert rel_err(ours[n], truth[n]) < 1e-10, n


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grads_precision_contract(dtype):
    x = make_inputs(B=1, T=90, H=2, HV=4, K=16, V=16, dtype=dtype)
    wo, ws = torch.randn(1, 90, 4, 16), torch.randn(1, 4, 16, 16)
    ours = grads_of(dgd, x, wo, ws)
    truth = grads_of(ref_dgd, as64(x), wo.double(), ws.double())
    bounds = contract_bound(x, dtype, "grads", wo, ws)
    for n in truth:
        bound = 1e-4 if bounds is None else bounds[n]
        assert rel_err(ours[n], truth[n]) <= bound, (n, rel_err(ours[n], truth[n]), bound)


def test_grads_varlen(monkeypatch):
    monkeypatch.setattr(dgd_module, "CHUNK_SIZE", 8)
    cu = torch.tensor([0, 5, 5, 21, 30], dtype=torch.int64)
    x = as64(make_inputs(B=1, T=30, H=1, HV=2, K=4, V=4, N=4))
    wo, ws = torch.randn(1, 30, 2, 4, dtype=torch.float64), torch.randn(4, 2, 4, 4,
                                                                         dtype=torch.float64)
    ours = grads_of(dgd, x, wo, ws, cu_seqlens=cu)
    truth = grads_of(ref_dgd, x, wo, ws, cu_seqlens=cu)
    for n in truth:
        assert rel_err(ours[n], truth[n]) < 1e-10, n


def test_gradcheck(monkeypatch):
    monkeypatch.setattr(dgd_module, "CHUNK_SIZE", 4)
    x = as64(make_inputs(B=1, T=10, H=1, HV=2, K=3, V=2, requires_grad=True))
    names = ["q", "k", "v", "beta", "g", "erase", "initial_state"]

    def f(*ts):
        d = dict(zip(names, ts))
        return run(dgd, d, read="before")

    assert torch.autograd.gradcheck(f, tuple(x[n] for n in names))


def test_final_state_gradient_chains_pieces():
    """Processing a sequence in two pieces (state passed on) gives the same gradients."""
    x = as64(make_inputs(B=1, T=50, H=1, K=8, V=8))
    wo = torch.randn(1, 50, 1, 8, dtype=torch.float64)
    full = grads_of(dgd, x, wo, torch.zeros(1, 1, 8, 8, dtype=torch.float64))
    leaves = {n: t.detach().clone().requires_grad_() for n, t in x.items()}
    a = {n: (t if n == "initial_state" else t[:, :20]) for n, t in leaves.items()}
    o1, s1 = run(dgd, a)
    b = {n: (s1 if n == "initial_state" else t[:, 20:]) for n, t in leaves.items()}
    o2, _ = run(dgd, b)
    ((o1 * wo[:, :20]).sum() + (o2 * wo[:, 20:]).sum()).backward()
    for n in full:
        assert rel_err(leaves[n].grad, full[n]) < 1e-10, n


def test_decoding_token_by_token_equals_full_sequence():
    """T = 1 steps with the state carried (the decoding path) equal one full call."""
    x = make_inputs(B=2, T=40, H=2, HV=4, K=16, V=8)
    o_full, s_full = run(dgd, x, read="before")
    S = x["initial_state"]
    for t in range(40):
        step = {n: (S if n == "initial_state" else v[:, t:t + 1]) for n, v in x.items()}
        o_t, S = run(dgd, step, read="before")
        assert rel_err(o_t, o_full[:, t:t + 1]) < 1e-5
    assert rel_err(S, s_full) < 1e-5


def test_autocast_casts_qkv_to_one_dtype():
    x = make_inputs(B=1, T=20, H=2, K=16, V=16)
    k16 = x["k"].to(torch.bfloat16)  # e.g. the output of a bf16 projection beside an fp32 q
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, s = dgd(x["q"], k16, x["v"], x["beta"], g=x["g"], output_final_state=True)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    ref, _ = dgd(x["q"].bfloat16(), k16, x["v"].bfloat16(), x["beta"], g=x["g"])
    assert torch.equal(o, ref)


# ------------------------------------------------------------------------------ op machinery --
def test_opcheck(monkeypatch):
    x = make_inputs(B=1, T=9, H=1, HV=2, K=4, V=4, requires_grad=True)
    args = (x["q"], x["k"], x["v"], x["beta"], x["g"], x["erase"], x["initial_state"], None,
            0.5, False, 4)
    torch.library.opcheck(torch.ops.nlcore.dgd.default, args)
    cu = torch.tensor([0, 4, 9])
    x2 = make_inputs(B=1, T=9, H=1, K=4, V=4, g=False, erase=False, N=2)
    torch.library.opcheck(torch.ops.nlcore.dgd.default,
                          (x2["q"], x2["k"], x2["v"], x2["beta"], None, None,
                           x2["initial_state"], cu, 0.5, True, 4))


def test_torch_compile_fullgraph():
    x = make_inputs(B=1, T=40, H=2, K=8, V=8, requires_grad=True)

    def f(q, k, v, beta, g, erase, h0):
        o, s = dgd(q, k, v, beta, g=g, erase=erase, initial_state=h0, output_final_state=True,
                   read="before")
        return o.square().sum() + s.sum()

    args = [x[n] for n in ("q", "k", "v", "beta", "g", "erase", "initial_state")]
    eager = torch.autograd.grad(f(*args), args)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(*args), args)
    for a, b in zip(got, eager):
        assert rel_err(a, b) < 1e-6


# ------------------------------------------------------------------------------ bad input --
def _bad(**over):
    x = make_inputs(B=2, T=8, H=2, K=4, V=4)
    x.update(over)
    return x


@pytest.mark.parametrize("over, exc, match", [
    (dict(k=torch.randn(2, 8, 2, 5)), ValueError, "k must have q's shape"),
    (dict(v=torch.randn(2, 9, 2, 4)), ValueError, "v must be"),
    (dict(v=torch.randn(2, 8, 3, 4)), ValueError, "multiple of q/k's heads"),
    (dict(beta=torch.rand(2, 8, 3)), ValueError, "beta must be"),
    (dict(g=torch.rand(2, 7, 2)), ValueError, "g must be"),
    (dict(erase=torch.rand(8, 2)), ValueError, "erase must be"),
    (dict(initial_state=torch.randn(2, 2, 4, 5)), ValueError, "initial_state must be"),
    (dict(q=torch.randn(2, 8, 2)), ValueError, "q must be"),
    (dict(q=torch.ones(2, 8, 2, 4, dtype=torch.int64)), TypeError, "q must be a floating"),
    (dict(beta=torch.ones(2, 8, 2, dtype=torch.int32)), TypeError, "beta must be a floating"),
    (dict(v=torch.randn(2, 8, 2, 4, dtype=torch.float64)), TypeError, "share one dtype"),
])
def test_bad_input(over, exc, match):
    x = _bad(**over)
    with pytest.raises(exc, match=match):
        run(dgd, x)


@pytest.mark.parametrize("cu, B, match", [
    ([0, 3, 2, 8], 1, "non-decreasing"),
    ([1, 3, 8], 1, "start at 0"),
    ([0, 3, 7], 1, "end at T"),
    ([0, 3, 8], 2, "batch size must be 1"),
])
def test_bad_cu_seqlens(cu, B, match):
    cu = torch.tensor(cu, dtype=torch.int32)
    x = make_inputs(B=B, T=8, H=1, K=4, V=4, N=len(cu) - 1)
    with pytest.raises(ValueError, match=match):
        run(dgd, x, cu_seqlens=cu)


def test_bad_arguments():
    x = make_inputs(B=1, T=4, H=1, K=4, V=4)
    with pytest.raises(ValueError, match="read"):
        run(dgd, x, read="during")
    with pytest.raises(ValueError, match="scale"):
        run(dgd, x, scale=float("nan"))
    with pytest.raises(TypeError, match="cu_seqlens"):
        run(dgd, x, cu_seqlens=torch.tensor([0.0, 4.0]))
