"""nlcore.jax under jax.jit: the XLA FFI path (issue 10; csrc/jax/ffi.cpp, nlcore/_jax_ffi.py).

Without a GPU (CI): the FFI library loads and exports its handlers, and jitted programs —
dgd forward, jax.grad, vmap, gated_delta_rule, every optional input; memory_mlp_scan and
self_modifying_scan forward and backward, with an initial state and varlen; newton_schulz with
its coefficient attributes, grad and vmap — lower for CUDA
(jax.export, platforms=["cuda"]) to the custom calls with the right operands, results and
attributes; bad input is a clear error at trace time. On a GPU with a CUDA jaxlib: jitted
results and gradients equal the eager (torch) op's.

The library comes from $NLCORE_JAX_FFI_LIB or the installed package. CI stage (b) builds it and
runs this file with NLCORE_REQUIRE_JAX_FFI=1, which turns a missing library into a failure
instead of a skip.
"""
import os
import re

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

import nlcore.jax as nj  # noqa: E402
from nlcore import _jax_ffi  # noqa: E402


@pytest.fixture(scope="module")
def ffi_lib():
    if not _jax_ffi.available():
        why = ("the XLA FFI library is not built here (CI stage (b) builds it: "
               f"NLCORE_JAX_FFI_LIB={os.environ.get('NLCORE_JAX_FFI_LIB')})")
        if os.environ.get("NLCORE_REQUIRE_JAX_FFI") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return _jax_ffi.load()


@pytest.fixture
def for_cuda(ffi_lib, monkeypatch):
    """Trace FFI ops on this (CPU) backend in order to lower them for CUDA."""
    monkeypatch.setattr(_jax_ffi, "ALLOW_ANY_BACKEND", True)
    return ffi_lib


def lower_for_cuda(fn, *args):
    """StableHLO text of jit(fn) lowered for CUDA (no GPU needed)."""
    exp = jax.export.export(
        jax.jit(fn), platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(t)
                         for t in _jax_ffi.TARGETS])(*args)
    return exp.mlir_module()


def calls(text, target):
    """The custom_call lines of `target` in a StableHLO module."""
    return [ln for ln in text.splitlines() if f"custom_call @{target}(" in ln]


def attrs(line):
    return dict(re.findall(r"(\w+) = ([-\d.e+]+) : [if]32", line))


S = jax.ShapeDtypeStruct


def spec(B=2, T=40, H=2, HV=4, K=32, V=64, dtype=jnp.bfloat16):
    return dict(q=S((B, T, H, K), dtype), k=S((B, T, H, K), dtype), v=S((B, T, HV, V), dtype),
                beta=S((B, T, HV), jnp.float32))


def test_library_exports_the_handlers(ffi_lib):
    for symbol in _jax_ffi.TARGETS.values():
        assert getattr(ffi_lib, symbol) is not None


@pytest.mark.parametrize("with_g,with_erase,h0,varlen,read", [
    (False, False, False, False, "after"), (True, True, True, False, "before"),
    (True, False, True, True, "after"), (False, True, False, True, "before")])
def test_forward_lowers_to_the_custom_call(for_cuda, with_g, with_erase, h0, varlen, read):
    B, T = (1, 50) if varlen else (2, 40)
    sp = spec(B=B, T=T)
    N = 3 if varlen else B
    extra = {}
    if with_g:
        extra["g"] = S((B, T, 4), jnp.float32)
    if with_erase:
        extra["erase"] = S((B, T, 4), jnp.bfloat16)  # cast to the kernels' fp32 inside
    if h0:
        extra["initial_state"] = S((N, 4, 32, 64), jnp.float32)
    if varlen:
        extra["cu_seqlens"] = S((N + 1,), jnp.int32)
    names = list(sp) + list(extra)

    def fn(*xs):
        kw = dict(zip(names, xs))
        return nj.dgd(**kw, scale=0.25, output_final_state=True, read=read)

    text = lower_for_cuda(fn, *sp.values(), *extra.values())
    (line,) = calls(text, "nlcore_dgd_fwd")
    a = attrs(line)
    assert a["has_g"] == str(int(with_g)) and a["has_erase"] == str(int(with_erase))
    assert a["has_initial_state"] == str(int(h0)) and a["varlen"] == str(int(varlen))
    assert a["read_before"] == str(int(read == "before")) and float(a["scale"]) == 0.25
    # eight operands always (absent ones are zero-size placeholders), o and the final state out
    assert line.count("%") >= 8 + 1
    assert f"tensor<{B}x{T}x4x64xbf16>" in line.split("->")[-1]
    assert f"tensor<{N}x4x32x64xf32>" in line.split("->")[-1]
    assert not calls(text, "nlcore_dgd_bwd")


