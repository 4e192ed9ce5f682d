"""`nlcore.jax`: a JAX front end to the nlcore ops.

Same op names and arguments as `nlcore.ops` (`dgd`, `gated_delta_rule`, `memory_mlp_scan`,
`newton_schulz`, `self_modifying_scan`), taking and returning JAX arrays; dtype arguments may
be JAX/NumPy dtypes or their names ("bfloat16"). Optional array arguments may be None and
optional outputs come back as None, as in `nlcore.ops`; state tuples are `MLPMemoryState`s of
JAX arrays.

How it runs: the JAX arrays are handed to the torch op through DLPack without copies (the
torch tensors alias the JAX buffers, on CPU and GPU), and the op's outputs come back as JAX
arrays the same way. Every op is a `jax.custom_vjp`: when JAX differentiates, the forward runs
under `torch.enable_grad` on torch leaves made from the primals and keeps the torch graph; the
backward is `torch.autograd.grad` of the float outputs with JAX's cotangents, i.e. the op's own
backward kernels. So `jax.grad`, `jax.vjp` and `jax.value_and_grad` work (eagerly). Integer
inputs (cu_seqlens, the state's token counts n) get no gradient (a zero/float0 cotangent).

Under `jax.jit` (and `jax.vmap`, `lax.scan`, ... — anything that traces abstract arrays):
- on a GPU backend every op runs nlcore's CUDA kernels as XLA FFI custom calls
  (`nlcore._jax_ffi`, library `libnlcore_jax_ffi.so`), differentiable through custom_vjps (the
  ops' backward kernels; newton_schulz: JAX autodiff of the same iteration);
- on any other backend (the CPU) every op is a `jax.pure_callback` into the same torch op,
  with a second callback as its backward (`nlcore._jax_callback`): a host round trip per call.
This module needs JAX and is not imported by `import nlcore`.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

try:
    import jax
    import jax.numpy as jnp
    from jax import dlpack as _jax_dlpack
except ImportError as _e:  # jax is an optional dependency
    raise ImportError(
        "nlcore.jax needs JAX, which is not installed: pip install 'jax[cpu]' (or "
        "'jax[cuda12]' for GPU arrays). The torch ops in nlcore.ops work without it.") from _e

import numpy as np
import torch

from . import ops as _ops
from ._state import MLPMemoryState
from .ops.memory_mlp import CHECKPOINT_EVERY

__all__ = ["dgd", "gated_delta_rule", "memory_mlp_scan", "newton_schulz",
           "self_modifying_scan", "MLPMemoryState"]

_Tracer = jax.core.Tracer


# ----------------------------------------------------------------------------- conversions

def _torch_dtype(dtype, op: str, name: str) -> torch.dtype:
    """A JAX/NumPy dtype, a dtype name or a torch.dtype -> torch.dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        tname = np.dtype(dtype).name  # jnp.bfloat16 / np.float32 / "float16" / ...
    except TypeError:
        raise TypeError(f"nlcore.jax.{op}: {name} must be a JAX/NumPy dtype or a dtype name, "
                        f"got {dtype!r}") from None
    td = getattr(torch, tname, None)
    if not isinstance(td, torch.dtype):
        raise TypeError(f"nlcore.jax.{op}: {name} {tname} has no torch equivalent")
    return td


def _to_torch(x) -> torch.Tensor:
    """A concrete JAX array -> a torch tensor aliasing its buffer (DLPack, no copy)."""
    return torch.from_dlpack(x)


def _to_jax(t: torch.Tensor):
    """A torch tensor -> a JAX array aliasing its buffer (DLPack, no copy; int64/float64
    become 32-bit when jax_enable_x64 is off, as JAX requires)."""
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    return _jax_dlpack.from_dlpack(t)


def _eager_only(op: str, xs: Sequence[Any]) -> None:
    """The DLPack bridge needs concrete arrays (traced ones take the XLA FFI path before
    reaching it; this guards the bridge itself)."""
    for x in xs:
        if isinstance(x, _Tracer):
            raise RuntimeError(
                f"nlcore.jax.{op}: got a traced array ({type(x).__name__}) on the eager path "
                f"(DLPack to the torch op), which needs concrete arrays. This happens when "
                f"every array argument is a constant captured inside jax.jit: pass at least one "
                f"as an argument of the jitted function, and the op takes its traced path "
                f"(XLA FFI on a GPU, a host callback elsewhere).")


