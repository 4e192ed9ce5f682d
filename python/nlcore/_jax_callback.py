"""`nlcore.jax` under `jax.jit` off the GPU: the torch op as a host callback.

Where JAX's backend is not a GPU (no XLA FFI kernels to call), a traced op becomes a
`jax.pure_callback` into the same torch op the eager path runs (on the host, the CPU kernels),
with a `jax.custom_vjp` whose backward is a second callback: it recomputes the forward under
`torch.enable_grad` and returns `torch.autograd.grad` of it. Values cross as NumPy arrays
(copies: a callback is a host round trip, not zero-copy). The result shapes and dtypes are
declared from the inputs' by `out_spec`, which follows each op's output rules (state and gate
outputs float32, float64 for float64 inputs; token counts int64, int32 without x64).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
import torch

from ._state import MLPMemoryState

SD = jax.ShapeDtypeStruct


def _shape(x):
    return tuple(jax.typeof(x).shape)


def _dtype(x):
    return jax.typeof(x).dtype


def _wide(*xs):
    """The ops' float dtype for states and gates: float64 if any input is, else float32."""
    return jnp.float64 if any(x is not None and _dtype(x) == jnp.float64 for x in xs) \
        else jnp.float32


def _index_dtype():
    return jnp.int64 if jax.config.read("jax_enable_x64") else jnp.int32


def _state_spec(lead, N, H, Fh, D, fdt):
    s_in, s_out = lead + (N, H, Fh, D), lead + (N, H, D, Fh)
    return MLPMemoryState(SD(s_in, fdt), SD(s_out, fdt), SD(s_in, fdt), SD(s_out, fdt),
                          SD(s_in, fdt), SD(s_out, fdt), SD((N, H), fdt),
                          SD((N,), _index_dtype()))


def out_spec(op: str, a: Dict[str, Any], s: Dict[str, Any]):
    """The output pytree of `op` as ShapeDtypeStructs, from the array arguments `a` and the
    static ones `s` (the shapes the torch op returns; its checks run in the callback)."""
    if op == "newton_schulz":
        return SD(_shape(a["G"]), _dtype(a["G"]))
    if op in ("dgd", "gated_delta_rule"):
        B, T, H, K = _shape(a["q"])
        HV, V = _shape(a["v"])[2:]
        N = B if a.get("cu_seqlens") is None else _shape(a["cu_seqlens"])[0] - 1
        st = SD((N, HV, K, V), _wide(a["q"], a["v"])) if s["output_final_state"] else None
        return SD((B, T, HV, V), _dtype(a["q"])), st
    st0 = a.get("initial_state")
    w_in = a["w_in"] if st0 is None else st0[0]
    x = a["x"]
    B, T, H, D = _shape(x)
    N = B if a.get("cu_seqlens") is None else _shape(a["cu_seqlens"])[0] - 1
    Fh = _shape(w_in)[-2]
    fdt = _wide(x, w_in)
    if op == "memory_mlp_scan":
        st = _state_spec((), N, H, Fh, D, fdt) if s["output_final_state"] else None
        return SD((B, T, H, D), _dtype(x)), st
    if op == "self_modifying_scan":
        st = _state_spec((4,), N, H, Fh, D, fdt) if s["output_final_state"] else None
        return (SD((B, T, H, D), _dtype(x)), SD((B, T, H, D), _dtype(x)), SD((B, T, H), fdt),
                SD((B, T, H), fdt), st)
    raise ValueError(f"nlcore.jax: no host-callback form for {op!r}")


def _to_torch(x) -> torch.Tensor:
    return torch.from_numpy(np.array(x))  # a writable copy of the callback's argument


def _to_numpy(t: torch.Tensor, spec) -> np.ndarray:
    t = t.detach()
    if t.dtype == torch.bfloat16:  # NumPy has no bfloat16: through fp32, then JAX's dtype
        return t.float().numpy().astype(spec.dtype)
    return t.numpy().astype(spec.dtype, copy=False)


