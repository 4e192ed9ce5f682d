"""nlcore.optim.M3 (DESIGN §4): both variants against torch.optim.Muon and direct
transcriptions, routing, AdamW, state round-trip, batching of NS, bad input, training."""
import copy
import io
import math

import pytest
import torch
from torch import nn

import nlcore
import nlcore.optim.m3 as m3mod
from nlcore.optim import M3, m3_param_groups
from conftest import rel_err

SHAPES = [(32, 16), (16, 48), (24, 24), (32, 16), (6, 4, 5)]


def make_params(shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=g) * 0.1) for s in shapes]


def make_grads(shapes, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g) for s in shapes] for _ in range(steps)]


def run(opt, params, grads):
    for gs in grads:
        for p, gr in zip(params, gs):
            p.grad = gr.clone()
        opt.step()
    return [p.detach().clone() for p in params]


def ns(x, steps=5, coefs="muon", eps=1e-7, dtype=torch.float32):
    """NS of one parameter-shaped tensor, as its matrix [shape[0], prod(rest)]."""
    m = x.reshape(x.shape[0], -1)
    return nlcore.ops.newton_schulz(m, steps, coefs, eps, compute_dtype=dtype).view_as(x)


def adjust(lr, fn, shape):
    A, B = shape[0], math.prod(shape[1:])
    if fn in (None, "original"):
        return lr * math.sqrt(max(1, A / B))
    return lr * 0.2 * math.sqrt(max(A, B))


# ---------------------------------------------------------------- vs torch.optim.Muon


def _torch_muon_pair(adjust_lr_fn, nesterov, wd, shapes, steps, ns_dtype):
    p0 = make_params(shapes)
    grads = make_grads(shapes, steps)
    pa = [nn.Parameter(p.detach().clone()) for p in p0]
    pb = [nn.Parameter(p.detach().clone()) for p in p0]
    ours = M3(pa, lr=0.02, variant="muon", betas=(0.9, 0.999, 0.95), alpha=0.0, slow_every=4,
              weight_decay=wd, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn, ns_steps=5,
              ns_coefficients="muon", ns_dtype=ns_dtype, ns_eps=1e-7)
    theirs = torch.optim.Muon(pb, lr=0.02, weight_decay=wd, momentum=0.9, nesterov=nesterov,
                              ns_coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7, ns_steps=5,
                              adjust_lr_fn=adjust_lr_fn)
    a = run(ours, pa, grads)
    b = run(theirs, pb, grads)
    moved_a = [x - p.detach() for x, p in zip(a, p0)]
    moved_b = [x - p.detach() for x, p in zip(b, p0)]
    return ours, theirs, pa, pb, moved_a, moved_b