def test_grad_under_jit_lowers_to_the_backward_call(for_cuda):
    sp = spec()
    sp["g"] = S((2, 40, 4), jnp.float32)
    sp["initial_state"] = S((2, 4, 32, 64), jnp.float32)

    def loss(q, k, v, beta, g, h0):
        o, s = nj.dgd(q, k, v, beta, g=g, initial_state=h0, output_final_state=True)
        return o.astype(jnp.float32).sum() + (s * s).sum()

    grad = jax.grad(loss, argnums=tuple(range(6)))
    text = lower_for_cuda(grad, *sp.values())
    (fwd,) = calls(text, "nlcore_dgd_fwd")
    (bwd,) = calls(text, "nlcore_dgd_bwd")
    a = attrs(bwd)
    assert a["has_g"] == "1" and a["has_initial_state"] == "1" and a["has_erase"] == "0"
    assert a["has_grad_final_state"] == "1"
    # gradients have the primals' shapes and dtypes
    shapes = jax.eval_shape(jax.jit(grad), *sp.values())
    for got, want in zip(shapes, sp.values()):
        assert got.shape == want.shape and got.dtype == want.dtype


def test_vmap_and_gated_delta_rule_lower(for_cuda):
    sp = spec(B=1, T=16)
    batched = {n: S((3,) + s.shape, s.dtype) for n, s in sp.items()}
    text = lower_for_cuda(jax.vmap(lambda q, k, v, b: nj.dgd(q, k, v, b)[0]), *batched.values())
    assert calls(text, "nlcore_dgd_fwd")  # sequential: a loop around the one-example call
    g = S((1, 16, 4), jnp.float32)
    text = lower_for_cuda(
        lambda q, k, v, g, b: nj.gated_delta_rule(q, k, v, g, b, use_qk_l2norm_in_kernel=True)[0],
        sp["q"], sp["k"], sp["v"], g, sp["beta"])
    (line,) = calls(text, "nlcore_dgd_fwd")
    assert attrs(line)["has_g"] == "1" and attrs(line)["has_erase"] == "1"


def test_empty_sequence_needs_no_kernel(for_cuda):
    sp = spec(T=0)
    h0 = S((2, 4, 32, 64), jnp.float32)
    text = lower_for_cuda(lambda q, k, v, b, h: nj.dgd(q, k, v, b, initial_state=h,
                                                       output_final_state=True),
                          *sp.values(), h0)
    assert not calls(text, "nlcore_dgd_fwd")


def test_bad_input_is_a_trace_time_error(for_cuda):
    sp = spec()
    q, k, v, beta = (jnp.zeros(s.shape, s.dtype) for s in sp.values())
    bad = [
        (dict(beta=beta[..., :2]), ValueError, r"beta must be \[B, T, HV\]"),
        (dict(q=q[0]), ValueError, r"q and k must be \[B, T, H, K\]"),
        (dict(k=k.astype(jnp.float32)), TypeError, r"q, k, v must share one dtype"),
        (dict(initial_state=jnp.zeros((2, 4, 32, 32))), ValueError, r"initial_state must be"),
        (dict(cu_seqlens=jnp.array([0.0, 40.0])), ValueError, r"cu_seqlens must be a 1-D int"),
        (dict(read="middle"), ValueError, r"read must be 'after' or 'before'"),
    ]
    for over, exc, match in bad:
        arrays = dict(q=q, k=k, v=v, beta=beta)
        arrays.update({n: x for n, x in over.items() if not isinstance(x, str)})
        statics = {n: x for n, x in over.items() if isinstance(x, str)}
        with pytest.raises(exc, match=match):
            jax.jit(lambda a: nj.dgd(**a, **statics)[0])(arrays)