def callback_apply(op: str, fn: Callable, arrays: Dict[str, Any], statics: Dict[str, Any],
                   mlp_state: bool = False):
    """`fn(**arrays, **statics)` (a torch op) as a jax.pure_callback with a custom_vjp whose
    backward is another callback (recompute + torch.autograd.grad)."""
    leaves, treedef = jax.tree_util.tree_flatten(arrays)
    spec = out_spec(op, arrays, statics)
    spec_leaves, spec_tree = jax.tree_util.tree_flatten(spec)
    is_float = [jnp.issubdtype(_dtype(x), jnp.floating) for x in leaves]

    def run(torch_leaves):
        targs = jax.tree_util.tree_unflatten(treedef, torch_leaves)
        st = targs.get("initial_state")
        if mlp_state and isinstance(st, tuple) and len(st) == 8:
            targs["initial_state"] = MLPMemoryState(*st[:7], st[7].long())
        return fn(**targs, **statics)

    def host_fwd(*xs):
        with torch.no_grad():
            out = run([_to_torch(x) for x in xs])
        return [_to_numpy(t, sp) for t, sp in zip(jax.tree_util.tree_leaves(out), spec_leaves)]

    def forward(xs):
        outs = jax.pure_callback(host_fwd, spec_leaves, *xs, vmap_method="sequential")
        return jax.tree_util.tree_unflatten(spec_tree, outs)

    @jax.custom_vjp
    def f(*xs):
        return forward(xs)

    def fwd(*xs):
        return forward(xs), xs

    def bwd(xs, cts):
        ct_leaves = jax.tree_util.tree_leaves(cts)
        live = [i for i, (c, sp) in enumerate(zip(ct_leaves, spec_leaves))
                if jnp.issubdtype(sp.dtype, jnp.floating)]
        grad_specs = [SD(_shape(x), _dtype(x)) for x, fl in zip(xs, is_float) if fl]

        def host_bwd(*args):
            ins = [_to_torch(x) for x in args[:len(xs)]]
            cts_t = [_to_torch(c) for c in args[len(xs):]]
            ins = [t.requires_grad_() if fl else t for t, fl in zip(ins, is_float)]
            with torch.enable_grad():
                outs = jax.tree_util.tree_leaves(run(ins))
            ys, gys = [], []
            for i, c in zip(live, cts_t):
                if outs[i].requires_grad:
                    ys.append(outs[i])
                    gys.append(c.to(outs[i].dtype))
            xs_f = [t for t, fl in zip(ins, is_float) if fl]
            grads = (torch.autograd.grad(ys, xs_f, gys, allow_unused=True) if ys
                     else [None] * len(xs_f))
            return [_to_numpy(torch.zeros_like(x) if g is None else g, sp)
                    for x, g, sp in zip(xs_f, grads, grad_specs)]

        float_cts = [ct_leaves[i] for i in live]
        grads = iter(jax.pure_callback(host_bwd, grad_specs, *xs, *float_cts,
                                       vmap_method="sequential"))
        return tuple(next(grads) if fl else np.zeros(_shape(x), dtype=jax.dtypes.float0)
                     for x, fl in zip(xs, is_float))

    f.defvjp(fwd, bwd)
    return f(*leaves)


_warned = []


def use_callback() -> bool:
    """Traced ops take the host callback where JAX's backend has no XLA FFI kernels of ours:
    anything but a GPU, or a GPU without libnlcore_jax_ffi.so (then once with a warning: every
    call becomes a host round trip). Lowering tests force the FFI path."""
    from . import _jax_ffi
    if _jax_ffi.ALLOW_ANY_BACKEND:
        return False
    if jax.default_backend() != "gpu":
        return True
    if _jax_ffi.available():
        return False
    if not _warned:
        import warnings
        warnings.warn("nlcore.jax: no XLA FFI library (libnlcore_jax_ffi.so) on this GPU "
                      "machine: traced ops run as host callbacks into the torch ops (correct, "
                      "but a host round trip per call). Build nlcore with jax importable to get "
                      "the CUDA custom calls.", RuntimeWarning, stacklevel=3)
        _warned.append(True)
    return True


def maybe(op: str, fn: Callable, arrays: Dict[str, Any], statics: Dict[str, Any],
          mlp_state: bool = False) -> Optional[Any]:
    """The host-callback result for a traced call off the GPU, else None (take the FFI)."""
    if not use_callback():
        return None
    return callback_apply(op, fn, arrays, statics, mlp_state=mlp_state)
