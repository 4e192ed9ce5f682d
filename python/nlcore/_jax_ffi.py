"""The XLA FFI path of `nlcore.jax` (issue 10): nlcore's CUDA kernels as typed XLA custom calls,
so an op runs inside `jax.jit` (and under `jax.grad` of a jitted function, `jax.vmap` one
example at a time).

The handlers live in `libnlcore_jax_ffi.so` (csrc/jax/ffi.cpp), a thin layer over the C API of
`libnlcore_cuda.so`. A CUDA build installs it next to the package's other libraries when jaxlib's
FFI headers are present at build time; `NLCORE_JAX_FFI_LIB` can point at another copy. It is
loaded and its targets are registered with `jax.ffi.register_ffi_target(..., platform="CUDA")`
the first time a traced op needs them.

FFI handlers: `dgd` (forward and backward kernels; `gated_delta_rule` calls it),
`memory_mlp_scan` and `self_modifying_scan` (forward and backward kernels) and `newton_schulz`
(forward kernel; its custom_vjp backward is JAX's autodiff of the same iteration, GEMM operands
rounded to compute_dtype as the kernels round them).
"""
from __future__ import annotations

import ctypes
import math
import os
from pathlib import Path
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

LIB_NAME = "libnlcore_jax_ffi.so"
TARGETS = {"nlcore_dgd_fwd": "NlcoreDgdForward", "nlcore_dgd_bwd": "NlcoreDgdBackward",
           "nlcore_ns_fwd": "NlcoreNewtonSchulzForward",
           "nlcore_mlp_fwd": "NlcoreMemoryMlpForward", "nlcore_mlp_bwd": "NlcoreMemoryMlpBackward",
           "nlcore_sm_fwd": "NlcoreSelfModifyingForward",
           "nlcore_sm_bwd": "NlcoreSelfModifyingBackward"}
_loaded: Dict[str, Any] = {}
# Tests set this to lower for CUDA (jax.export(platforms=["cuda"])) on a machine whose JAX
# backend is the CPU; otherwise tracing an FFI op for a non-GPU backend is a clear error.
ALLOW_ANY_BACKEND = False


def library_path() -> Optional[Path]:
    """Where the FFI library is: $NLCORE_JAX_FFI_LIB, else next to the nlcore package's
    libraries; None if neither exists."""
    env = os.environ.get("NLCORE_JAX_FFI_LIB")
    if env:
        return Path(env)
    p = Path(__file__).resolve().parent / LIB_NAME
    return p if p.exists() else None


def load() -> ctypes.CDLL:
    """Load the FFI library once and register its targets for CUDA; a RuntimeError says why
    it cannot be."""
    if "lib" in _loaded:
        return _loaded["lib"]
    path = library_path()
    if path is None or not path.exists():
        raise RuntimeError(
            f"nlcore.jax: the XLA FFI library {LIB_NAME} is not installed"
            + (f" (NLCORE_JAX_FFI_LIB={path} does not exist)" if path is not None else "")
            + ". It is built with the CUDA kernels when jaxlib is importable at build time "
            "(NLCORE_CUDA=ON, see README 'JAX'); without it traced nlcore.jax ops take the "
            "host-callback path.")
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise RuntimeError(f"nlcore.jax: cannot load {path}: {e}") from e
    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform="CUDA")
    _loaded["lib"] = lib
    return lib


def available() -> bool:
    """True if the FFI library loads and its targets are registered."""
    try:
        load()
        return True
    except RuntimeError:
        return False


def is_staged(x) -> bool:
    """x is an abstract value being traced (jit, vmap, scan, ...), not a concrete array
    (eager, or a jax.grad of an eager call, whose tracers carry concrete values)."""
    if not isinstance(x, jax.core.Tracer):
        return False
    concrete = getattr(x, "to_concrete_value", None)  # jax.core.is_concrete's own test
    if concrete is not None:
        return concrete() is None
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        is_concrete = getattr(jax.core, "is_concrete", None)
        return True if is_concrete is None else not is_concrete(x)