@pytest.mark.parametrize("adjust_lr_fn", ["original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_alpha0_equals_torch_muon_bf16(adjust_lr_fn, nesterov):
    """20 steps, NS in bf16 on both sides: the displacement agrees within bf16 NS rounding
    (nlcore's bf16 NS accumulates in fp32, torch's rounds every product to bf16)."""
    shapes = [(32, 16), (16, 48), (24, 24)]
    ours, theirs, pa, pb, ma, mb = _torch_muon_pair(adjust_lr_fn, nesterov, 0.05, shapes, 20,
                                                     torch.bfloat16)
    for x, y in zip(ma, mb):
        assert rel_err(x, y) < 0.03
    # the momentum buffers never see NS: identical
    for p, q in zip(pa, pb):
        assert torch.equal(ours.state[p]["momentum_buffer"], theirs.state[q]["momentum_buffer"])


@pytest.mark.parametrize("adjust_lr_fn", [None, "original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_alpha0_equals_torch_muon_same_ns(monkeypatch, adjust_lr_fn, nesterov):
    """With torch.optim.Muon's NS swapped for nlcore's fp32 NS, everything but NS batching
    is the same arithmetic: agreement to fp32 rounding over 20 steps."""
    import torch.optim._muon as tm

    def same_ns(grad, coefs, steps, eps):
        return nlcore.ops.newton_schulz(grad, steps, list(coefs), eps,
                                        compute_dtype=torch.float32)
    monkeypatch.setattr(tm, "_zeropower_via_newtonschulz", same_ns)
    shapes = [(32, 16), (16, 48), (24, 24), (32, 16)]
    *_, ma, mb = _torch_muon_pair(adjust_lr_fn, nesterov, 0.05, shapes, 20, torch.float32)
    for x, y in zip(ma, mb):
        assert rel_err(x, y) < 1e-5


# ---------------------------------------------------------------- transcriptions


def muon_reference(params, grads, lr, b1, b3, alpha, f, wd, nesterov, adjust_lr_fn):
    """DESIGN §4 muon variant, one parameter at a time."""
    ps = [p.detach().clone() for p in params]
    st = [dict(M1=torch.zeros_like(p), M2=torch.zeros_like(p), S=torch.zeros_like(p),
               O2=torch.zeros_like(p)) for p in ps]
    for t, gs in enumerate(grads, start=1):
        for p, g, s in zip(ps, gs, st):
            s["M1"] = (1 - b1) * g + b1 * s["M1"]
            U = (1 - b1) * g + b1 * s["M1"] if nesterov else s["M1"]
            s["S"] = s["S"] + g
            O1 = ns(U)
            p.mul_(1 - lr * wd)
            p.sub_(adjust(lr, adjust_lr_fn, p.shape) * (O1 + alpha * s["O2"]))
            if t % f == 0:
                s["M2"] = b3 * s["M2"] + (1 - b3) * s["S"]
                s["S"] = torch.zeros_like(p)
                s["O2"] = ns(s["M2"])
    return ps


def paper_reference(params, grads, lr, b1, b2, b3, alpha, f, eps, wd):
    """Algorithm 1 (DESIGN §4 paper variant), one parameter at a time."""
    ps = [p.detach().clone() for p in params]
    st = [dict(M1=torch.zeros_like(p), V=torch.zeros_like(p), M2=torch.zeros_like(p),
               S=torch.zeros_like(p), O2=torch.zeros_like(p)) for p in ps]
    for t, gs in enumerate(grads, start=1):
        for p, g, s in zip(ps, gs, st):
            s["M1"] = s["M1"] + b1 * g
            s["V"] = s["V"] + b2 * g * g
            O1 = ns(s["M1"])
            s["S"] = s["S"] + g
            p.mul_(1 - lr * wd)
            p.sub_(lr * (O1 + alpha * s["O2"]) / (s["V"].sqrt() + eps))
            if t % f == 0:
                s["M2"] = s["M2"] + b3 * s["S"]
                s["S"] = torch.zeros_like(p)
                s["O2"] = ns(s["M2"])
    return ps


@pytest.mark.parametrize("nesterov,adjust_lr_fn,wd", [(True, None, 0.0),
                                                       (False, "match_rms_adamw", 0.1)])
def test_muon_variant_alpha_equals_transcription(nesterov, adjust_lr_fn, wd):
    f, steps = 3, 3 * 3 + 1  # three slow periods and one step past
    p0 = make_params()
    grads = make_grads(SHAPES, steps)
    params = [nn.Parameter(p.detach().clone()) for p in p0]
    opt = M3(params, lr=0.01, variant="muon", betas=(0.9, 0.999, 0.8), alpha=0.7, slow_every=f,
             weight_decay=wd, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn,
             ns_dtype=torch.float32)
    ours = run(opt, params, grads)
    ref = muon_reference(p0, grads, 0.01, 0.9, 0.8, 0.7, f, wd, nesterov, adjust_lr_fn)
    for x, y, p in zip(ours, ref, p0):
        assert rel_err(x - p, y - p) < 1e-5
    # the slow term mattered: alpha=0 lands elsewhere
    ref0 = muon_reference(p0, grads, 0.01, 0.9, 0.8, 0.0, f, wd, nesterov, adjust_lr_fn)
    assert rel_err(ref0[0] - p0[0], ref[0] - p0[0]) > 1e-2


def test_paper_variant_equals_algorithm1():
    """lr = 1e-3 (the paper variant's step is O1/sqrt(V): about lr per entry)."""
    f, steps, lr = 3, 3 * 3 + 1, 1e-3
    p0 = make_params()
    grads = make_grads(SHAPES, steps)
    params = [nn.Parameter(p.detach().clone()) for p in p0]
    opt = M3(params, lr=lr, variant="paper", betas=(0.9, 0.99, 0.8), alpha=0.5, slow_every=f,
             eps=1e-8, weight_decay=0.05, ns_dtype=torch.float32)
    ours = run(opt, params, grads)
    ref = paper_reference(p0, grads, lr, 0.9, 0.99, 0.8, 0.5, f, 1e-8, 0.05)
    for x, y, p in zip(ours, ref, p0):
        assert rel_err(x - p, y - p) < 1e-5
    st = opt.state[params[0]]
    assert set(st) == {"step", "momentum_buffer", "exp_avg_sq", "slow_momentum", "slow_sum",
                       "slow_update"}
    assert st["step"].item() == steps and torch.is_tensor(st["step"])


def test_slow_update_zero_until_first_block_ends():
    params = make_params()
    opt = M3(params, slow_every=4)
    grads = make_grads(SHAPES, 4)
    run(opt, params, grads[:3])
    assert all(opt.state[p]["slow_update"].abs().max() == 0 for p in params)
    assert all(opt.state[p]["slow_sum"].abs().max() > 0 for p in params)
    run(opt, params, grads[3:])
    assert all(opt.state[p]["slow_update"].abs().max() > 0 for p in params)
    assert all(opt.state[p]["slow_sum"].abs().max() == 0 for p in params)


# ---------------------------------------------------------------- foreach / batching


@pytest.mark.parametrize("variant", ["muon", "paper"])
def test_foreach_and_loop_identical(variant):
    p0 = make_params()
    grads = make_grads(SHAPES, 7)
    outs = []
    for fe in (True, False):
        params = [nn.Parameter(p.detach().clone()) for p in p0]
        opt = M3(params, lr=0.01, variant=variant, alpha=0.5, slow_every=3, weight_decay=0.1,
                 foreach=fe)
        outs.append(run(opt, params, grads))
    for x, y in zip(*outs):
        assert torch.equal(x, y)


def test_ns_called_once_per_shape_group(monkeypatch):
    calls = []
    real = m3mod.newton_schulz

    def counting(G, *a, **k):
        calls.append(tuple(G.shape))
        return real(G, *a, **k)
    monkeypatch.setattr(m3mod, "newton_schulz", counting)
    shapes = [(16, 8)] * 3 + [(8, 16)] * 2 + [(4, 2, 3)] + [(8,)]
    params = make_params(shapes)
    opt = M3(params, slow_every=2)
    for t, gs in enumerate(make_grads(shapes, 4), start=1):
        calls.clear()
        for p, g in zip(params, gs):
            p.grad = g
        opt.step()
        k = 2 if t % 2 == 0 else 1  # fast and slow momentum in the same call when both due
        assert sorted(calls) == sorted([(3 * k, 16, 8), (2 * k, 8, 16), (1 * k, 4, 6)])


# ---------------------------------------------------------------- state round-trip


@pytest.mark.parametrize("variant", ["muon", "paper"])
def test_state_dict_round_trip_mid_period(variant):
    shapes = SHAPES + [(7,)]
    p0 = make_params(shapes)
    grads = make_grads(shapes, 12)
    kw = dict(lr=0.01 if variant == "muon" else 1e-3, variant=variant, alpha=0.5, slow_every=4,
              weight_decay=0.01)
    full = [nn.Parameter(p.detach().clone()) for p in p0]
    ref = run(M3(full, **kw), full, grads)

    first = [nn.Parameter(p.detach().clone()) for p in p0]
    opt = M3(first, **kw)
    run(opt, first, grads[:5])            # step 5: one step into the second slow period
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "params": [p.detach() for p in first]}, buf)
    buf.seek(0)
    saved = torch.load(buf, map_location="cpu")
    second = [nn.Parameter(t.clone()) for t in saved["params"]]
    opt2 = M3(second, **{**kw, "alpha": 0.0, "lr": 123.0})  # hyperparameters come back too
    opt2.load_state_dict(saved["opt"])
    st = opt2.state[second[0]]
    assert torch.is_tensor(st["step"]) and st["step"].item() == 5
    assert st["slow_sum"].abs().max() > 0
    out = run(opt2, second, grads[5:])
    for x, y in zip(out, ref):
        assert torch.equal(x, y)


def test_state_keys():
    params = make_params([(8, 4), (5,)])
    opt = M3(params)
    run(opt, params, make_grads([(8, 4), (5,)], 1))
    assert set(opt.state[params[0]]) == {"step", "momentum_buffer", "slow_momentum",
                                         "slow_sum", "slow_update"}
    assert set(opt.state[params[1]]) == {"step", "exp_avg", "exp_avg_sq"}


# ---------------------------------------------------------------- routing / AdamW


def test_plain_iterable_split():
    params = make_params([(8, 4), (5,), (3, 2, 2), ()])
    opt = M3(params)
    groups = [(g["use_m3"], [tuple(p.shape) for p in g["params"]]) for g in opt.param_groups]
    assert groups == [(True, [(8, 4), (3, 2, 2)]), (False, [(5,), ()])]


def test_use_m3_override():
    a, b = make_params([(8, 4), (8, 4)])
    opt = M3([{"params": [a], "use_m3": False}, {"params": [b], "lr": 0.1}])
    assert [(g["use_m3"], len(g["params"])) for g in opt.param_groups] == [(False, 1), (True, 1)]
    assert opt.param_groups[1]["lr"] == 0.1
    run(opt, [a, b], make_grads([(8, 4), (8, 4)], 1))
    assert "exp_avg" in opt.state[a] and "momentum_buffer" in opt.state[b]


class TinyLM(nn.Module):
    def __init__(self, vocab=32, d=16, tie=True):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.block = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.emb.weight


class WithGetter(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.out_proj = nn.Linear(8, 10)

    def get_output_embeddings(self):
        return self.out_proj


def test_m3_param_groups():
    m = TinyLM(tie=True)
    groups = m3_param_groups(m, lr=0.05, adamw_lr=1e-3)
    m3g, adg = groups
    assert m3g["use_m3"] and not adg["use_m3"]
    assert m3g["lr"] == 0.05 and adg["adamw_lr"] == 1e-3
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(m3g["params"]) == {id(m.block[0].weight), id(m.block[2].weight)}
    assert id(m.emb.weight) in ids(adg["params"])       # tied head/embedding, once
    assert len(adg["params"]) == len(ids(adg["params"]))
    untied = TinyLM(tie=False)
    m3u, adu = m3_param_groups(untied)
    assert id(untied.lm_head.weight) in ids(adu["params"])
    assert id(untied.emb.weight) in ids(adu["params"])
    assert len(m3u["params"]) == 2
    w = WithGetter()
    m3w, adw = m3_param_groups(w)
    assert ids(m3w["params"]) == {id(w.proj.weight)}
    assert id(w.out_proj.weight) in ids(adw["params"])
    opt = M3(m3_param_groups(m))
    assert len(opt.param_groups) == 2


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("explicit", [True, False])
def test_adamw_part_equals_torch_adamw(foreach, explicit):
    shapes = [(5,), (7, 3), (4,)]
    p0 = make_params(shapes)
    grads = make_grads(shapes, 10)
    pa = [nn.Parameter(p.detach().clone()) for p in p0]
    pb = [nn.Parameter(p.detach().clone()) for p in p0]
    if explicit:
        ours = M3([{"params": pa, "use_m3": False}], lr=0.5, weight_decay=0.3, adamw_lr=3e-3,
                  adamw_betas=(0.8, 0.9), adamw_eps=1e-6, adamw_weight_decay=0.02,
                  foreach=foreach)
        lr, wd = 3e-3, 0.02
    else:  # adamw_lr / adamw_weight_decay None fall back to lr / weight_decay
        ours = M3([{"params": pa, "use_m3": False}], lr=3e-3, weight_decay=0.02,
                  adamw_betas=(0.8, 0.9), adamw_eps=1e-6, foreach=foreach)
        lr, wd = 3e-3, 0.02
    theirs = torch.optim.AdamW(pb, lr=lr, betas=(0.8, 0.9), eps=1e-6, weight_decay=wd,
                               foreach=foreach)
    a, b = run(ours, pa, grads), run(theirs, pb, grads)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    for p, q in zip(pa, pb):
        for k in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(ours.state[p][k], theirs.state[q][k])


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("kw,name", [
    (dict(lr=-1.0), "lr"), (dict(betas=(1.0, 0.9, 0.9)), "betas"),
    (dict(betas=(0.9, -0.1, 0.9)), "betas"), (dict(betas=(0.9, 0.9)), "betas"),
    (dict(eps=-1e-8), "eps"), (dict(slow_every=0), "slow_every"),
    (dict(slow_every=1.5), "slow_every"), (dict(variant="adam"), "variant"),
    (dict(adjust_lr_fn="sqrt"), "adjust_lr_fn"), (dict(weight_decay=-0.1), "weight_decay"),
    (dict(ns_steps=0), "ns_steps"), (dict(ns_dtype=torch.float64), "ns_dtype"),
    (dict(ns_eps=-1.0), "ns_eps"), (dict(adamw_lr=-1.0), "adamw_lr"),
    (dict(adamw_betas=(0.9, 1.0)), "adamw_betas"), (dict(adamw_eps=-1.0), "adamw_eps"),
    (dict(alpha=float("nan")), "alpha"), (dict(foreach=True, fused=True), "fused"),
])
def test_bad_arguments(kw, name):
    with pytest.raises((ValueError, TypeError), match=name):
        M3(make_params([(4, 4)]), **kw)


def test_bad_group_argument():
    with pytest.raises(ValueError, match="lr"):
        M3([{"params": make_params([(4, 4)]), "lr": -0.1}])


def test_1d_forced_into_m3():
    with pytest.raises(ValueError, match="use_m3"):
        M3([{"params": make_params([(4,)]), "use_m3": True}])


def test_sparse_and_complex_grads():
    (p,) = make_params([(4, 4)])
    opt = M3([p])
    p.grad = torch.eye(4).to_sparse()
    with pytest.raises(ValueError, match="sparse"):
        opt.step()
    (b,) = make_params([(4,)])
    opt = M3([b])
    b.grad = torch.zeros(4).to_sparse()
    with pytest.raises(ValueError, match="sparse"):
        opt.step()
    c = nn.Parameter(torch.zeros(4, 4, dtype=torch.complex64))
    with pytest.raises(TypeError, match="complex"):
        M3([c])


# ---------------------------------------------------------------- training


def test_mlp_regression_trains():
    torch.manual_seed(0)
    X = torch.randn(256, 16)
    Y = torch.sin(X @ torch.randn(16, 4))
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                          nn.Linear(64, 4))
    opt = M3(m3_param_groups(model), lr=0.02, adamw_lr=3e-3, slow_every=4, alpha=0.5)
    losses = []
    for _ in range(150):
        loss = nn.functional.mse_loss(model(X), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])


class ByteLM(nn.Module):
    def __init__(self, ctx=8, d=32):
        super().__init__()
        self.emb = nn.Embedding(256, d)
        self.mlp = nn.Sequential(nn.Linear(ctx * d, 128), nn.GELU(), nn.Linear(128, 128),
                                 nn.GELU())
        self.lm_head = nn.Linear(128, 256)

    def forward(self, x):
        return self.lm_head(self.mlp(self.emb(x).flatten(1)))


def test_byte_lm_trains():
    torch.manual_seed(0)
    text = (b"the quick brown fox jumps over the lazy dog. nested learning stacks "
            b"optimizers of many time scales; the slow momentum remembers what the fast "
            b"one forgets. ") * 4
    data = torch.tensor(list(text))
    ctx = 8
    X = torch.stack([data[i:i + ctx] for i in range(len(data) - ctx)])
    Y = data[ctx:]
    model = ByteLM(ctx)
    opt = M3(m3_param_groups(model), lr=0.02, adamw_lr=3e-3, slow_every=8)
    first = None
    for _ in range(120):
        loss = nn.functional.cross_entropy(model(X), Y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first, (first, loss.item())
