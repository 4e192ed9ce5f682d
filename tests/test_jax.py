"""nlcore.jax: the JAX front end equals the torch ops, forward and gradients — eagerly and
under jax.jit on the CPU backend (host callbacks)."""
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
jnp = jax.numpy

import nlcore  # noqa: E402
import nlcore.jax as nj  # noqa: E402
from nlcore import MLPMemoryState  # noqa: E402


@pytest.fixture
def x64():
    """jax_enable_x64 on for the test, restored after."""
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


@pytest.fixture
def x32():
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", False)
    yield
    jax.config.update("jax_enable_x64", old)


# ----------------------------------------------------------------------------- inputs

def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def ns_inputs(rng, dt):
    return dict(G=rng.standard_normal((2, 5, 3)).astype(dt)), {}


def dgd_inputs(rng, dt, full=True):
    T, H, HV, K, V = 13, 2, 4, 8, 4
    B = 1 if full else 2
    a = dict(q=rng.standard_normal((B, T, H, K)), k=_unit(rng.standard_normal((B, T, H, K))),
             v=rng.standard_normal((B, T, HV, V)), beta=_sig(rng.standard_normal((B, T, HV))))
    if full:  # every optional input: g, erase, initial state, packed sequences
        a["g"] = np.log(_sig(rng.standard_normal((B, T, HV)) + 3.0))
        a["erase"] = rng.random((B, T, HV)) * 1.4 + 0.05
        a["initial_state"] = rng.standard_normal((2, HV, K, V))
        a["cu_seqlens"] = np.array([0, 5, T], dtype=np.int32)
    a = {n: (x.astype(dt) if x.dtype.kind == "f" else x) for n, x in a.items()}
    s = dict(output_final_state=True, read="before") if full else {}
    return a, s


def gdr_inputs(rng, dt):
    B, T, H, K, V = 2, 9, 2, 8, 4
    a = dict(q=rng.standard_normal((B, T, H, K)), k=rng.standard_normal((B, T, H, K)),
             v=rng.standard_normal((B, T, H, V)),
             g=np.log(_sig(rng.standard_normal((B, T, H)) + 3.0)),
             beta=_sig(rng.standard_normal((B, T, H))),
             initial_state=rng.standard_normal((B, H, K, V)))
    return ({n: x.astype(dt) for n, x in a.items()},
            dict(output_final_state=True, use_qk_l2norm_in_kernel=True, scale=0.3))


def mlp_inputs(rng, dt, state=False):
    B, T, H, D, F = 2, 11, 2, 4, 8
    a = dict(x=rng.standard_normal((B, T, H, D)), k=_unit(rng.standard_normal((B, T, H, D))),
             v=rng.standard_normal((B, T, H, D)), eta=rng.random((B, T, H)) * 0.3 + 0.05,
             g=np.log(_sig(rng.standard_normal((B, T, H)) + 3.0)),
             w_in=rng.standard_normal((H, F, D)) / 2, w_out=rng.standard_normal((H, D, F)) / 3)
    a = {n: x.astype(dt) for n, x in a.items()}
    s = dict(chunk_size=4, momentum=0.5, output_final_state=True)
    if state:  # continue from a state (open chunk: n = 3 tokens) as the initial state
        with torch.no_grad():
            _, st = nlcore.ops.memory_mlp_scan(
                **{n: torch.from_numpy(x) for n, x in a.items()}, **s)
        a["w_in"] = a["w_out"] = None
        a["initial_state"] = tuple(t.numpy() for t in st)
    return a, s


def sm_inputs(rng, dt):
    B, T, H, D, F = 1, 10, 2, 4, 8
    a = dict(x=rng.standard_normal((B, T, H, D)), w_in=rng.standard_normal((4, H, F, D)) / 2,
             w_out=rng.standard_normal((4, H, D, F)) / 3,
             w_eta=rng.standard_normal((H, D)) / 2, w_alpha=rng.standard_normal((H, D)) / 2,
             b_eta=rng.standard_normal(H), b_alpha=rng.standard_normal(H) + 2.0)
    a = {n: x.astype(dt) for n, x in a.items()}
    a["cu_seqlens"] = np.array([0, 4, T], dtype=np.int64)
    return a, dict(chunk_size=3, momentum=0.3, output_final_state=True)


# ----------------------------------------------------------------------------- harness

def _is_float(x):
    return x is not None and np.dtype(x.dtype).kind == "f"