def _check_backend(op: str) -> None:
    if ALLOW_ANY_BACKEND:
        return
    backend = jax.default_backend()
    if backend != "gpu":
        raise RuntimeError(
            f"nlcore.jax.{op} under jax.jit (or another tracing transformation) runs nlcore's "
            f"CUDA kernels through XLA FFI and needs a CUDA GPU; JAX's default backend here is "
            f"{backend!r}. nlcore.jax.{op} itself takes a host callback there.")


_FLOATS = (jnp.float32, jnp.bfloat16, jnp.float16)


def _aval(x):
    return jax.typeof(x)


def _num_sequences(op: str, B: int, cu_seqlens) -> int:
    """N: B, or the packed sequences of cu_seqlens (1-D int32/int64, batch size 1)."""
    if cu_seqlens is None:
        return B
    ca = _aval(cu_seqlens)
    if ca.ndim != 1 or ca.dtype not in (np.dtype(np.int32), np.dtype(np.int64)) or B != 1:
        raise ValueError(f"nlcore.jax.{op}: cu_seqlens must be a 1-D int32/int64 array with "
                         f"batch size 1; got {ca.shape} {ca.dtype} with B = {B}")
    return ca.shape[0] - 1


def _input_cotangents(names, xs, grads: Dict[str, Any]):
    """The custom_vjp's cotangents in input order: the kernel's gradient in each float input's
    dtype, a float0 zero for the integer ones (cu_seqlens, the token counts n)."""
    return tuple(np.zeros(_aval(x).shape, dtype=jax.dtypes.float0) if n in ("n", "cu_seqlens")
                 else grads[n].astype(_aval(x).dtype) for n, x in zip(names, xs))