def test_missing_library_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(_jax_ffi, "_loaded", {})
    monkeypatch.setenv("NLCORE_JAX_FFI_LIB", str(tmp_path / "nowhere.so"))
    with pytest.raises(RuntimeError, match=r"libnlcore_jax_ffi\.so is not installed.*nowhere"):
        _jax_ffi.load()
    assert not _jax_ffi.available()


@pytest.mark.cuda
def test_jit_matches_the_eager_op_on_gpu(ffi_lib):
    """On a GPU with a CUDA jaxlib: the jitted FFI path equals the eager torch op, forward and
    gradients (both run nlcore's CUDA kernels; the eager one through DLPack)."""
    if jax.default_backend() != "gpu":
        pytest.skip("JAX has no GPU backend here (a CUDA jaxlib is needed)")
    rng = np.random.default_rng(0)
    B, T, H, HV, K, V = 2, 70, 2, 4, 64, 64
    q = jnp.asarray(rng.standard_normal((B, T, H, K)), jnp.bfloat16)
    k = jnp.asarray(rng.standard_normal((B, T, H, K)) / 8, jnp.bfloat16)
    v = jnp.asarray(rng.standard_normal((B, T, HV, V)), jnp.bfloat16)
    beta = jnp.asarray(rng.uniform(0.1, 0.9, (B, T, HV)), jnp.float32)
    g = jnp.asarray(-rng.uniform(0, 0.1, (B, T, HV)), jnp.float32)
    h0 = jnp.asarray(rng.standard_normal((B, HV, K, V)) / 8, jnp.float32)

    def loss(q, k, v, beta, g, h0):
        o, s = nj.dgd(q, k, v, beta, g=g, initial_state=h0, output_final_state=True)
        return (o.astype(jnp.float32) ** 2).sum() + (s * s).sum()

    args = (q, k, v, beta, g, h0)
    want = jax.grad(loss, argnums=tuple(range(6)))(*args)   # eager: the torch op
    got = jax.jit(jax.grad(loss, argnums=tuple(range(6))))(*args)  # XLA FFI
    for a, b in zip(got, want):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b) + 1e-12
    # Newton–Schulz, fp32 compute: the same forward kernel; backwards within fp32 rounding
    G = jnp.asarray(rng.standard_normal((3, 64, 96)), jnp.float32)
    W = jnp.asarray(rng.standard_normal((3, 64, 96)), jnp.float32)

    def ns_loss(g):
        return (nj.newton_schulz(g, compute_dtype="float32") * W).sum()

    want_v, want_g = jax.value_and_grad(ns_loss)(G)
    got_v, got_g = jax.jit(jax.value_and_grad(ns_loss))(G)
    assert abs(float(got_v) - float(want_v)) <= 1e-5 * abs(float(want_v)) + 1e-6
    got_g, want_g = np.asarray(got_g, np.float64), np.asarray(want_g, np.float64)
    assert np.linalg.norm(got_g - want_g) <= 1e-3 * np.linalg.norm(want_g)
    # the memory scan from an initial state with open chunks (n as int32 in, int64 words)
    B, T, H, D, F_, C = 2, 37, 2, 32, 64, 8
    x = jnp.asarray(rng.standard_normal((B, T, H, D)), jnp.float32)
    kk = jnp.asarray(rng.standard_normal((B, T, H, D)), jnp.float32)
    kk = kk / jnp.linalg.norm(kk, axis=-1, keepdims=True)
    vv = jnp.asarray(rng.standard_normal((B, T, H, D)), jnp.float32)
    eta = jnp.asarray(rng.uniform(0.01, 0.1, (B, T, H)), jnp.float32)
    st = (jnp.asarray(rng.standard_normal((B, H, F_, D)) / np.sqrt(D), jnp.float32),
          jnp.asarray(rng.standard_normal((B, H, D, F_)) / np.sqrt(F_), jnp.float32),
          *(jnp.asarray(0.01 * rng.standard_normal(s), jnp.float32)
            for s in ((B, H, F_, D), (B, H, D, F_), (B, H, F_, D), (B, H, D, F_))),
          jnp.asarray(-0.01 * rng.uniform(size=(B, H)), jnp.float32),
          jnp.asarray([3, 5], jnp.int32))

    def mlp_loss(x, kk, vv, eta, *s):
        y, fin = nj.memory_mlp_scan(x, kk, vv, eta, None, None, C, momentum=0.5,
                                    self_target=True, initial_state=s, output_final_state=True)
        return (y ** 2).sum() + sum((t * t).sum() for t in fin[:7]) + fin.n.sum()

    argn = tuple(range(11))
    want = jax.value_and_grad(mlp_loss, argnums=argn)(x, kk, vv, eta, *st)
    got = jax.jit(jax.value_and_grad(mlp_loss, argnums=argn))(x, kk, vv, eta, *st)
    assert abs(float(got[0]) - float(want[0])) <= 1e-5 * abs(float(want[0]))
    for a, b in zip(got[1], want[1]):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b) + 1e-12
    # the self-modifying scan, per-sequence weights and biases
    w_in4 = jnp.asarray(rng.standard_normal((4, B, H, F_, D)) / np.sqrt(D), jnp.float32)
    w_out4 = jnp.asarray(rng.standard_normal((4, B, H, D, F_)) / np.sqrt(F_), jnp.float32)
    w_eta = jnp.asarray(rng.standard_normal((H, D)) / np.sqrt(D), jnp.float32)
    w_alpha = jnp.asarray(rng.standard_normal((H, D)) / np.sqrt(D), jnp.float32)
    b_alpha = jnp.asarray(rng.standard_normal(H) + 2.0, jnp.float32)

    def sm_loss(x, w_in4, w_out4, w_eta, w_alpha, b_alpha):
        k_, v_, e_, g_, fin = nj.self_modifying_scan(
            x, w_in4, w_out4, w_eta, w_alpha, C, eta_max=0.05, b_alpha=b_alpha, momentum=0.5,
            output_final_state=True)
        return ((k_ * v_).sum() + e_.sum() + g_.sum() + (fin.w_in ** 2).sum())

    args = (x, w_in4, w_out4, w_eta, w_alpha, b_alpha)
    want = jax.value_and_grad(sm_loss, argnums=tuple(range(6)))(*args)
    got = jax.jit(jax.value_and_grad(sm_loss, argnums=tuple(range(6))))(*args)
    assert abs(float(got[0]) - float(want[0])) <= 1e-5 * abs(float(want[0]))
    for a, b in zip(got[1], want[1]):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b) + 1e-12