def check_against_torch(name, arrays, statics, rtol, atol, seed=0, jit=False):
    """Forward equals the torch op; jax.grad of a random linear functional of every float
    output equals torch autograd's gradient for every float input. jit: both through
    jax.jit (on this CPU backend: the host-callback path)."""
    torch_fn, eager_fn = getattr(nlcore.ops, name), getattr(nj, name)

    def jax_fn(**kw):
        if not jit:
            return eager_fn(**kw, **statics)
        return jax.jit(lambda a: eager_fn(**a, **statics))(kw)
    leaves, treedef = jax.tree_util.tree_flatten(arrays)
    fidx = [i for i, x in enumerate(leaves) if _is_float(x)]

    def torch_args(ls):
        a = jax.tree_util.tree_unflatten(treedef, ls)
        if a.get("initial_state") is not None:
            a["initial_state"] = MLPMemoryState(*a["initial_state"]) \
                if len(a["initial_state"]) == 8 else a["initial_state"]
        return a

    t_leaves = [torch.from_numpy(np.array(x)) for x in leaves]
    for i in fidx:
        t_leaves[i].requires_grad_(True)
    t_out = jax.tree_util.tree_leaves(torch_fn(**torch_args(t_leaves), **statics))
    t_fout = [y for y in t_out if y.is_floating_point()]
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal(tuple(y.shape)) for y in t_fout]
    loss = sum((y.double() * torch.from_numpy(w)).sum() for y, w in zip(t_fout, ws))
    t_grads = torch.autograd.grad(loss, [t_leaves[i] for i in fidx], allow_unused=True)

    j_leaves = [jnp.asarray(x) for x in leaves]
    j_out = jax.tree_util.tree_leaves(jax_fn(**jax.tree_util.tree_unflatten(treedef, j_leaves)))
    assert len(j_out) == len(t_out)
    for yj, yt in zip(j_out, t_out):
        assert isinstance(yj, jax.Array)
        assert yj.shape == tuple(yt.shape)
        np.testing.assert_allclose(np.asarray(yj, dtype=np.float64),
                                   yt.detach().double().numpy(), rtol=rtol, atol=atol)

    def jloss(*fl):
        ls = list(j_leaves)
        for i, v in zip(fidx, fl):
            ls[i] = v
        out = jax.tree_util.tree_leaves(eager_fn(**jax.tree_util.tree_unflatten(treedef, ls),
                                                 **statics))
        fout = [y for y in out if jnp.issubdtype(y.dtype, jnp.floating)]
        return sum((y.astype(jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32)
                    * jnp.asarray(w, dtype=y.dtype)).sum() for y, w in zip(fout, ws))

    gfn = jax.grad(jloss, argnums=tuple(range(len(fidx))))
    j_grads = (jax.jit(gfn) if jit else gfn)(*[j_leaves[i] for i in fidx])
    for i, gj, gt in zip(fidx, j_grads, t_grads):
        assert gj.shape == leaves[i].shape and gj.dtype == j_leaves[i].dtype
        ref = np.zeros(gj.shape) if gt is None else gt.double().numpy()
        np.testing.assert_allclose(np.asarray(gj, dtype=np.float64), ref, rtol=rtol, atol=atol,
                                   err_msg=f"{name}: gradient of input leaf {i}")


