"""nlcore.ops.self_modifying_scan against the float64 reference (DESIGN §3.3): every flag, the
coupling (teeth: detached targets / frozen memories differ), the state tuple, streaming,
varlen, the checkpointed second-order backward, precision, torch integration, bad input."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from nlcore import MLPMemoryState
from nlcore.ops import self_modifying_scan as op
from nlcore.reference import self_modifying_scan as ref
from nlcore.reference.memory_mlp import activation_and_slope

from conftest import rel_err

SEQ = ("x",)
GATES = ("w_eta", "w_alpha", "b_eta", "b_alpha")


def make_inputs(B=2, T=23, H=2, D=8, F_=16, dtype=torch.float64, per_seq=False):
    """Weights of unit-ish gain, rates up to eta_max = 0.05, retention near 1 (b_alpha ≈ 2):
    over a few chunks the memories move by tens of percent."""
    lead = (4, B) if per_seq else (4,)
    x = dict(
        x=torch.randn(B, T, H, D, dtype=dtype),
        w_in=torch.randn(*lead, H, F_, D, dtype=torch.float64) / math.sqrt(D),
        w_out=torch.randn(*lead, H, D, F_, dtype=torch.float64) / math.sqrt(F_),
        w_eta=torch.randn(H, D, dtype=torch.float64) / math.sqrt(D),
        w_alpha=torch.randn(H, D, dtype=torch.float64) / math.sqrt(D),
        b_eta=torch.randn(H, dtype=torch.float64),
        b_alpha=torch.randn(H, dtype=torch.float64) + 2.0,
    )
    if dtype != torch.float64:
        for n in x:
            if n != "x":
                x[n] = x[n].float()
    return x


def leaves(x):
    return {n: (None if t is None else t.detach().clone().requires_grad_(True))
            for n, t in x.items()}


def call(fn, x, C, state=None, eta_max=0.05, **kw):
    w_in, w_out = (None, None) if state is not None else (x["w_in"], x["w_out"])
    return fn(x["x"], w_in, w_out, x["w_eta"], x["w_alpha"], C, eta_max=eta_max,
              b_eta=x.get("b_eta"), b_alpha=x.get("b_alpha"), initial_state=state,
              output_final_state=True, **kw)


def loss_of(out, seed=0):
    """A fixed random linear functional of k, v, eta, g and every float entry of the state."""
    gen = torch.Generator().manual_seed(seed)
    total = 0
    for t in tuple(out[:4]) + tuple(out[4][:7]):
        w = torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device)
        total = total + (t.to(torch.float64) * w).sum()
    return total


def grads(fn, x, C, **kw):
    x = leaves(x)
    out = call(fn, x, C, **kw)
    loss_of(out).backward()
    return [t.detach() for t in out[:4]], out[4], {n: t.grad for n, t in x.items()
                                                   if t is not None}


def assert_close(a, b, tol, what=""):
    for i, (s, t) in enumerate(zip(a, b)):
        e = rel_err(s, t)
        assert e < tol, f"{what} output {i}: rel err {e:.3e} >= {tol}"


def assert_close_all(a, b, tol, what=""):
    for n in a:
        e = rel_err(a[n], b[n])
        assert e < tol, f"{what} {n}: rel err {e:.3e} >= {tol}"


def assert_states(a, b, tol):
    for name, s, t in zip(MLPMemoryState._fields, a, b):
        assert torch.equal(s, t) if name == "n" else rel_err(s, t) < tol, name


# ------------------------------------------------------------------------------ float64 grid
@pytest.mark.parametrize("C,T", [(1, 11), (6, 23), (64, 150)])
@pytest.mark.parametrize("momentum", [0.0, 0.7])
@pytest.mark.parametrize("activation", ["silu", "gelu"])
@pytest.mark.parametrize("dgd_erase", [True, False])
def test_grid_float64(C, T, momentum, activation, dgd_erase):
    x = make_inputs(B=2 if T < 100 else 1, T=T)
    kw = dict(momentum=momentum, activation=activation, dgd_erase=dgd_erase)
    o_r, st_r, g_r = grads(ref, x, C, **kw)
    o_o, st_o, g_o = grads(op, x, C, checkpoint_every=2, **kw)
    assert_close(o_o, o_r, 1e-12)
    assert_states(st_o, st_r, 1e-12)
    assert_close_all(g_o, g_r, 1e-10)
    moved = rel_err(st_r.w_in, x["w_in"].unsqueeze(1).expand_as(st_r.w_in))
    assert moved > 0.1, f"weights moved only {moved:.3f}: the test would not see the updates"
    assert o_o[0].dtype == torch.float64 and o_o[2].dtype == torch.float64


@pytest.mark.parametrize("variant", ["detach_target", "frozen"])
def test_coupling_has_teeth(variant):
    """Detaching the self-generated targets, or freezing the memories between chunks, moves
    the outputs (frozen) or the gradients (both) far beyond the tolerance; the op follows the
    full reference."""
    x = make_inputs(T=32)
    kw = dict(momentum=0.5)
    o_o, _, g_o = grads(op, x, 4, **kw)
    o_f, _, g_f = grads(ref, x, 4, **kw)
    o_v, _, g_v = grads(lambda *a, **k: ref(*a, **{variant: True}, **k), x, 4, **kw)
    assert_close(o_o, o_f, 1e-12)
    assert_close_all(g_o, g_f, 1e-10)
    worst_g = max(rel_err(g_v[n], g_o[n]) for n in g_o)
    assert worst_g > 1e-2, worst_g
    if variant == "frozen":
        assert max(rel_err(a, b) for a, b in zip(o_v, o_o)) > 1e-2


def _memory(w1, w2, u):
    return u + w2 @ activation_and_slope(w1 @ u, "silu")[0]


def test_chunk_size_one_is_the_token_recurrence():
    """C = 1, written out independently for one head: every token the four memories read
    x, give k, v, eta, g, and each memory takes one self-targeted step with them."""
    x = make_inputs(B=1, T=8)
    mom, eta_max = 0.6, 0.05
    k, v, eta, g, st = call(op, x, 1, momentum=mom)
    w1 = [x["w_in"][m, 0].clone() for m in range(4)]
    w2 = [x["w_out"][m, 0].clone() for m in range(4)]
    p1 = [torch.zeros_like(w) for w in w1]
    p2 = [torch.zeros_like(w) for w in w2]
    for t in range(8):
        xt = x["x"][0, t, 0]
        r = [_memory(w1[m], w2[m], xt) for m in range(4)]
        kt = r[0] / r[0].norm()
        et = eta_max * torch.sigmoid(x["w_eta"][0] @ r[2] + x["b_eta"][0])
        gt = F.logsigmoid(x["w_alpha"][0] @ r[3] + x["b_alpha"][0])
        assert torch.allclose(k[0, t, 0], kt, atol=1e-12), t
        assert torch.allclose(v[0, t, 0], r[1], atol=1e-12), t
        assert torch.allclose(eta[0, t, 0], et, atol=1e-14), t
        assert torch.allclose(g[0, t, 0], gt, atol=1e-13), t
        for m in range(4):
            target = _memory(w1[m], w2[m], r[1])
            z = w1[m] @ kt
            h, dh = activation_and_slope(z, "silu")
            e = kt + w2[m] @ h - target
            G2 = et * torch.outer(e, h)
            G1 = torch.outer(dh * (w2[m].T @ (et * e)), kt) + et * w1[m] @ torch.outer(kt, kt)
            p1[m], p2[m] = mom * p1[m] - G1, mom * p2[m] - G2
            w1[m], w2[m] = gt.exp() * w1[m] + p1[m], gt.exp() * w2[m] + p2[m]
    for m in range(4):
        assert rel_err(st.w_in[m, 0, 0], w1[m]) < 1e-12, m
        assert rel_err(st.w_out[m, 0, 0], w2[m]) < 1e-12, m


@pytest.mark.parametrize("T", [12, 9])
def test_chunk_size_T_reads_the_initial_weights(T):
    x = make_inputs(B=2, T=T)
    out = call(op, x, 12)
    out0 = call(op, x, 10**6)  # never updates
    assert_close(out[:4], out0[:4], 1e-14)
    st = out[4]
    if T == 12:
        assert st.n.tolist() == [0, 0] and st.acc_in.abs().max() == 0
        assert rel_err(st.w_in, x["w_in"].unsqueeze(1).expand_as(st.w_in)) > 0.01
    else:
        assert st.n.tolist() == [T, T] and st.acc_in.abs().max() > 0
        assert torch.equal(st.w_in, x["w_in"].unsqueeze(1).expand_as(st.w_in))


@pytest.mark.parametrize("C,cuts", [(4, [3, 9]), (5, [5, 6]), (1, [2]), (7, [1, 2, 3])])
@pytest.mark.parametrize("momentum", [0.0, 0.8])
def test_streaming_in_pieces_equals_one_call(C, cuts, momentum):
    x = leaves(make_inputs(T=17, per_seq=True))
    full = call(op, x, C, momentum=momentum)
    g_full = torch.autograd.grad(loss_of(full), list(x.values()))
    outs, st = [], None
    for a, b in zip([0] + cuts, cuts + [17]):
        piece = dict(x, x=x["x"][:, a:b])
        *o, st = call(op, piece, C, state=st, momentum=momentum)
        outs.append(o)
    joined = [torch.cat(p, 1) for p in zip(*outs)]
    assert_close(joined, full[:4], 1e-13)
    assert_states(st, full[4], 1e-13)
    g_piece = torch.autograd.grad(loss_of(joined + [st]), list(x.values()))
    for n, a_, b_ in zip(x, g_piece, g_full):
        assert rel_err(a_, b_) < 1e-11, n


def test_shared_and_per_sequence_weights():
    x = make_inputs(B=3)
    xs = dict(x, w_in=x["w_in"].unsqueeze(1).expand(4, 3, -1, -1, -1),
              w_out=x["w_out"].unsqueeze(1).expand(4, 3, -1, -1, -1))
    o_h, _, g_shared = grads(op, x, 4)
    o_s, _, g_per = grads(op, xs, 4)
    assert_close(o_s, o_h, 1e-14)
    assert g_shared["w_in"].shape == x["w_in"].shape
    assert rel_err(g_shared["w_in"], g_per["w_in"].sum(1)) < 1e-13
    assert rel_err(g_shared["w_out"], g_per["w_out"].sum(1)) < 1e-13


def test_varlen_equals_separate_calls():
    lens = [7, 0, 13, 4]
    T = sum(lens)
    x = make_inputs(B=1, T=T)
    x["w_in"] = torch.randn(4, len(lens), 2, 16, 8, dtype=torch.float64) / 3
    x["w_out"] = torch.randn(4, len(lens), 2, 8, 16, dtype=torch.float64) / 4
    cu = torch.tensor([0] + list(itertools.accumulate(lens)))
    xl = leaves(x)
    out = call(op, xl, 5, cu_seqlens=cu, momentum=0.5)
    o_r = call(ref, x, 5, cu_seqlens=cu, momentum=0.5)
    assert_close(out[:4], o_r[:4], 1e-12)
    g = torch.autograd.grad(loss_of(out), list(xl.values()))
    g_r = torch.autograd.grad(loss_of(call(ref, xl, 5, cu_seqlens=cu, momentum=0.5)),
                              list(xl.values()))
    for n, a, b in zip(xl, g, g_r):
        assert rel_err(a, b) < 1e-10, n
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        xi = dict(x, x=x["x"][:, a:b], w_in=x["w_in"][:, i:i + 1], w_out=x["w_out"][:, i:i + 1])
        oi = call(op, xi, 5, momentum=0.5)
        if b > a:
            assert_close([t[:, a:b] for t in out[:4]], oi[:4], 1e-13)
        for s_all, s_i in zip(out[4][:6], oi[4][:6]):
            assert torch.allclose(s_all[:, i:i + 1], s_i, atol=1e-13)
        assert torch.allclose(out[4].acc_g[i:i + 1], oi[4].acc_g, atol=1e-13)


@pytest.mark.parametrize("every", [1, 3, 100])
def test_checkpoint_spacing_does_not_change_gradients(every):
    x = make_inputs(T=30)
    _, _, g_a = grads(op, x, 3, checkpoint_every=every, momentum=0.5)
    _, _, g_b = grads(ref, x, 3, momentum=0.5)
    assert_close_all(g_a, g_b, 1e-10)


def test_initial_state_gradients():
    x = make_inputs(T=10)
    st0 = call(ref, x, 4, momentum=0.5)[4]  # an open chunk: 10 = 2·4 + 2
    assert st0.n.tolist() == [2, 2]
    st_l = MLPMemoryState(*[t if t.dtype == torch.int64 else t.detach().clone().requires_grad_()
                            for t in st0])
    x2 = make_inputs(T=11)
    res = {}
    for name, fn in (("op", op), ("ref", ref)):
        res[name] = torch.autograd.grad(loss_of(call(fn, x2, 4, state=st_l, momentum=0.5)),
                                        list(st_l[:7]))
    for f_, a, b in zip(MLPMemoryState._fields, res["op"], res["ref"]):
        assert rel_err(a, b) < 1e-11, f_


def test_without_biases():
    x = make_inputs()
    x.pop("b_eta")
    x.pop("b_alpha")
    o_o, st_o, g_o = grads(op, x, 4, momentum=0.3)
    o_r, st_r, g_r = grads(ref, x, 4, momentum=0.3)
    assert_close(o_o, o_r, 1e-12)
    assert_close_all(g_o, g_r, 1e-10)


# ------------------------------------------------------------------------ precision contract
def test_float32_within_1e4():
    x = make_inputs(T=40, dtype=torch.float32)
    x64 = {n: t.double() for n, t in x.items()}
    o, st, g = grads(op, x, 8, momentum=0.5)
    o64, st64, g64 = grads(ref, x64, 8, momentum=0.5)
    assert o[0].dtype == torch.float32 and o[2].dtype == torch.float32
    assert st.w_in.dtype == torch.float32
    assert_close(o, o64, 1e-4)
    assert rel_err(st.w_in, st64.w_in) < 1e-4
    assert_close_all(g, g64, 1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_contract(dtype):
    """err(op) <= 3 · err(emulated reference) (+ a floor), both against float64."""
    x = make_inputs(T=40, dtype=dtype)
    x64 = {n: t.double() for n, t in x.items()}
    o, st, g = grads(op, x, 8, momentum=0.5)
    o_e, st_e, g_e = grads(lambda *a, **k: ref(*a, emulate=dtype, **k), x, 8, momentum=0.5)
    o64, st64, g64 = grads(ref, x64, 8, momentum=0.5)
    assert o[0].dtype == dtype and o[2].dtype == torch.float32
    for a, e, t in zip(o, o_e, o64):
        assert rel_err(a, t) <= 3 * rel_err(e, t) + 1e-6
    assert rel_err(st.w_in, st64.w_in) <= 3 * rel_err(st_e.w_in, st64.w_in) + 1e-6
    # Gradients: the emulated reference's backward (autograd) does not round the backward
    # GEMMs' operands, the op's does (as tensor cores must), and small sums such as b_eta's
    # gradient cancel; so each gradient's error is measured against the norm of all of them,
    # with a floor of 0.3 unit roundoff of the dtype.
    u = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11
    total = math.sqrt(sum(t.double().norm().item() ** 2 for t in g64.values()))
    for n in g:
        e_op = (g[n].double() - g64[n]).norm().item() / total
        e_em = (g_e[n].double() - g64[n]).norm().item() / total
        assert e_op <= 3 * e_em + 0.3 * u, (n, e_op, e_em)


def test_long_sequence_finite():
    """Unit-norm rows, as Hope feeds the op (raw N(0, 1) rows of norm ~√D can make the
    in-context descent diverge for some draws at momentum 0.9)."""
    x = make_inputs(B=1, T=2048, dtype=torch.float32)
    x["x"] = F.normalize(x["x"], dim=-1)
    x = leaves(x)
    out = call(op, x, 16, momentum=0.9)
    loss_of(out).backward()
    assert all(torch.isfinite(t).all() for t in out[:4])
    assert all(torch.isfinite(t).all() for t in out[4][:7])
    assert all(torch.isfinite(t.grad).all() for t in x.values())


# ---------------------------------------------------------------------- torch integration
def _op_args(x, C=3, state=None):
    st = [None] * 6 if state is None else list(state[2:])
    w_in, w_out = (x["w_in"], x["w_out"]) if state is None else (state[0], state[1])
    return (x["x"], w_in, w_out, x["w_eta"], x["w_alpha"], x["b_eta"], x["b_alpha"], *st, None,
            C, 0.05, 0.5, "silu", True, 2)


def test_opcheck():
    x = leaves(make_inputs(B=1, T=7, H=1, D=4, F_=8))
    torch.library.opcheck(torch.ops.nlcore.self_modifying_scan.default, _op_args(x))
    st = call(ref, make_inputs(B=1, T=5, H=1, D=4, F_=8), 3)[4]
    st = [t if t.dtype == torch.int64 else t.detach().requires_grad_() for t in st]
    torch.library.opcheck(torch.ops.nlcore.self_modifying_scan.default, _op_args(x, state=st))


def test_gradcheck():
    x = leaves(make_inputs(B=1, T=6, H=1, D=3, F_=4))
    names = tuple(x)

    def f(*ts):
        k, v, eta, g, st = call(op, dict(zip(names, ts)), 4, momentum=0.5, activation="gelu")
        return k, v, eta, g, st.w_in, st.acc_out
    assert torch.autograd.gradcheck(f, tuple(x[n] for n in names))


def test_torch_compile_fullgraph():
    x = leaves(make_inputs(B=1, T=9, H=1, D=4, F_=8, dtype=torch.float32))
    names = tuple(x)

    def f(*ts):
        k, v, eta, g, st = call(op, dict(zip(names, ts)), 4, momentum=0.5)
        return k.sum() + v.sum() + eta.sum() + g.sum() + st.w_in.sum()
    args = tuple(x[n] for n in names)
    want = torch.autograd.grad(f(*args), args)
    got = torch.autograd.grad(torch.compile(f, fullgraph=True, backend="aot_eager")(*args), args)
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-6


def test_autocast_casts_x():
    x = make_inputs(B=1, T=8, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        k, v, eta, g, _ = call(op, x, 4)
    assert k.dtype == torch.bfloat16 and eta.dtype == torch.float32


# ------------------------------------------------------------------------------- bad input
def _good():
    x = make_inputs(B=2, T=5, H=2, D=4, F_=8, dtype=torch.float32)
    return dict(x=x["x"], w_in=x["w_in"], w_out=x["w_out"], w_eta=x["w_eta"],
                w_alpha=x["w_alpha"], chunk_size=2)


@pytest.mark.parametrize("over,exc,match", [
    (dict(chunk_size=0), ValueError, "chunk_size must be an int >= 1"),
    (dict(chunk_size=2.5), ValueError, "chunk_size must be an int >= 1"),
    (dict(activation="relu"), ValueError, "activation must be one of"),
    (dict(eta_max=0.0), ValueError, "eta_max must be a finite number > 0"),
    (dict(eta_max=float("nan")), ValueError, "eta_max must be a finite number > 0"),
    (dict(momentum="0.5"), TypeError, "momentum must be a number"),
    (dict(w_in=torch.randn(3, 2, 8, 4)), ValueError, "w_in must be"),
    (dict(w_in=torch.randn(4, 2, 8, 5)), ValueError, "w_in must be"),
    (dict(w_in=torch.randn(4, 3, 2, 8, 4), w_out=torch.randn(4, 3, 2, 4, 8)), ValueError,
     "w_in must be"),
    (dict(w_out=torch.randn(4, 2, 4, 7)), ValueError, "w_out must be"),
    (dict(w_eta=torch.randn(2, 5)), ValueError, "w_eta must be"),
    (dict(w_alpha=torch.randn(3, 4)), ValueError, "w_alpha must be"),
    (dict(b_eta=torch.randn(3)), ValueError, "b_eta must be"),
    (dict(x=torch.randn(2, 5, 8)), ValueError, "x must be"),
    (dict(x=torch.ones(2, 5, 2, 4, dtype=torch.int32)), TypeError, "x must be a floating"),
    (dict(w_eta=torch.ones(2, 4, dtype=torch.int64)), TypeError, "w_eta must be a floating"),
    (dict(w_in=None), ValueError, "w_in and w_out are required"),
])
def test_bad_input(over, exc, match):
    kw = _good()
    kw.update(over)
    with pytest.raises(exc, match=match):
        op(**kw)


def test_bad_state_and_varlen():
    kw = _good()
    st = op(**kw, output_final_state=True)[4]
    with pytest.raises(ValueError, match="either w_in/w_out or initial_state"):
        op(**kw, initial_state=st)
    kw2 = dict(kw, w_in=None, w_out=None)
    with pytest.raises(ValueError, match="p_in must be"):
        op(**kw2, initial_state=st._replace(p_in=st.p_in[:3]))
    with pytest.raises(ValueError, match="acc_g must be"):
        op(**kw2, initial_state=st._replace(acc_g=st.acc_g[:, :1]))
    with pytest.raises(ValueError, match=r"n\[1\] = 2 must be in \[0, chunk_size"):
        op(**kw2, initial_state=st._replace(n=torch.tensor([0, 2])))
    with pytest.raises(ValueError, match="initial_state must be an MLPMemoryState"):
        op(**kw2, initial_state=tuple(st)[:5])
    with pytest.raises(ValueError, match="checkpoint_every must be an int >= 1"):
        op(**kw, checkpoint_every=0)
    with pytest.raises(ValueError, match="batch size must be 1"):
        op(**kw, cu_seqlens=torch.tensor([0, 5]))
    one = dict(kw, x=kw["x"][:1])
    for cu, match in (([1, 5], "start at 0"), ([0, 4], "end at T"),
                      ([0, 4, 3, 5], "non-decreasing")):
        with pytest.raises(ValueError, match=match):
            op(**one, cu_seqlens=torch.tensor(cu))
    with pytest.raises(TypeError, match="cu_seqlens must be an int32/int64 tensor"):
        op(**one, cu_seqlens=torch.tensor([0.0, 5.0]))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    from conftest import poison_cuda_cache
    x = make_inputs(B=2, T=37, H=2, D=32, F_=64, dtype=dtype)
    o_c, st_c, g_c = grads(op, x, 8, momentum=0.5)
    poison_cuda_cache()
    xg = {n: t.cuda() for n, t in x.items()}
    o_g, st_g, g_g = grads(op, xg, 8, momentum=0.5)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert_close(o_g, o_c, tol)
    for a, b in zip(st_g[:7], st_c[:7]):
        assert rel_err(a, b) < tol
    assert_close_all({n: t.cpu() for n, t in g_g.items()}, g_c, tol * 10)


@pytest.mark.cuda
def test_cuda_varlen_and_streaming_match_cpu():
    lens = [9, 0, 20, 5]
    cu = torch.tensor([0] + list(itertools.accumulate(lens)))
    x = make_inputs(B=1, T=sum(lens), H=2, D=32, F_=64, dtype=torch.float32)
    x["w_in"] = x["w_in"].unsqueeze(1).expand(4, len(lens), -1, -1, -1).contiguous()
    x["w_out"] = x["w_out"].unsqueeze(1).expand(4, len(lens), -1, -1, -1).contiguous()
    o_c, st_c, g_c = grads(op, x, 6, momentum=0.5, cu_seqlens=cu)
    xg = {n: t.cuda() for n, t in x.items()}
    o_g, st_g, g_g = grads(op, xg, 6, momentum=0.5, cu_seqlens=cu.cuda())
    assert_close(o_g, o_c, 1e-4)
    assert_close_all({n: t.cpu() for n, t in g_g.items()}, g_c, 1e-3)
    # streaming on the GPU (a chunk open at each cut) equals one CPU call
    x = make_inputs(B=2, T=17, H=2, D=32, F_=64, dtype=torch.float32)
    full = call(op, x, 5, momentum=0.5)
    xg = {n: t.cuda() for n, t in x.items()}
    outs, st = [], None
    for a, b in ((0, 7), (7, 8), (8, 17)):
        *o, st = call(op, dict(xg, x=xg["x"][:, a:b]), 5, state=st, momentum=0.5)
        outs.append(o)
    assert_close([torch.cat(p, 1) for p in zip(*outs)], full[:4], 1e-4)
    for a, b in zip(st[:7], full[4][:7]):
        assert rel_err(a, b) < 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_rows_with_different_open_chunks(dtype):
    """Batch rows whose open chunks differ run one by one; outputs keep x's dtype."""
    x = make_inputs(B=2, T=9, dtype=dtype)
    st = call(op, dict(x, x=x["x"][:, :5]), 4)[4]
    st = st._replace(n=torch.tensor([1, 3]))
    k, v, eta, g, st2 = call(op, dict(x, x=x["x"][:, 5:]), 4, state=st)
    assert k.dtype == dtype and eta.dtype == torch.float32
    for b in range(2):
        sb = MLPMemoryState(*[t[:, b:b + 1] if t.dim() == 5 else t[b:b + 1] for t in st])
        kb = call(op, dict(x, x=x["x"][b:b + 1, 5:]), 4, state=sb)[0]
        assert torch.equal(k[b:b + 1], kb)