# ----------------------------------------------------------------------------- Newton–Schulz
@pytest.mark.parametrize("coefficients,kernel,cd", [("muon", "auto", jnp.bfloat16),
                                                    ("polar_express", "general", jnp.float32)])
def test_newton_schulz_lowers_with_its_attributes(for_cuda, coefficients, kernel, cd):
    from nlcore._coefficients import resolve
    G = S((3, 96, 64), jnp.float32)
    text = lower_for_cuda(lambda g: nj.newton_schulz(g, steps=4, coefficients=coefficients,
                                                     compute_dtype=cd, kernel=kernel), G)
    (line,) = calls(text, "nlcore_ns_fwd")
    a = attrs(line)
    assert a["compute_dtype"] == ("1" if cd == jnp.bfloat16 else "0")
    assert a["flags"] == ("0" if kernel == "auto" else "2")
    triples, scale, additive = resolve(coefficients, 4)
    assert a["norm_additive"] == str(int(additive)) and float(a["norm_scale"]) == \
        pytest.approx(scale)
    coef = re.search(r"coefficients = dense<\[([^\]]*)\]>", line)
    assert coef, line
    got = [float(x) for x in coef.group(1).split(",")]
    assert np.allclose(got, np.asarray(triples, np.float32).reshape(-1))
    assert "tensor<3x96x64xf32>" in line.split("->")[-1]