CASES = {
    "newton_schulz": lambda rng, dt: ns_inputs(rng, dt),
    "dgd": lambda rng, dt: dgd_inputs(rng, dt),
    "dgd_minimal": lambda rng, dt: dgd_inputs(rng, dt, full=False),
    "gated_delta_rule": gdr_inputs,
    "memory_mlp_scan": lambda rng, dt: mlp_inputs(rng, dt),
    "memory_mlp_scan_state": lambda rng, dt: mlp_inputs(rng, dt, state=True),
    "self_modifying_scan": sm_inputs,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_float64_matches_torch(case, x64):
    arrays, statics = CASES[case](np.random.default_rng(zlib.crc32(case.encode())), np.float64)
    check_against_torch(case.replace("_minimal", "").replace("_state", ""), arrays, statics,
                        rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("case", sorted(CASES))
def test_jit_on_cpu_matches_torch(case, x64):
    """Under jax.jit on the CPU backend every op is a host callback into the torch op, with a
    callback backward: values and gradients equal the torch op's."""
    arrays, statics = CASES[case](np.random.default_rng(zlib.crc32(case.encode())), np.float64)
    check_against_torch(case.replace("_minimal", "").replace("_state", ""), arrays, statics,
                        rtol=1e-9, atol=1e-11, jit=True)


def test_jit_on_cpu_float32_and_vmap(x32):
    """The callback path in JAX's default config (int32 counts) and under vmap."""
    arrays, statics = mlp_inputs(np.random.default_rng(1), np.float32, state=True)
    arrays = jax.tree_util.tree_map(
        lambda x: x.astype(np.int32) if x.dtype == np.int64 else x, arrays)
    check_against_torch("memory_mlp_scan", arrays, statics, rtol=1e-4, atol=1e-5, jit=True)
    G = jnp.asarray(np.random.default_rng(2).standard_normal((3, 2, 6, 4)), jnp.float32)
    got = jax.jit(jax.vmap(lambda g: nj.newton_schulz(g, compute_dtype="float32")))(G)
    want = nlcore.ops.newton_schulz(torch.from_numpy(np.array(G)), compute_dtype=torch.float32)
    np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["newton_schulz", "dgd", "memory_mlp_scan_state"])
def test_float32_matches_torch(case, x32):
    """Default JAX config (no x64): float32 arrays, int32 cu_seqlens / token counts."""
    arrays, statics = CASES[case](np.random.default_rng(1), np.float32)
    if case == "newton_schulz":
        statics = dict(compute_dtype=jnp.float32)  # a JAX dtype for the torch dtype
    arrays = jax.tree_util.tree_map(
        lambda x: x.astype(np.int32) if x.dtype == np.int64 else x, arrays)
    name = case.replace("_state", "")
    if name == "newton_schulz":  # the torch side needs a torch dtype
        arrays_t, statics_t = arrays, dict(compute_dtype=torch.float32)
        out = nj.newton_schulz(jnp.asarray(arrays["G"]), **statics)
        ref = nlcore.ops.newton_schulz(torch.from_numpy(arrays_t["G"]), **statics_t)
        np.testing.assert_allclose(np.asarray(out), ref.numpy(), rtol=1e-5, atol=1e-6)
        g = jax.grad(lambda G: (nj.newton_schulz(G, **statics) ** 2).sum())(
            jnp.asarray(arrays["G"]))
        G = torch.from_numpy(arrays["G"]).requires_grad_(True)
        (nlcore.ops.newton_schulz(G, **statics_t) ** 2).sum().backward()
        np.testing.assert_allclose(np.asarray(g), G.grad.numpy(), rtol=1e-4, atol=1e-5)
        return
    check_against_torch(name, arrays, statics, rtol=1e-4, atol=1e-5)


def test_optional_outputs_none_and_vjp(x64):
    arrays, _ = dgd_inputs(np.random.default_rng(2), np.float64, full=False)
    ja = {n: jnp.asarray(x) for n, x in arrays.items()}
    o, final = nj.dgd(**ja)
    assert final is None and o.shape == ja["v"].shape
    (o2, _), vjp = jax.vjp(lambda q, k: nj.dgd(q, k, ja["v"], ja["beta"]), ja["q"], ja["k"])
    np.testing.assert_array_equal(np.asarray(o2), np.asarray(o))
    ct = jnp.ones_like(o)
    dq1, dk1 = vjp((ct, None))
    dq2, _ = vjp((ct, None))  # the vjp function may be called again
    np.testing.assert_array_equal(np.asarray(dq1), np.asarray(dq2))
    assert dq1.shape == ja["q"].shape and dk1.shape == ja["k"].shape
    # MLPMemoryState out and back in; integer counts get a float0 cotangent
    arrays, statics = mlp_inputs(np.random.default_rng(3), np.float64)
    y, st = nj.memory_mlp_scan(**{n: jnp.asarray(x) for n, x in arrays.items()}, **statics)
    assert isinstance(st, MLPMemoryState) and st.n.dtype == jnp.int64
    y2, _ = nj.memory_mlp_scan(jnp.asarray(arrays["x"]), jnp.asarray(arrays["k"]),
                               jnp.asarray(arrays["v"]), jnp.asarray(arrays["eta"]), None, None,
                               4, initial_state=st)
    gst = jax.grad(lambda s: nj.memory_mlp_scan(
        y, y, y, jnp.asarray(arrays["eta"]), None, None, 4, initial_state=s)[0].sum(),
        allow_int=True)(st)
    assert gst.n.dtype == jax.dtypes.float0 and gst.w_in.shape == st.w_in.shape


def test_dlpack_zero_copy(monkeypatch, x32):
    """The torch op sees the JAX buffer itself and its output becomes the JAX array."""
    seen = {}
    real = nlcore.ops.newton_schulz

    def spy(G, **kw):
        out = real(G, **kw)
        seen["in"], seen["out"] = G.data_ptr(), out.data_ptr()
        return out
    monkeypatch.setattr(nlcore.ops, "newton_schulz", spy)
    G = jnp.asarray(np.random.default_rng(4).standard_normal((3, 8, 4)), dtype=jnp.float32)
    out = nj.newton_schulz(G, compute_dtype="float32")
    assert seen["in"] == G.unsafe_buffer_pointer()
    assert seen["out"] == out.unsafe_buffer_pointer()


def test_jit_on_a_cpu_backend_is_a_host_callback(x32):
    """Off the GPU a traced op lowers to a host callback, never to the CUDA custom calls;
    calling the FFI form there directly is a clear error."""
    from nlcore import _jax_ffi
    x = jnp.ones((1, 6, 1, 4), dtype=jnp.float32)
    w_in, w_out = jnp.ones((4, 1, 8, 4)), jnp.ones((4, 1, 4, 8))
    w_eta = w_alpha = jnp.ones((1, 4))
    eta = jnp.ones((1, 6, 1))
    cases = {
        "self_modifying_scan": lambda x: nj.self_modifying_scan(x, w_in, w_out, w_eta, w_alpha,
                                                                2)[0],
        "memory_mlp_scan": lambda x: nj.memory_mlp_scan(x, x, x, eta, w_in[0], w_out[0], 2)[0],
        "newton_schulz": lambda x: nj.newton_schulz(x[0]),
        "dgd": lambda x: nj.dgd(x, x, x, x[..., 0])[0],
    }
    for name, fn in cases.items():
        text = jax.jit(fn).lower(x).as_text()
        assert "callback" in text and "nlcore_" not in text, name
    with pytest.raises(RuntimeError, match=r"nlcore\.jax\.dgd under jax\.jit.*needs a CUDA GPU"):
        jax.jit(lambda x: _jax_ffi.dgd(x, x, x, x[..., 0])[0])(x)


def test_bad_inputs_give_the_torch_errors(x64):
    arrays, _ = dgd_inputs(np.random.default_rng(5), np.float32, full=False)
    ja = {n: jnp.asarray(x) for n, x in arrays.items()}
    with pytest.raises(ValueError, match=r"dgd: q must be \[B, T, H, K\]"):
        nj.dgd(ja["q"][0], ja["k"], ja["v"], ja["beta"])
    with pytest.raises(TypeError, match=r"dgd: cu_seqlens must be an int32/int64"):
        nj.dgd(**ja, cu_seqlens=jnp.array([0.0, 13.0]))
    with pytest.raises(TypeError, match="q, k and v must share one dtype"):  # the op's check
        nj.dgd(ja["q"], ja["k"].astype(jnp.float64), ja["v"], ja["beta"])
    with pytest.raises(TypeError, match="newton_schulz: G must be float32"):
        nj.newton_schulz(jnp.ones((3, 3), dtype=jnp.int32))
    with pytest.raises(TypeError, match="compute_dtype must be"):
        nj.newton_schulz(jnp.ones((3, 3)), compute_dtype="float64")
    with pytest.raises(TypeError, match=r"nlcore\.jax\.dgd: beta must be a JAX array, got list"):
        nj.dgd(ja["q"], ja["k"], ja["v"], [0.5])


def test_not_imported_by_nlcore_and_clear_import_error(monkeypatch):
    code = ("import sys, nlcore; assert 'nlcore.jax' not in sys.modules; "
            "assert 'jax' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    monkeypatch.setitem(sys.modules, "jax", None)  # as if jax were not installed
    monkeypatch.delitem(sys.modules, "nlcore.jax")
    import importlib
    with pytest.raises(ImportError, match="nlcore.jax needs JAX"):
        importlib.import_module("nlcore.jax")


def test_staged_means_abstract_not_differentiated():
    """The FFI path is taken for abstract (jit / vmap) arrays only: eager calls and jax.grad
    of eager calls hold concrete values and keep the DLPack path."""
    from nlcore._jax_ffi import is_staged
    seen = []

    def probe(x):
        seen.append(is_staged(x))
        return (x * x).sum()

    x = jnp.ones(3)
    probe(x)
    jax.grad(probe)(x)
    jax.jit(probe)(x)
    jax.vmap(probe)(jnp.ones((2, 3)))
    jax.jit(jax.grad(probe))(x)
    assert seen == [False, False, True, True, True]


def test_gpu_without_ffi_library_falls_back_to_callbacks(monkeypatch):
    """A GPU backend without libnlcore_jax_ffi.so: traced ops still run (host callbacks), and
    say so once."""
    from nlcore import _jax_callback, _jax_ffi
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(_jax_ffi, "available", lambda: False)
    monkeypatch.setattr(_jax_callback, "_warned", [])
    with pytest.warns(RuntimeWarning, match="no XLA FFI library"):
        assert _jax_callback.use_callback()
    assert _jax_callback.use_callback()  # (warned once)
    monkeypatch.setattr(_jax_ffi, "available", lambda: True)
    assert not _jax_callback.use_callback()