def _host_callback(op: str, fn: Callable, arrays: Dict[str, Any], statics: Dict[str, Any],
                   mlp_state: bool = False):
    """A traced call where JAX's backend is not a GPU: the torch op as a host callback
    (nlcore._jax_callback); None on a GPU backend (the XLA FFI path)."""
    from . import _jax_callback
    return _jax_callback.maybe(op, fn, _check_arrays(op, arrays), statics, mlp_state=mlp_state)


def _staged(*xs) -> bool:
    """Any argument traced as an abstract value (jit, vmap, ...): the XLA FFI path."""
    from ._jax_ffi import is_staged
    return any(is_staged(x) for x in xs if x is not None)


def _as_array(op: str, x, name: str):
    if x is None or isinstance(x, (jax.Array, _Tracer)):
        return x
    if isinstance(x, np.ndarray):
        return jnp.asarray(x)
    raise TypeError(f"nlcore.jax.{op}: {name} must be a JAX array, got {type(x).__name__}")


def _check_arrays(op: str, arrays: Dict[str, Any]) -> Dict[str, Any]:
    """The array arguments (a state: a tuple of arrays) as JAX arrays; anything else is a
    TypeError naming the argument."""
    out = {}
    for name, x in arrays.items():
        if name == "initial_state" and isinstance(x, tuple):
            out[name] = tuple(_as_array(op, t, f"{name}[{i}]") for i, t in enumerate(x))
        else:
            out[name] = _as_array(op, x, name)
    return out  # tracers are checked inside the custom_vjp: jax.grad's are fine there


# ----------------------------------------------------------------------------- the bridge

def _apply(op: str, fn: Callable, arrays: Dict[str, Any], statics: Dict[str, Any],
           mlp_state: bool = False):
    """Runs torch function `fn(**arrays, **statics)` on JAX arrays as a custom_vjp.

    `arrays`: name -> JAX array, None or a tuple of them (a state); `statics`: the other
    (Python) arguments; mlp_state: initial_state is an MLPMemoryState. Returns fn's output
    pytree with JAX arrays for the tensors."""
    leaves, treedef = jax.tree_util.tree_flatten(_check_arrays(op, arrays))

    def run(torch_leaves):
        targs = jax.tree_util.tree_unflatten(treedef, torch_leaves)
        st = targs.get("initial_state")
        if mlp_state and isinstance(st, tuple) and len(st) == 8:
            # token counts: int64 for the op (JAX holds int32 without jax_enable_x64)
            targs["initial_state"] = MLPMemoryState(*st[:7], st[7].long())
        return fn(**targs, **statics)

    def to_jax_tree(out):
        return jax.tree_util.tree_map(_to_jax, out)

    graph = {}  # this call's torch graph, from fwd to bwd

    @jax.custom_vjp
    def f(*xs):
        _eager_only(op, xs)
        with torch.no_grad():
            return to_jax_tree(run([_to_torch(x) for x in xs]))

    def fwd(*xs):
        _eager_only(op, xs)
        ins = [_to_torch(x) for x in xs]
        diff = [t.is_floating_point() or t.is_complex() for t in ins]
        ins = [t.requires_grad_() if d else t for t, d in zip(ins, diff)]
        with torch.enable_grad():
            out = run(ins)
        graph["ins"], graph["diff"] = ins, diff
        graph["outs"] = jax.tree_util.tree_leaves(out)
        return to_jax_tree(out), None

    def bwd(_, cts):
        _eager_only(op, jax.tree_util.tree_leaves(cts))
        ins, diff, outs = graph["ins"], graph["diff"], graph["outs"]
        ys, gys = [], []
        for y, ct in zip(outs, jax.tree_util.tree_leaves(cts)):
            if y.requires_grad and ct.dtype != jax.dtypes.float0:
                ys.append(y)
                gys.append(_to_torch(ct).to(y.dtype))
        xs = [t for t, d in zip(ins, diff) if d]
        grads = iter(torch.autograd.grad(ys, xs, gys, allow_unused=True, retain_graph=True)
                     if ys and xs else [None] * len(xs))
        res = []
        for t, d in zip(ins, diff):
            gx = next(grads) if d else None
            res.append(None if gx is None else _to_jax(gx.to(t.dtype)))
        return tuple(res)

    f.defvjp(fwd, bwd)
    return f(*leaves)


