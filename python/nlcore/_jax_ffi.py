"""The XLA FFI path of `nlcore.jax` (issue 10): nlcore's CUDA kernels as typed XLA custom calls,
so an op runs inside `jax.jit` (and under `jax.grad` of a jitted function, `jax.vmap` one
example at a time).

The handlers live in `libnlcore_jax_ffi.so` (csrc/jax/ffi.cpp), a thin layer over the C API of
`libnlcore_cuda.so`. A CUDA build installs it next to the package's other libraries when jaxlib's
FFI headers are present at build time; `NLCORE_JAX_FFI_LIB` can point at another copy. It is
loaded and its targets are registered with `jax.ffi.register_ffi_target(..., platform="CUDA")`
the first time a traced op needs them.

Only `dgd` (and `gated_delta_rule`, which calls it) has FFI handlers so far. The other ops run
eagerly only and say so under `jit`.
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
TARGETS = {"nlcore_dgd_fwd": "NlcoreDgdForward", "nlcore_dgd_bwd": "NlcoreDgdBackward"}
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