def test_newton_schulz_grad_and_vmap_under_jit(for_cuda):
    G = S((2, 32, 48), jnp.bfloat16)
    vg = jax.value_and_grad(lambda g: nj.newton_schulz(g).astype(jnp.float32).sum())
    text = lower_for_cuda(vg, G)
    assert len(calls(text, "nlcore_ns_fwd")) == 1  # forward kernel; backward: JAX's autodiff
    _, got = jax.eval_shape(jax.jit(vg), G)
    assert got.shape == G.shape and got.dtype == G.dtype
    text = lower_for_cuda(jax.vmap(nj.newton_schulz), S((5, 2, 16, 8), jnp.float32))
    (line,) = calls(text, "nlcore_ns_fwd")  # broadcast_all: one batched call
    assert "tensor<5x2x16x8xf32>" in line.split("->")[-1]


def test_newton_schulz_backward_is_the_iteration_gradient(ffi_lib):
    """The custom_vjp's backward (JAX autodiff of _ns_iterate) against the torch op's float64
    backward on the CPU, compute_dtype float32: the same gradient."""
    import torch
    import nlcore
    rng = np.random.default_rng(3)
    G = rng.standard_normal((2, 12, 20))
    W = rng.standard_normal((2, 12, 20))
    from nlcore._coefficients import resolve
    triples, scale, additive = resolve("muon", 5)
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    try:
        g64 = jnp.asarray(G)
        _, vjp = jax.vjp(lambda g: _jax_ffi._ns_iterate(g, triples, 1e-7, scale, additive,
                                                        jnp.float64), g64)
        (ours,) = vjp(jnp.asarray(W))
        ours = np.asarray(ours)
    finally:
        jax.config.update("jax_enable_x64", old)
    Gt = torch.tensor(G, requires_grad=True)
    (nlcore.ops.newton_schulz(Gt, compute_dtype=torch.float32) * torch.tensor(W)).sum() \
        .backward()
    want = Gt.grad.numpy()
    assert np.linalg.norm(np.asarray(ours) - want) <= 1e-9 * np.linalg.norm(want)


def test_newton_schulz_bad_input_at_trace_time(for_cuda):
    G = jnp.zeros((4, 8), jnp.float32)
    for kw, exc, match in [(dict(compute_dtype="int8"), TypeError, "compute_dtype"),
                           (dict(kernel="fast"), ValueError, "kernel must be one of"),
                           (dict(eps=-1.0), ValueError, "eps must be")]:
        with pytest.raises(exc, match=match):
            jax.jit(lambda g: nj.newton_schulz(g, **kw))(G)
    with pytest.raises(ValueError, match=r"G must be \[\.\.\., m, n\]"):
        jax.jit(nj.newton_schulz)(jnp.zeros((4,), jnp.float32))


# ----------------------------------------------------------------------------- memory scan
def mlp_spec(B=2, T=40, H=2, D=32, F_=64, dtype=jnp.bfloat16, lead=()):
    return dict(x=S((B, T, H, D), dtype), k=S((B, T, H, D), dtype), v=S((B, T, H, D), dtype),
                eta=S((B, T, H), jnp.float32), w_in=S(lead + (H, F_, D), jnp.float32),
                w_out=S(lead + (H, D, F_), jnp.float32))