# ----------------------------------------------------------------------------- the ops

def newton_schulz(G, steps: int = 5, coefficients="muon", eps: float = 1e-7,
                  compute_dtype="bfloat16", *, kernel: str = "auto"):
    """`nlcore.ops.newton_schulz` on a JAX array G `[..., m, n]`; compute_dtype a JAX/NumPy
    dtype or name (bfloat16, float16, float32). Returns an array of G's shape and dtype.
    Traced (jit, vmap): the CUDA forward kernel through XLA FFI, backward by JAX autodiff of
    the same iteration."""
    statics = dict(steps=steps, coefficients=coefficients, eps=eps,
                   compute_dtype=_torch_dtype(compute_dtype, "newton_schulz", "compute_dtype"),
                   kernel=kernel)
    if _staged(G):
        r = _host_callback("newton_schulz", _ops.newton_schulz, {"G": G}, statics)
        if r is not None:
            return r
        from . import _jax_ffi
        return _jax_ffi.newton_schulz(G, steps=steps, coefficients=coefficients, eps=eps,
                                      compute_dtype=compute_dtype, kernel=kernel)
    return _apply("newton_schulz", _ops.newton_schulz, {"G": G}, statics)


def dgd(q, k, v, beta, g=None, erase=None, scale: Optional[float] = None, initial_state=None,
        output_final_state: bool = False, cu_seqlens=None, read: str = "after"):
    """`nlcore.ops.dgd` on JAX arrays: returns (o, final state or None). Eager: the torch op
    through DLPack; traced (jit, vmap): the XLA FFI custom calls on a CUDA GPU."""
    arrays = dict(q=q, k=k, v=v, beta=beta, g=g, erase=erase, initial_state=initial_state,
                  cu_seqlens=cu_seqlens)
    statics = dict(scale=scale, output_final_state=output_final_state, read=read)
    if _staged(*arrays.values()):
        r = _host_callback("dgd", _ops.dgd, arrays, statics)
        if r is not None:
            return r
        from . import _jax_ffi
        return _jax_ffi.dgd(q, k, v, beta, g=g, erase=erase, scale=scale,
                            initial_state=initial_state, output_final_state=output_final_state,
                            cu_seqlens=cu_seqlens, read=read)
    return _apply("dgd", _ops.dgd, arrays, statics)


def gated_delta_rule(q, k, v, g, beta, scale: Optional[float] = None, initial_state=None,
                     output_final_state: bool = False, cu_seqlens=None,
                     use_qk_l2norm_in_kernel: bool = False):
    """`nlcore.ops.gated_delta_rule` (fla's chunk_gated_delta_rule) on JAX arrays: returns
    (o, final state or None). Traced (jit): `dgd` with erase = exp(g)·beta through XLA FFI."""
    arrays = dict(q=q, k=k, v=v, g=g, beta=beta, initial_state=initial_state,
                  cu_seqlens=cu_seqlens)
    statics = dict(scale=scale, output_final_state=output_final_state,
                   use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)
    if _staged(*arrays.values()):
        r = _host_callback("gated_delta_rule", _ops.gated_delta_rule, arrays, statics)
        if r is not None:
            return r
        if use_qk_l2norm_in_kernel:
            q, k = _l2norm(q), _l2norm(k)
        return dgd(q, k, v, beta, g=g, erase=jnp.exp(g.astype(jnp.float32)) * beta,
                   scale=scale, initial_state=initial_state,
                   output_final_state=output_final_state, cu_seqlens=cu_seqlens, read="after")
    return _apply("gated_delta_rule", _ops.gated_delta_rule, arrays, statics)


def _l2norm(x, eps: float = 1e-6):
    """fla's l2norm (as nlcore.ops): x / sqrt(sum(x²) + eps) in fp32, back in x's dtype."""
    xf = x.astype(jnp.float32)
    return (xf * jax.lax.rsqrt(jnp.sum(xf * xf, axis=-1, keepdims=True) + eps)).astype(x.dtype)


