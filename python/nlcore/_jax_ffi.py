"""The XLA FFI path of `nlcore.jax` (issue 10): nlcore's CUDA kernels as typed XLA custom calls,
so an op runs inside `jax.jit` (and under `jax.grad` of a jitted function, `jax.vmap` one
example at a time).

The handlers live in `libnlcore_jax_ffi.so` (csrc/jax/ffi.cpp), a thin layer over the C API of
`libnlcore_cuda.so`. A CUDA build installs it next to the package's other libraries when jaxlib's
FFI headers are present at build time; `NLCORE_JAX_FFI_LIB` can point at another copy. It is
loaded and its targets are registered with `jax.ffi.register_ffi_target(..., platform="CUDA")`
the first time a traced op needs them.

FFI handlers so far: `dgd` (forward and backward kernels; `gated_delta_rule` calls it) and
`newton_schulz` (forward kernel; its custom_vjp backward is JAX's autodiff of the same iteration,
GEMM operands rounded to compute_dtype as the kernels round them). The scans run eagerly only
and say so under `jit`.
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
           "nlcore_ns_fwd": "NlcoreNewtonSchulzForward"}
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
            "(NLCORE_CUDA=ON, see README 'JAX'); without it nlcore.jax ops run eagerly only "
            "(outside jax.jit).")
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
            f"{backend!r}. Call the op eagerly (outside jit; jax.grad works eagerly) to run it "
            f"on the CPU.")


_FLOATS = (jnp.float32, jnp.bfloat16, jnp.float16)


def _aval(x):
    return jax.typeof(x)


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
    N = B
    if cu_seqlens is not None:
        ca = _aval(cu_seqlens)
        if ca.ndim != 1 or ca.dtype not in (np.dtype(np.int32), np.dtype(np.int64)) or B != 1:
            raise ValueError(f"nlcore.jax.dgd: cu_seqlens must be a 1-D int32/int64 array with "
                             f"batch size 1; got {ca.shape} {ca.dtype} with B = {B}")
        N = ca.shape[0] - 1
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
        by_name = dict(zip(("q", "k", "v", "beta", "g", "erase", "initial_state"), grads))
        res = []
        for n, x in zip(names, xs):
            if n == "cu_seqlens":
                res.append(np.zeros(_aval(x).shape, dtype=jax.dtypes.float0))
            else:
                res.append(by_name[n].astype(_aval(x).dtype))
        return tuple(res)

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