def test_memory_scan_forward_and_grad_lower(for_cuda):
    sp = mlp_spec()
    g = S((2, 40, 2), jnp.float32)

    def loss(x, k, v, eta, w_in, w_out, g):
        y, st = nj.memory_mlp_scan(x, k, v, eta, w_in, w_out, 8, g=g, momentum=0.5,
                                   activation="gelu", objective="dot", self_target=True,
                                   output_final_state=True, checkpoint_every=3,
                                   kernel="persistent")
        return y.astype(jnp.float32).sum() + (st.w_in ** 2).sum() + st.acc_g.sum()

    vg = jax.value_and_grad(loss, argnums=tuple(range(7)))
    text = lower_for_cuda(vg, *sp.values(), g)
    (fwd,) = calls(text, "nlcore_mlp_fwd")
    (bwd,) = calls(text, "nlcore_mlp_bwd")
    a = attrs(fwd)
    assert a == attrs(bwd)
    assert a["activation"] == "1" and a["objective"] == "1" and a["self_target"] == "1"
    assert a["has_g"] == "1" and a["has_initial_state"] == "0" and a["flags"] == "1"
    assert float(a["momentum"]) == 0.5
    assert re.search(r"chunk_size = 8 : i64", fwd) and re.search(r"checkpoint_every = 3 : i64", fwd)
    # nine results: y, seven float state entries, n as int32 [N, 2] (int64 words)
    res = fwd.split("->")[-1]
    assert "tensor<2x40x2x32xbf16>" in res and "tensor<2x2x64x32xf32>" in res
    assert "tensor<2x2xi32>" in res
    _, grads = jax.eval_shape(jax.jit(vg), *sp.values(), g)
    for got, want in zip(grads, list(sp.values()) + [g]):
        assert got.shape == want.shape and got.dtype == want.dtype


def test_memory_scan_initial_state_varlen_lower(for_cuda):
    N, H, D, F_ = 3, 2, 32, 64
    sp = mlp_spec(B=1, T=50, H=H, D=D, F_=F_, dtype=jnp.float32)
    del sp["w_in"], sp["w_out"]
    state = [S((N, H, F_, D), jnp.float32), S((N, H, D, F_), jnp.float32),
             S((N, H, F_, D), jnp.float32), S((N, H, D, F_), jnp.float32),
             S((N, H, F_, D), jnp.float32), S((N, H, D, F_), jnp.float32),
             S((N, H), jnp.float32), S((N,), jnp.int32)]
    cu = S((N + 1,), jnp.int32)

    def loss(x, k, v, eta, cu, *st):
        y, fin = nj.memory_mlp_scan(x, k, v, eta, None, None, 4, initial_state=st,
                                    output_final_state=True, cu_seqlens=cu)
        return y.sum() + fin.p_in.sum() + fin.n.sum()

    # (value_and_grad: with grad alone XLA drops the forward call, whose outputs the backward
    # kernel does not need)
    text = lower_for_cuda(jax.value_and_grad(loss, argnums=(0, 5, 7, 11)), *sp.values(), cu,
                          *state)
    (fwd,) = calls(text, "nlcore_mlp_fwd")
    (bwd,) = calls(text, "nlcore_mlp_bwd")
    assert attrs(fwd)["has_initial_state"] == "1" and attrs(fwd)["varlen"] == "1"
    assert "tensor<3x2xi32>" in fwd.split("->")[0]  # n handed in as its int64 words
    grads = jax.eval_shape(jax.jit(jax.grad(loss, argnums=(0, 5, 7, 11))), *sp.values(), cu,
                           *state)
    assert [t.shape for t in grads] == [(1, 50, 2, 32), (N, H, F_, D), (N, H, F_, D), (N, H)]


def test_memory_scan_bad_input_at_trace_time(for_cuda):
    sp = mlp_spec(dtype=jnp.float32)
    x, k, v, eta, w_in, w_out = (jnp.zeros(s.shape, s.dtype) for s in sp.values())
    cases = [(dict(eta=eta[..., :1]), ValueError, r"eta must be \(2, 40, 2\)"),
             (dict(w_out=w_out[:, :, :32]), ValueError, r"w_out must be"),
             (dict(k=k.astype(jnp.bfloat16)), TypeError, r"x, k, v must share one dtype"),
             (dict(chunk_size=0), ValueError, r"chunk_size must be an int >= 1"),
             (dict(activation="relu"), ValueError, r"activation must be"),
             (dict(kernel="cluster"), ValueError, r"kernel must be one of")]
    for over, exc, match in cases:
        arrays = dict(x=x, k=k, v=v, eta=eta, w_in=w_in, w_out=w_out)
        arrays.update({n: t for n, t in over.items() if not isinstance(t, (int, str))})
        statics = dict(chunk_size=4)
        statics.update({n: t for n, t in over.items() if isinstance(t, (int, str))})
        with pytest.raises(exc, match=match):
            jax.jit(lambda a: nj.memory_mlp_scan(**a, **statics)[0])(arrays)