def memory_mlp_scan(x, k, v, eta, w_in, w_out, chunk_size: int, g=None, momentum: float = 0.0,
                    activation: str = "silu", residual: bool = True, objective: str = "l2",
                    self_target: bool = False, dgd_erase: bool = True, initial_state=None,
                    output_final_state: bool = False, cu_seqlens=None, *,
                    checkpoint_every: int = CHECKPOINT_EVERY, kernel: str = "auto"):
    """`nlcore.ops.memory_mlp_scan` on JAX arrays: returns (y, final `MLPMemoryState` of JAX
    arrays or None). initial_state: an `MLPMemoryState` (or 8-tuple) of JAX arrays."""
    if initial_state is not None and isinstance(initial_state, (tuple, list)):
        initial_state = tuple(initial_state)
    arrays = dict(x=x, k=k, v=v, eta=eta, w_in=w_in, w_out=w_out, g=g,
                  initial_state=initial_state, cu_seqlens=cu_seqlens)
    statics = dict(chunk_size=chunk_size, momentum=momentum, activation=activation,
                   residual=residual, objective=objective, self_target=self_target,
                   dgd_erase=dgd_erase, output_final_state=output_final_state,
                   checkpoint_every=checkpoint_every, kernel=kernel)
    if _staged(x, k, v, eta, w_in, w_out, g, cu_seqlens, *(initial_state or ())):
        r = _host_callback("memory_mlp_scan", _ops.memory_mlp_scan, arrays, statics,
                           mlp_state=True)
        if r is not None:
            return r
        from . import _jax_ffi
        return _jax_ffi.memory_mlp_scan(
            x, k, v, eta, w_in, w_out, chunk_size, g=g, momentum=momentum,
            activation=activation, residual=residual, objective=objective,
            self_target=self_target, dgd_erase=dgd_erase, initial_state=initial_state,
            output_final_state=output_final_state, cu_seqlens=cu_seqlens,
            checkpoint_every=checkpoint_every, kernel=kernel)
    return _apply("memory_mlp_scan", _ops.memory_mlp_scan, arrays, statics, mlp_state=True)


def self_modifying_scan(x, w_in, w_out, w_eta, w_alpha, chunk_size: int, eta_max: float = 1.0,
                        b_eta=None, b_alpha=None, momentum: float = 0.0,
                        activation: str = "silu", dgd_erase: bool = True, initial_state=None,
                        output_final_state: bool = False, cu_seqlens=None, *,
                        checkpoint_every: int = CHECKPOINT_EVERY):
    """`nlcore.ops.self_modifying_scan` on JAX arrays: returns (k, v, eta, g, final
    `MLPMemoryState` of JAX arrays or None)."""
    if initial_state is not None and isinstance(initial_state, (tuple, list)):
        initial_state = tuple(initial_state)
    arrays = dict(x=x, w_in=w_in, w_out=w_out, w_eta=w_eta, w_alpha=w_alpha, b_eta=b_eta,
                  b_alpha=b_alpha, initial_state=initial_state, cu_seqlens=cu_seqlens)
    statics = dict(chunk_size=chunk_size, eta_max=eta_max, momentum=momentum,
                   activation=activation, dgd_erase=dgd_erase,
                   output_final_state=output_final_state, checkpoint_every=checkpoint_every)
    if _staged(x, w_in, w_out, w_eta, w_alpha, b_eta, b_alpha, cu_seqlens,
               *(initial_state or ())):
        r = _host_callback("self_modifying_scan", _ops.self_modifying_scan, arrays, statics,
                           mlp_state=True)
        if r is not None:
            return r
        from . import _jax_ffi
        return _jax_ffi.self_modifying_scan(
            x, w_in, w_out, w_eta, w_alpha, chunk_size, eta_max=eta_max, b_eta=b_eta,
            b_alpha=b_alpha, momentum=momentum, activation=activation, dgd_erase=dgd_erase,
            initial_state=initial_state, output_final_state=output_final_state,
            cu_seqlens=cu_seqlens, checkpoint_every=checkpoint_every)
    return _apply("self_modifying_scan", _ops.self_modifying_scan, arrays, statics,
                  mlp_state=True)
