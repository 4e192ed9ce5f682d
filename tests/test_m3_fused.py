"""The fused elementwise step of M3's muon variant (issue 6): the ops nlcore::m3_muon_pre_ /
m3_muon_post_ against a direct transcription, M3(fused=True) against M3(foreach=True), bad
input, and (GPU) the CUDA multi-tensor kernels against the CPU ops."""
import copy

import pytest
import torch
from torch import nn

import nlcore  # noqa: F401  (registers torch.ops.nlcore.*)
from nlcore.optim import M3

SHAPES = [(32, 16), (16, 48), (24, 24), (7, 3, 5), (1, 1), (3, 1001)]
ops = torch.ops.nlcore


def lerp_t(a, b, w):
    """torch.lerp's formula in fp32."""
    return a + w * (b - a) if abs(w) < 0.5 else b - (b - a) * (1 - w)


def lists(shapes, dtype, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    mk = lambda s: torch.randn(s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    return ([mk(s) for s in shapes] for _ in range(4))


def pre_ref(m1, s, g, beta1, nesterov, dtype):
    m1f, sf, gf = m1.float(), s.float(), g.float()
    w1 = torch.tensor(1 - beta1, dtype=torch.float32).item()
    m_new = lerp_t(m1f, gf, w1).to(dtype)
    s_new = (sf + gf).to(dtype)
    fast = lerp_t(gf, m_new.float(), torch.tensor(beta1, dtype=torch.float32).item()).to(dtype) \
        if nesterov else m_new
    return m_new, s_new, fast


def post_ref(p, u, o2, lr, decay, alpha, dtype):
    return (p.float() * decay - lr * (u.float() + alpha * o2.float())).to(dtype)


def tol(dtype):
    return dict(atol=1e-6, rtol=1e-6) if dtype == torch.float32 else \
        dict(atol=1e-2, rtol=1e-2) if dtype == torch.bfloat16 else dict(atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("nesterov", [True, False])
def test_pre_matches_transcription(dtype, nesterov):
    m1, s, g, _ = lists(SHAPES, dtype)
    ref = [pre_ref(a, b, c, 0.95, nesterov, dtype) for a, b, c in zip(m1, s, g)]
    fast = [torch.full_like(x, float("nan")) for x in m1]
    ops.m3_muon_pre_(m1, s, fast, g, 0.95, nesterov)
    for i, (rm, rs, rf) in enumerate(ref):
        torch.testing.assert_close(m1[i], rm, **tol(dtype))
        torch.testing.assert_close(s[i], rs, **tol(dtype))
        torch.testing.assert_close(fast[i], rf, **tol(dtype))


def test_pre_fp32_equals_foreach():
    m1, s, g, _ = lists(SHAPES, torch.float32)
    m1r, sr = [x.clone() for x in m1], [x.clone() for x in s]
    torch._foreach_lerp_(m1r, g, 1 - 0.9)
    fr = torch._foreach_lerp(g, m1r, 0.9)
    torch._foreach_add_(sr, g)
    fast = [torch.empty_like(x) for x in m1]
    ops.m3_muon_pre_(m1, s, fast, g, 0.9, True)
    for a, b in zip(m1 + s + fast, m1r + sr + list(fr)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("decay,alpha", [(1.0, 0.0), (0.99, 1.0), (0.999, -0.5)])
def test_post_matches_transcription(dtype, decay, alpha):
    p, u, o2, _ = lists(SHAPES, dtype, seed=3)
    lrs = [0.02 * (i + 1) for i in range(len(SHAPES))]
    ref = [post_ref(a, b, c, lr, decay, alpha, dtype) for a, b, c, lr in zip(p, u, o2, lrs)]
    ops.m3_muon_post_(p, u, o2, lrs, decay, alpha)
    for x, r in zip(p, ref):
        torch.testing.assert_close(x, r, **tol(dtype))


def test_ops_accept_noncontiguous_on_cpu():
    m1, s, g, _ = lists([(8, 6)], torch.float32)
    m1t, st, gt = m1[0].t(), s[0].t(), g[0].t()
    ref = pre_ref(m1t, st, gt, 0.9, True, torch.float32)
    fast = torch.empty(6, 8)
    ops.m3_muon_pre_([m1t], [st], [fast], [gt], 0.9, True)
    torch.testing.assert_close(m1t, ref[0])
    torch.testing.assert_close(fast, ref[2])


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 24), nn.Tanh(),
                         nn.Linear(24, 5, bias=False))


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_m3_fused_equals_foreach(nesterov, wd):
    base = make_model()
    runs = []
    for kw in (dict(foreach=True), dict(fused=True)):
        model = copy.deepcopy(base)
        mats = [p for p in model.parameters() if p.ndim >= 2]
        vecs = [p for p in model.parameters() if p.ndim < 2]
        opt = M3([{"params": mats, "use_m3": True, **kw},
                  {"params": vecs, "use_m3": False, "foreach": True}],
                 lr=0.02, alpha=0.5, slow_every=3, nesterov=nesterov, weight_decay=wd,
                 ns_dtype=torch.float32, adjust_lr_fn="match_rms_adamw")
        g = torch.Generator().manual_seed(7)
        for _ in range(10):
            x = torch.randn(16, 12, generator=g)
            y = torch.randn(16, 5, generator=g)
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        runs.append((model, opt))
    (m_a, o_a), (m_b, o_b) = runs
    for pa, pb in zip(m_a.parameters(), m_b.parameters()):
        torch.testing.assert_close(pb, pa, atol=1e-6, rtol=1e-6)
        sa, sb = o_a.state[pa], o_b.state[pb]
        for k in sa:
            torch.testing.assert_close(sb[k], sa[k], atol=1e-6, rtol=1e-6)


def test_fused_paper_variant_not_implemented():
    with pytest.raises(NotImplementedError, match="muon"):
        M3([nn.Parameter(torch.randn(4, 4))], variant="paper", fused=True)


def test_bad_input():
    a = [torch.zeros(4, 4)]
    with pytest.raises(ValueError, match="grads has 2 tensors"):
        ops.m3_muon_pre_(a, [torch.zeros(4, 4)], [torch.zeros(4, 4)],
                         [torch.zeros(4, 4), torch.zeros(4, 4)], 0.9, True)
    with pytest.raises(ValueError, match=r"slow_sum\[0\] has shape"):
        ops.m3_muon_pre_(a, [torch.zeros(4, 5)], [torch.zeros(4, 4)], [torch.zeros(4, 4)],
                         0.9, True)
    with pytest.raises(TypeError, match=r"grads\[0\] is"):
        ops.m3_muon_pre_(a, [torch.zeros(4, 4)], [torch.zeros(4, 4)],
                         [torch.zeros(4, 4, dtype=torch.bfloat16)], 0.9, True)
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        ops.m3_muon_pre_([torch.zeros(2, dtype=torch.int32)],
                         [torch.zeros(2, dtype=torch.int32)], [torch.zeros(2, dtype=torch.int32)],
                         [torch.zeros(2, dtype=torch.int32)], 0.9, True)
    with pytest.raises(ValueError, match="beta1 must be finite"):
        ops.m3_muon_pre_(a, [torch.zeros(4, 4)], [torch.zeros(4, 4)], [torch.zeros(4, 4)],
                         float("nan"), True)
    with pytest.raises(ValueError, match="lr has 2 values"):
        ops.m3_muon_post_(a, [torch.zeros(4, 4)], [torch.zeros(4, 4)], [0.1, 0.2], 1.0, 1.0)
    with pytest.raises(ValueError, match=r"updates\[0\] has shape"):
        ops.m3_muon_post_(a, [torch.zeros(16)], [torch.zeros(4, 4)], [0.1], 1.0, 1.0)
    with pytest.raises(ValueError, match="decay must be finite"):
        ops.m3_muon_post_(a, [torch.zeros(4, 4)], [torch.zeros(4, 4)], [0.1], float("inf"), 1.0)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("nesterov", [True, False])
def test_cuda_ops_match_cpu(dtype, nesterov):
    # > 48 tensors (two launches), odd sizes (scalar tails), one misaligned view (no vector path)
    shapes = [(3, 5), (64, 33), (128, 256), (1, 7)] * 13 + [(1000, 3)]
    m1, s, g, _ = lists(shapes, dtype, seed=11)
    big = torch.randn(1 + 40 * 40).to(dtype)
    m1[0], s[0], g[0] = (t[1:].view(40, 40) for t in (big.clone(), big.clone(), big.clone()))
    shapes[0] = (40, 40)
    dev = [[x.cuda() for x in lst] for lst in (m1, s, g)]
    fast = [torch.empty_like(x) for x in m1]
    fast_d = [torch.full_like(x, float("nan")) for x in dev[0]]
    ops.m3_muon_pre_(m1, s, fast, g, 0.95, nesterov)
    ops.m3_muon_pre_(dev[0], dev[1], fast_d, dev[2], 0.95, nesterov)
    for c, d in zip(m1 + s + fast, dev[0] + dev[1] + fast_d):
        torch.testing.assert_close(d.cpu(), c, **tol(dtype))
    p, u, o2, _ = lists(shapes, dtype, seed=12)
    lrs = [0.01 * (1 + i % 5) for i in range(len(shapes))]
    pd, ud, od = ([x.cuda() for x in lst] for lst in (p, u, o2))
    ops.m3_muon_post_(p, u, o2, lrs, 0.99, 0.7)
    ops.m3_muon_post_(pd, ud, od, lrs, 0.99, 0.7)
    for c, d in zip(p, pd):
        torch.testing.assert_close(d.cpu(), c, **tol(dtype))


@pytest.mark.cuda
def test_cuda_m3_fused_equals_foreach():
    base = make_model().cuda()
    outs = []
    for kw in (dict(foreach=True), dict(fused=True)):
        model = copy.deepcopy(base)
        opt = M3([{"params": [p for p in model.parameters() if p.ndim >= 2], "use_m3": True,
                   **kw}], lr=0.02, alpha=0.5, slow_every=3, weight_decay=0.1,
                 ns_dtype=torch.float32)
        g = torch.Generator().manual_seed(7)
        for _ in range(10):
            x = torch.randn(16, 12, generator=g).cuda()
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        outs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