def _scan_args(op: str, chunk_size, activation, checkpoint_every, w_in, w_out, initial_state):
    """The checks the two scans share; their weights/state as a dict of _MLP_FIELDS."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"nlcore.jax.{op}: chunk_size must be an int >= 1, got {chunk_size!r}")
    if activation not in _MLP_ACT:
        raise ValueError(f"nlcore.jax.{op}: activation must be 'silu' or 'gelu', got "
                         f"{activation!r}")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) \
            or checkpoint_every < 1:
        raise ValueError(f"nlcore.jax.{op}: checkpoint_every must be an int >= 1, got "
                         f"{checkpoint_every!r}")
    if initial_state is not None:
        if w_in is not None or w_out is not None:
            raise ValueError(f"nlcore.jax.{op}: pass either w_in/w_out or initial_state, not "
                             f"both")
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 8:
            raise ValueError(f"nlcore.jax.{op}: initial_state must be an MLPMemoryState (or an "
                             f"8-tuple)")
        return dict(zip(_MLP_FIELDS, initial_state))
    if w_in is None or w_out is None:
        raise ValueError(f"nlcore.jax.{op}: w_in and w_out are required without initial_state")
    return dict(w_in=w_in, w_out=w_out)


def dgd(q, k, v, beta, g=None, erase=None, scale: Optional[float] = None, initial_state=None,
        output_final_state: bool = False, cu_seqlens=None, read: str = "after"):
    """The traced form of nlcore.jax.dgd: the FFI custom calls with a custom_vjp backward."""
    op = "dgd"
    _check_backend(op)
    load()
    if read not in ("after", "before"):
        raise ValueError(f"nlcore.jax.dgd: read must be 'after' or 'before', got {read!r}")
    qa, ka, va, ba = _aval(q), _aval(k), _aval(v), _aval(beta)
    if qa.ndim != 4 or ka.shape != qa.shape or va.ndim != 4:
        raise ValueError(f"nlcore.jax.dgd: q and k must be [B, T, H, K] of one shape and v "
                         f"[B, T, HV, V]; got q {qa.shape}, k {ka.shape}, v {va.shape}")
    B, T, H, K = qa.shape
    HV, V = va.shape[2], va.shape[3]
    if va.shape[:2] != (B, T) or HV % H:
        raise ValueError(f"nlcore.jax.dgd: v {va.shape} must share q's [B, T] and have a "
                         f"multiple of q's {H} heads")
    if not (qa.dtype == ka.dtype == va.dtype) or qa.dtype not in [np.dtype(d) for d in _FLOATS]:
        raise TypeError(f"nlcore.jax.dgd: q, k, v must share one dtype among float32, bfloat16, "
                        f"float16 on CUDA; got {qa.dtype}, {ka.dtype}, {va.dtype}")
    gates = {"beta": beta, "g": g, "erase": erase}
    for name, t in gates.items():
        if t is not None and _aval(t).shape != (B, T, HV):
            raise ValueError(f"nlcore.jax.dgd: {name} must be [B, T, HV] = {(B, T, HV)}, got "
                             f"{_aval(t).shape}")
    N = _num_sequences("dgd", B, cu_seqlens)
    if initial_state is not None and _aval(initial_state).shape != (N, HV, K, V):
        raise ValueError(f"nlcore.jax.dgd: initial_state must be [N, HV, K, V] = "
                         f"{(N, HV, K, V)}, got {_aval(initial_state).shape}")
    scale = 1.0 / math.sqrt(K) if scale is None else float(scale)
    if B == 0 or T == 0:  # no tokens: no kernel; the state passes through (differentiably)
        s = (jnp.zeros((N, HV, K, V), jnp.float32) if initial_state is None
             else initial_state.astype(jnp.float32))
        return jnp.zeros((B, T, HV, V), qa.dtype), (s if output_final_state else None)
    flags = dict(has_g=np.int32(g is not None), has_erase=np.int32(erase is not None),
                 has_initial_state=np.int32(initial_state is not None),
                 varlen=np.int32(cu_seqlens is not None),
                 read_before=np.int32(read == "before"), scale=np.float32(scale))
    names = [n for n, t in (("q", q), ("k", k), ("v", v), ("beta", beta), ("g", g),
                            ("erase", erase), ("initial_state", initial_state),
                            ("cu_seqlens", cu_seqlens)) if t is not None]
    given = dict(q=q, k=k, v=v, beta=beta, g=g, erase=erase, initial_state=initial_state,
                 cu_seqlens=cu_seqlens)
    f32 = ("beta", "g", "erase", "initial_state")  # the kernels' gate / state dtype
    none_f = jnp.zeros((0,), jnp.float32)
    none_i = jnp.zeros((0,), jnp.int32)
    o_type = jax.ShapeDtypeStruct((B, T, HV, V), qa.dtype)
    s_type = jax.ShapeDtypeStruct((N, HV, K, V), jnp.float32)

    def operands(xs):
        d = dict(zip(names, xs))
        out = []
        for n in ("q", "k", "v", "beta", "g", "erase", "initial_state", "cu_seqlens"):
            t = d.get(n)
            if t is None:
                t = none_i if n == "cu_seqlens" else none_f
            elif n in f32:
                t = t.astype(jnp.float32)
            out.append(t)
        return out

    def forward(xs):
        return jax.ffi.ffi_call("nlcore_dgd_fwd", (o_type, s_type),
                                vmap_method="sequential")(*operands(xs), **flags)

    @jax.custom_vjp
    def f(*xs):
        return forward(xs)

    def fwd(*xs):
        return forward(xs), xs

    def bwd(xs, cts):
        do, ds = cts
        ops_ = operands(xs)
        shapes = [jax.ShapeDtypeStruct(_aval(t).shape, _aval(t).dtype) for t in ops_[:4]]
        for t, n in zip(ops_[4:7], ("g", "erase", "initial_state")):
            shapes.append(jax.ShapeDtypeStruct(_aval(t).shape, jnp.float32))
        grads = jax.ffi.ffi_call("nlcore_dgd_bwd", tuple(shapes), vmap_method="sequential")(
            *ops_, do.astype(qa.dtype), ds.astype(jnp.float32), **flags,
            has_grad_final_state=np.int32(1))
        return _input_cotangents(names, xs, dict(zip(
            ("q", "k", "v", "beta", "g", "erase", "initial_state"), grads)))

    f.defvjp(fwd, bwd)
    o, s = f(*[given[n] for n in names])
    return o, (s if output_final_state else None)


# ----------------------------------------------------------------------------- Newton–Schulz
_NS_KERNELS = {"auto": 0, "small": 1, "general": 2, "symmetric": 4, "cluster": 8}
_NS_COMPUTE = {"float32": 0, "bfloat16": 1, "float16": 2}  # nlcore_dtype_t


def _ns_iterate(G, triples, eps, norm_scale, norm_additive, cd):
    """The kernels' iteration in JAX (fp32 accumulation, GEMM operands in `cd`): the
    differentiable twin used for the backward."""
    acc = jnp.promote_types(cd, jnp.float32)  # float64 only where cd is (the tests)

    def mm(x, y):
        return jnp.matmul(x.astype(cd), y.astype(cd), preferred_element_type=acc)

    X = G.astype(cd).astype(acc)
    transposed = G.shape[-2] > G.shape[-1]
    if transposed:
        X = jnp.swapaxes(X, -1, -2)
    sq = jnp.sum(X * X, axis=(-2, -1), keepdims=True)
    norm = jnp.sqrt(jnp.where(sq > 0, sq, 1.0)) * (sq > 0)
    denom = (norm * norm_scale + eps) if norm_additive else jnp.maximum(norm * norm_scale, eps)
    X = X / denom
    for a, b, c in triples:
        A = mm(X, jnp.swapaxes(X, -1, -2))
        X = a * X + mm(b * A + c * mm(A, A), X)
    if transposed:
        X = jnp.swapaxes(X, -1, -2)
    return X.astype(G.dtype)


def newton_schulz(G, steps: int = 5, coefficients="muon", eps: float = 1e-7,
                  compute_dtype="bfloat16", kernel: str = "auto"):
    """The traced form of nlcore.jax.newton_schulz: the FFI forward kernel, a JAX backward."""
    from ._coefficients import resolve
    _check_backend("newton_schulz")
    load()
    ga = _aval(G)
    if ga.ndim < 2 or ga.shape[-2] < 1 or ga.shape[-1] < 1:
        raise ValueError(f"nlcore.jax.newton_schulz: G must be [..., m, n] with m, n >= 1, got "
                         f"shape {ga.shape}")
    if ga.dtype not in [np.dtype(d) for d in _FLOATS]:
        raise TypeError(f"nlcore.jax.newton_schulz: G must be float32, bfloat16 or float16 on "
                        f"CUDA, got {ga.dtype}")
    cd_name = np.dtype(compute_dtype).name
    if cd_name not in _NS_COMPUTE:
        raise TypeError(f"nlcore.jax.newton_schulz: compute_dtype must be bfloat16, float16 or "
                        f"float32, got {compute_dtype!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) \
            or eps < 0:
        raise ValueError(f"nlcore.jax.newton_schulz: eps must be a finite number >= 0, got "
                         f"{eps!r}")
    if kernel not in _NS_KERNELS:
        raise ValueError(f"nlcore.jax.newton_schulz: kernel must be one of "
                         f"{sorted(_NS_KERNELS)}, got {kernel!r}")
    triples, norm_scale, norm_additive = resolve(coefficients, steps)
    attrs = dict(coefficients=np.asarray(triples, np.float32).reshape(-1),
                 eps=np.float32(eps), norm_scale=np.float32(norm_scale),
                 norm_additive=np.int32(bool(norm_additive)),
                 compute_dtype=np.int32(_NS_COMPUTE[cd_name]),
                 flags=np.int32(_NS_KERNELS[kernel]))
    cd = jnp.dtype(cd_name)

    @jax.custom_vjp
    def f(G):
        # leading dims are the kernel's batch: vmap adds them (broadcast_all)
        return jax.ffi.ffi_call("nlcore_ns_fwd", jax.ShapeDtypeStruct(G.shape, G.dtype),
                                vmap_method="broadcast_all")(G, **attrs)

    def fwd(G):
        return f(G), G

    def bwd(G, ct):
        _, vjp = jax.vjp(lambda g: _ns_iterate(g, triples, float(eps), float(norm_scale),
                                               bool(norm_additive), cd), G)
        return vjp(ct.astype(G.dtype))

    f.defvjp(fwd, bwd)
    return f(G)


# ----------------------------------------------------------------------------- memory scan
_MLP_ACT = {"silu": 0, "gelu": 1}
_MLP_OBJ = {"l2": 0, "dot": 1}
_MLP_KERNEL = {"auto": 0, "step": 0, "persistent": 1}  # NLCORE_MEMORY_MLP_FLAG_*
_MLP_FIELDS = ("w_in", "w_out", "p_in", "p_out", "acc_in", "acc_out", "acc_g", "n")


def _counts_in(n):
    """The state's token counts for the C API's INT64 n: int64 [N] as is (jax_enable_x64),
    else int32 [N, 2], the little-endian words of each int64 (high word 0)."""
    if n.dtype == jnp.int64:
        return n
    n = n.astype(jnp.int32)
    return jnp.stack([n, jnp.zeros_like(n)], axis=-1)


def memory_mlp_scan(x, k, v, eta, w_in, w_out, chunk_size: int, g=None, momentum: float = 0.0,
                    activation: str = "silu", residual: bool = True, objective: str = "l2",
                    self_target: bool = False, dgd_erase: bool = True, initial_state=None,
                    output_final_state: bool = False, cu_seqlens=None, *,
                    checkpoint_every: int = 16, kernel: str = "auto"):
    """The traced form of nlcore.jax.memory_mlp_scan: the FFI custom calls (forward and the
    explicit second-order backward) with a custom_vjp."""
    from ._state import MLPMemoryState
    op = "memory_mlp_scan"
    _check_backend(op)
    load()
    st = _scan_args(op, chunk_size, activation, checkpoint_every, w_in, w_out, initial_state)
    if objective not in _MLP_OBJ:
        raise ValueError(f"nlcore.jax.{op}: objective must be 'l2' or 'dot', got {objective!r}")
    if kernel not in _MLP_KERNEL:
        raise ValueError(f"nlcore.jax.{op}: kernel must be one of {sorted(_MLP_KERNEL)}, got "
                         f"{kernel!r}")
    xa = _aval(x)
    if xa.ndim != 4 or _aval(k).shape != xa.shape or _aval(v).shape != xa.shape:
        raise ValueError(f"nlcore.jax.{op}: x, k, v must be [B, T, H, D] of one shape; got "
                         f"{xa.shape}, {_aval(k).shape}, {_aval(v).shape}")
    if not (xa.dtype == _aval(k).dtype == _aval(v).dtype) \
            or xa.dtype not in [np.dtype(d) for d in _FLOATS]:
        raise TypeError(f"nlcore.jax.{op}: x, k, v must share one dtype among float32, "
                        f"bfloat16, float16 on CUDA; got {xa.dtype}, {_aval(k).dtype}, "
                        f"{_aval(v).dtype}")
    B, T, H, D = xa.shape
    N = _num_sequences(op, B, cu_seqlens)
    wa = _aval(st["w_in"])
    if wa.ndim not in (3, 4):
        raise ValueError(f"nlcore.jax.{op}: w_in must be [H, F, D] or [N, H, F, D], got "
                         f"{wa.shape}")
    Fh = wa.shape[-2]
    lead = () if wa.ndim == 3 else (N,)
    want = dict(eta=(B, T, H), g=(B, T, H), w_in=lead + (H, Fh, D), w_out=lead + (H, D, Fh),
                p_in=(N, H, Fh, D), p_out=(N, H, D, Fh), acc_in=(N, H, Fh, D),
                acc_out=(N, H, D, Fh), acc_g=(N, H), n=(N,))
    given = dict(eta=eta, g=g, **st)
    for name, t in given.items():
        if t is not None and _aval(t).shape != want[name]:
            raise ValueError(f"nlcore.jax.{op}: {name} must be {want[name]}, got "
                             f"{_aval(t).shape}")
    if B * T == 0 or N == 0:
        raise ValueError(f"nlcore.jax.{op}: empty problems (B, T or N = 0) run eagerly only")
    flags = dict(chunk_size=np.int64(chunk_size), momentum=np.float32(momentum),
                 activation=np.int32(_MLP_ACT[activation]),
                 objective=np.int32(_MLP_OBJ[objective]), residual=np.int32(bool(residual)),
                 self_target=np.int32(bool(self_target)), dgd_erase=np.int32(bool(dgd_erase)),
                 has_g=np.int32(g is not None),
                 has_initial_state=np.int32(initial_state is not None),
                 varlen=np.int32(cu_seqlens is not None),
                 checkpoint_every=np.int64(checkpoint_every),
                 flags=np.int32(_MLP_KERNEL[kernel]))
    order = ("x", "k", "v", "eta", "g", "w_in", "w_out", "p_in", "p_out", "acc_in", "acc_out",
             "acc_g", "n", "cu_seqlens")
    given.update(x=x, k=k, v=v, cu_seqlens=cu_seqlens)
    names = [n for n in order if given.get(n) is not None]
    f32 = ("eta", "g", "w_in", "w_out", "p_in", "p_out", "acc_in", "acc_out", "acc_g")
    none_f, none_i = jnp.zeros((0,), jnp.float32), jnp.zeros((0,), jnp.int32)
    s_in, s_out = (N, H, Fh, D), (N, H, D, Fh)
    n_type = (jax.ShapeDtypeStruct((N,), jnp.int64) if jax.config.read("jax_enable_x64")
              else jax.ShapeDtypeStruct((N, 2), jnp.int32))
    F32 = jnp.float32
    out_types = (jax.ShapeDtypeStruct((B, T, H, D), xa.dtype),
                 jax.ShapeDtypeStruct(s_in, F32), jax.ShapeDtypeStruct(s_out, F32),
                 jax.ShapeDtypeStruct(s_in, F32), jax.ShapeDtypeStruct(s_out, F32),
                 jax.ShapeDtypeStruct(s_in, F32), jax.ShapeDtypeStruct(s_out, F32),
                 jax.ShapeDtypeStruct((N, H), F32), n_type)

    def operands(xs):
        d = dict(zip(names, xs))
        out = []
        for n in order:
            t = d.get(n)
            if t is None:
                t = none_i if n in ("n", "cu_seqlens") else none_f
            elif n in f32:
                t = t.astype(F32)
            elif n == "n":
                t = _counts_in(t)
            out.append(t)
        return out

    def forward(xs):
        outs = jax.ffi.ffi_call("nlcore_mlp_fwd", out_types, vmap_method="sequential")(
            *operands(xs), **flags)
        n_f = outs[8] if outs[8].ndim == 1 else outs[8][:, 0]
        return tuple(outs[:8]) + (n_f,)

    @jax.custom_vjp
    def f(*xs):
        return forward(xs)

    def fwd(*xs):
        return forward(xs), xs

    def bwd(xs, cts):
        ops_ = operands(xs)
        gy = cts[0].astype(xa.dtype)
        finals = [c.astype(F32) for c in cts[1:8]]
        w_lead = lead
        g_types = (jax.ShapeDtypeStruct((B, T, H, D), xa.dtype),) * 3 + (
            jax.ShapeDtypeStruct((B, T, H), F32),
            jax.ShapeDtypeStruct((B, T, H) if g is not None else (0,), F32),
            jax.ShapeDtypeStruct(w_lead + (H, Fh, D), F32),
            jax.ShapeDtypeStruct(w_lead + (H, D, Fh), F32))
        if initial_state is not None:
            g_types += (jax.ShapeDtypeStruct(s_in, F32), jax.ShapeDtypeStruct(s_out, F32),
                        jax.ShapeDtypeStruct(s_in, F32), jax.ShapeDtypeStruct(s_out, F32),
                        jax.ShapeDtypeStruct((N, H), F32))
        else:
            g_types += (jax.ShapeDtypeStruct((0,), F32),) * 5
        grads = jax.ffi.ffi_call("nlcore_mlp_bwd", g_types, vmap_method="sequential")(
            *ops_, gy, *finals, **flags)
        return _input_cotangents(names, xs, dict(zip(
            ("x", "k", "v", "eta", "g", "w_in", "w_out", "p_in", "p_out", "acc_in", "acc_out",
             "acc_g"), grads)))

    f.defvjp(fwd, bwd)
    outs = f(*[given[n] for n in names])
    return outs[0], (MLPMemoryState(*outs[1:]) if output_final_state else None)


# ----------------------------------------------------------------------------- self-modifying
def self_modifying_scan(x, w_in, w_out, w_eta, w_alpha, chunk_size: int, eta_max: float = 1.0,
                        b_eta=None, b_alpha=None, momentum: float = 0.0,
                        activation: str = "silu", dgd_erase: bool = True, initial_state=None,
                        output_final_state: bool = False, cu_seqlens=None, *,
                        checkpoint_every: int = 16):
    """The traced form of nlcore.jax.self_modifying_scan: the FFI custom calls with a
    custom_vjp over the backward kernel."""
    from ._state import MLPMemoryState
    op = "self_modifying_scan"
    _check_backend(op)
    load()
    st = _scan_args(op, chunk_size, activation, checkpoint_every, w_in, w_out, initial_state)
    if isinstance(eta_max, bool) or not isinstance(eta_max, (int, float)) \
            or not math.isfinite(eta_max) or eta_max <= 0:
        raise ValueError(f"nlcore.jax.{op}: eta_max must be a finite number > 0, got "
                         f"{eta_max!r}")
    xa = _aval(x)
    if xa.ndim != 4:
        raise ValueError(f"nlcore.jax.{op}: x must be [B, T, H, D], got {xa.shape}")
    if xa.dtype not in [np.dtype(d) for d in _FLOATS]:
        raise TypeError(f"nlcore.jax.{op}: x must be float32, bfloat16 or float16 on CUDA, "
                        f"got {xa.dtype}")
    B, T, H, D = xa.shape
    N = _num_sequences(op, B, cu_seqlens)
    wa = _aval(st["w_in"])
    if wa.ndim not in (4, 5) or wa.shape[0] != 4:
        raise ValueError(f"nlcore.jax.{op}: w_in must be [4, H, F, D] or [4, N, H, F, D], got "
                         f"{wa.shape}")
    Fh = wa.shape[-2]
    lead = (4,) if wa.ndim == 4 else (4, N)
    s_in, s_out = (4, N, H, Fh, D), (4, N, H, D, Fh)
    want = dict(w_in=lead + (H, Fh, D), w_out=lead + (H, D, Fh), w_eta=(H, D), w_alpha=(H, D),
                b_eta=(H,), b_alpha=(H,), p_in=s_in, p_out=s_out, acc_in=s_in, acc_out=s_out,
                acc_g=(N, H), n=(N,))
    given = dict(w_eta=w_eta, w_alpha=w_alpha, b_eta=b_eta, b_alpha=b_alpha, **st)
    for name, t in given.items():
        if t is not None and _aval(t).shape != want[name]:
            raise ValueError(f"nlcore.jax.{op}: {name} must be {want[name]}, got "
                             f"{_aval(t).shape}")
    if B * T == 0 or N == 0:
        raise ValueError(f"nlcore.jax.{op}: empty problems (B, T or N = 0) run eagerly only")
    flags = dict(chunk_size=np.int64(chunk_size), eta_max=np.float32(eta_max),
                 momentum=np.float32(momentum), activation=np.int32(_MLP_ACT[activation]),
                 dgd_erase=np.int32(bool(dgd_erase)), has_b_eta=np.int32(b_eta is not None),
                 has_b_alpha=np.int32(b_alpha is not None),
                 has_initial_state=np.int32(initial_state is not None),
                 varlen=np.int32(cu_seqlens is not None),
                 checkpoint_every=np.int64(checkpoint_every), flags=np.int32(0))
    order = ("x", "w_in", "w_out", "w_eta", "w_alpha", "b_eta", "b_alpha", "p_in", "p_out",
             "acc_in", "acc_out", "acc_g", "n", "cu_seqlens")
    given.update(x=x, cu_seqlens=cu_seqlens)
    names = [n for n in order if given.get(n) is not None]
    none_f, none_i = jnp.zeros((0,), jnp.float32), jnp.zeros((0,), jnp.int32)
    F32 = jnp.float32
    SD = jax.ShapeDtypeStruct
    n_type = (SD((N,), jnp.int64) if jax.config.read("jax_enable_x64")
              else SD((N, 2), jnp.int32))
    tok, gate = (B, T, H, D), (B, T, H)
    out_types = (SD(tok, xa.dtype), SD(tok, xa.dtype), SD(gate, F32), SD(gate, F32),
                 SD(s_in, F32), SD(s_out, F32), SD(s_in, F32), SD(s_out, F32), SD(s_in, F32),
                 SD(s_out, F32), SD((N, H), F32), n_type)

    def operands(xs):
        d = dict(zip(names, xs))
        out = []
        for n in order:
            t = d.get(n)
            if t is None:
                t = none_i if n in ("n", "cu_seqlens") else none_f
            elif n == "n":
                t = _counts_in(t)
            elif n not in ("x", "cu_seqlens"):
                t = t.astype(F32)
            out.append(t)
        return out

    def forward(xs):
        outs = jax.ffi.ffi_call("nlcore_sm_fwd", out_types, vmap_method="sequential")(
            *operands(xs), **flags)
        n_f = outs[11] if outs[11].ndim == 1 else outs[11][:, 0]
        return tuple(outs[:11]) + (n_f,)

    @jax.custom_vjp
    def f(*xs):
        return forward(xs)

    def fwd(*xs):
        return forward(xs), xs

    def bwd(xs, cts):
        cot = [cts[0].astype(xa.dtype), cts[1].astype(xa.dtype)] + \
              [c.astype(F32) for c in cts[2:11]]
        g_types = (SD(tok, xa.dtype), SD(lead + (H, Fh, D), F32), SD(lead + (H, D, Fh), F32),
                   SD((H, D), F32), SD((H, D), F32),
                   SD((H,) if b_eta is not None else (0,), F32),
                   SD((H,) if b_alpha is not None else (0,), F32))
        if initial_state is not None:
            g_types += (SD(s_in, F32), SD(s_out, F32), SD(s_in, F32), SD(s_out, F32),
                        SD((N, H), F32))
        else:
            g_types += (SD((0,), F32),) * 5
        grads = jax.ffi.ffi_call("nlcore_sm_bwd", g_types, vmap_method="sequential")(
            *operands(xs), *cot, **flags)
        return _input_cotangents(names, xs, dict(zip(
            ("x", "w_in", "w_out", "w_eta", "w_alpha", "b_eta", "b_alpha", "p_in", "p_out",
             "acc_in", "acc_out", "acc_g"), grads)))

    f.defvjp(fwd, bwd)
    outs = f(*[given[n] for n in names])
    return (*outs[:4], MLPMemoryState(*outs[4:]) if output_final_state else None)