# ----------------------------------------------------------------------------- self-modifying
def test_self_modifying_scan_lowers(for_cuda):
    B, T, H, D, F_ = 1, 33, 2, 32, 64
    x = S((B, T, H, D), jnp.bfloat16)
    w_eta = w_alpha = S((H, D), jnp.float32)
    b = S((H,), jnp.float32)
    N = 3
    cu = S((N + 1,), jnp.int32)
    state = [S((4, N, H, F_, D), jnp.float32), S((4, N, H, D, F_), jnp.float32),
             S((4, N, H, F_, D), jnp.float32), S((4, N, H, D, F_), jnp.float32),
             S((4, N, H, F_, D), jnp.float32), S((4, N, H, D, F_), jnp.float32),
             S((N, H), jnp.float32), S((N,), jnp.int32)]

    def loss(x, w_eta, w_alpha, b, cu, *st):
        k, v, eta, g, fin = nj.self_modifying_scan(
            x, None, None, w_eta, w_alpha, 6, eta_max=0.1, b_alpha=b, momentum=0.5,
            initial_state=st, output_final_state=True, cu_seqlens=cu)
        return (k.astype(jnp.float32).sum() + v.astype(jnp.float32).sum() + eta.sum()
                + g.sum() + fin.acc_in.sum())

    argn = (0, 1, 2, 3, 5, 8, 11)
    vg = jax.value_and_grad(loss, argnums=argn)
    text = lower_for_cuda(vg, x, w_eta, w_alpha, b, cu, *state)
    (fwd,) = calls(text, "nlcore_sm_fwd")
    (bwd,) = calls(text, "nlcore_sm_bwd")
    a = attrs(fwd)
    assert a == attrs(bwd)
    assert a["has_b_eta"] == "0" and a["has_b_alpha"] == "1" and a["has_initial_state"] == "1"
    assert a["varlen"] == "1" and float(a["eta_max"]) == pytest.approx(0.1)
    res = fwd.split("->")[-1]
    assert "tensor<1x33x2x32xbf16>" in res and "tensor<4x3x2x64x32xf32>" in res
    assert "tensor<3x2xi32>" in res
    _, grads = jax.eval_shape(jax.jit(vg), x, w_eta, w_alpha, b, cu, *state)
    wants = [x, w_eta, w_alpha, b, state[0], state[3], state[6]]
    for got, want in zip(grads, wants):
        assert got.shape == want.shape and got.dtype == want.dtype


def test_self_modifying_bad_input_at_trace_time(for_cuda):
    x = jnp.zeros((2, 10, 2, 32), jnp.float32)
    w_in, w_out = jnp.zeros((4, 2, 64, 32)), jnp.zeros((4, 2, 32, 64))
    w_eta = jnp.zeros((2, 32))
    cases = [(dict(w_in=w_in[:3]), ValueError, r"w_in must be \[4, H, F, D\]"),
             (dict(w_eta=w_eta[:, :16]), ValueError, r"w_eta must be \(2, 32\)"),
             (dict(eta_max=0.0), ValueError, r"eta_max must be a finite number > 0"),
             (dict(chunk_size=0), ValueError, r"chunk_size must be an int >= 1")]
    for over, exc, match in cases:
        arrays = dict(x=x, w_in=w_in, w_out=w_out, w_eta=w_eta, w_alpha=w_eta)
        arrays.update({n: t for n, t in over.items() if not isinstance(t, (int, float))})
        statics = dict(chunk_size=4)
        statics.update({n: t for n, t in over.items() if isinstance(t, (int, float))})
        with pytest.raises(exc, match=match):
            jax.jit(lambda a: nj.self_modifying_scan(**a, **statics)[0])(arrays)
