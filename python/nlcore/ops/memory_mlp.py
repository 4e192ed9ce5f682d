"""`nlcore.ops.memory_mlp_scan`: an MLP memory trained in context, once per chunk (DESIGN §3.2)."""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import torch

from .._state import MLPMemoryState
from ..reference.memory_mlp import check_flags

# Chunks between the states the backward keeps (see `memory_mlp_scan`).
CHECKPOINT_EVERY = 16

_STATE_FIELDS = MLPMemoryState._fields

# CUDA forward selection (the op's `kernel` int): "auto" takes only kernels a GPU run has
# proven (step one today); "persistent" is the experimental cluster kernel of DESIGN §7 step
# two (falls back to step one where it cannot run; see `memory_mlp_scan_path`).
_KERNELS = {"auto": 0, "step": 1, "persistent": 2}
_PATHS = {-1: "cpu", 0: "step", 1: "persistent"}


class ScanPath(NamedTuple):
    """Which forward `memory_mlp_scan` runs: kernel "cpu", "step" or "persistent";
    cluster_size (CTAs per sequence and head) and smem_bytes (per CTA) of the persistent
    kernel, else 0; reason: why "step" was taken ("" otherwise)."""
    kernel: str
    cluster_size: int
    smem_bytes: int
    reason: str


def _check_tensor(x, name, optional=False, floating=True):
    if x is None and optional:
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"memory_mlp_scan: {name} must be a torch.Tensor, got "
                        f"{type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"memory_mlp_scan: {name} must be a floating tensor, got {x.dtype}")


def memory_mlp_scan(x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eta: torch.Tensor,
                    w_in: Optional[torch.Tensor], w_out: Optional[torch.Tensor], chunk_size: int,
                    g: Optional[torch.Tensor] = None, momentum: float = 0.0,
                    activation: str = "silu", residual: bool = True, objective: str = "l2",
                    self_target: bool = False, dgd_erase: bool = True,
                    initial_state: Optional[Sequence[torch.Tensor]] = None,
                    output_final_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None,
                    *, checkpoint_every: int = CHECKPOINT_EVERY, kernel: str = "auto"
                    ) -> Tuple[torch.Tensor, Optional[MLPMemoryState]]:
    """A 2-layer MLP memory per sequence and head, `M(u) = [u +] W_out σ(W_in u)`, trained in
    context by (delta) gradient descent once per chunk of `chunk_size` tokens (DESIGN §3.2):
    every token of chunk c reads `y_t = M_c(x_t)` at the chunk-start weights; the chunk's keys
    k_t, targets (v_t, or M_c(v_t) with self_target) and rates eta_t form the inner gradient
    G of ½‖M(k_t) − target_t‖² ("l2") or −⟨M(k_t), target_t⟩ ("dot"), plus the DGD erase
    W_in Σ eta_t k_t k_tᵀ (dgd_erase); when the chunk completes, P ← momentum·P − G and
    W ← exp(Σ g_t)·W + P.

    Args:
        x, k, v: `[B, T, H, D]`, one dtype (float32/bfloat16/float16; float64 on CPU).
        eta: `[B, T, H]` per-token learning rates. g: `[B, T, H]` log-retention (default 0).
        w_in `[H, F, D]` / w_out `[H, D, F]` (shared by every sequence) or `[N, H, F, D]` /
            `[N, H, D, F]` (one per sequence); None when initial_state is given.
        chunk_size: tokens per update, an int >= 1 (semantic: the memory's update frequency).
        momentum: μ of the momentum buffers. activation: "silu" or "gelu" (exact erf).
        residual: include `u +` in M. objective: "l2" or "dot". self_target: target M_c(v_t).
        dgd_erase: add the DGD erase term on W_in.
        initial_state: an `MLPMemoryState` (or the same 8-tuple) to continue from; the weights
            then come from it (passing w_in/w_out too is a ValueError).
        output_final_state: also return the final `MLPMemoryState`.
        cu_seqlens: `[N + 1]` int32/int64 offsets of packed sequences (B must be 1); chunks
            restart at each sequence.
        checkpoint_every: the backward recomputes chunk-start states from checkpoints kept
            every this many chunks. Extra memory of the backward, per sequence and head:
            (⌈chunks / checkpoint_every⌉ + checkpoint_every) states of 4·F·D floats (weights
            and momenta), instead of one per chunk; compute: one more state-only forward pass.
        kernel: the CUDA forward, for benchmarks and GPU checks: "auto" (default; step one
            until a GPU run has proven the persistent kernel), "step" (chunk-loop tile GEMMs)
            or "persistent" (experimental, sm_90: one launch, a thread-block cluster per
            sequence and head keeps the weights on chip; falls back to step one where the
            device or build cannot run it — `memory_mlp_scan_path` says which runs). The
            backward is step one either way; CPU tensors ignore it.

    Returns:
        (y `[B, T, H, D]` in x's dtype, final state or None). The state's weights, buffers and
        accumulators are float32 (float64 for float64 inputs) with N = B or the number of
        sequences; n `[N]` int64 counts the tokens of a chunk left open at the end (its update
        is applied once a later call completes it). Differentiable in x, k, v, eta, g and the
        initial weights / state, through the inner gradient (second order).
    """
    args = _op_args(x, k, v, eta, w_in, w_out, chunk_size, g, momentum, activation, residual,
                    objective, self_target, dgd_erase, initial_state, cu_seqlens,
                    checkpoint_every, kernel)
    out = torch.ops.nlcore.memory_mlp_scan(*args)
    y = out[0]
    return y, (MLPMemoryState(*out[1:]) if output_final_state else None)


def memory_mlp_scan_path(x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eta: torch.Tensor,
                         w_in: Optional[torch.Tensor], w_out: Optional[torch.Tensor],
                         chunk_size: int, g: Optional[torch.Tensor] = None,
                         momentum: float = 0.0, activation: str = "silu", residual: bool = True,
                         objective: str = "l2", self_target: bool = False,
                         dgd_erase: bool = True,
                         initial_state: Optional[Sequence[torch.Tensor]] = None,
                         output_final_state: bool = False,
                         cu_seqlens: Optional[torch.Tensor] = None, *,
                         checkpoint_every: int = CHECKPOINT_EVERY,
                         kernel: str = "auto") -> ScanPath:
    """Which forward `memory_mlp_scan` would run for these arguments (same signature; nothing
    is computed): a `ScanPath` naming "cpu" (CPU tensors), "step" or "persistent", with the
    persistent kernel's cluster size and shared memory, or the reason step one was taken."""
    args = _op_args(x, k, v, eta, w_in, w_out, chunk_size, g, momentum, activation, residual,
                    objective, self_target, dgd_erase, initial_state, cu_seqlens,
                    checkpoint_every, kernel)
    ints, reason = torch.ops.nlcore.memory_mlp_scan_path(*args)
    return ScanPath(_PATHS.get(int(ints[0]), str(int(ints[0]))), int(ints[1]), int(ints[2]),
                    str(reason))


def _op_args(x, k, v, eta, w_in, w_out, chunk_size, g, momentum, activation, residual, objective,
             self_target, dgd_erase, initial_state, cu_seqlens, checkpoint_every, kernel):
    """Checks the Python-level arguments; the op's positional arguments."""
    check_flags(chunk_size, activation, objective)
    if not isinstance(kernel, str) or kernel not in _KERNELS:
        raise ValueError(f"memory_mlp_scan: kernel must be one of {sorted(_KERNELS)}, got "
                         f"{kernel!r}")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) \
            or checkpoint_every < 1:
        raise ValueError(f"memory_mlp_scan: checkpoint_every must be an int >= 1, got "
                         f"{checkpoint_every!r}")
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
        raise TypeError(f"memory_mlp_scan: momentum must be a number, got {momentum!r}")
    for t, name in ((x, "x"), (k, "k"), (v, "v"), (eta, "eta")):
        _check_tensor(t, name)
    _check_tensor(g, "g", optional=True)
    if cu_seqlens is not None and (not isinstance(cu_seqlens, torch.Tensor)
                                   or cu_seqlens.dtype not in (torch.int32, torch.int64)):
        raise TypeError(f"memory_mlp_scan: cu_seqlens must be an int32/int64 tensor, got "
                        f"{getattr(cu_seqlens, 'dtype', type(cu_seqlens).__name__)}")
    if initial_state is not None:
        if w_in is not None or w_out is not None:
            raise ValueError("memory_mlp_scan: pass either w_in/w_out or initial_state, not both")
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 8:
            raise ValueError("memory_mlp_scan: initial_state must be an MLPMemoryState (or an "
                             "8-tuple (w_in, w_out, p_in, p_out, acc_in, acc_out, acc_g, n))")
        for t, name in zip(initial_state, _STATE_FIELDS):
            _check_tensor(t, f"initial_state.{name}", floating=name != "n")
        w_in, w_out = initial_state[0], initial_state[1]
        rest = tuple(initial_state[2:])
    else:
        if w_in is None or w_out is None:
            raise ValueError("memory_mlp_scan: w_in and w_out are required without initial_state")
        _check_tensor(w_in, "w_in")
        _check_tensor(w_out, "w_out")
        rest = (None,) * 6
    dev = x.device.type
    if torch.is_autocast_enabled(dev):  # one sequence dtype under autocast (DESIGN §2)
        dt = torch.get_autocast_dtype(dev)
        x, k, v = x.to(dt), k.to(dt), v.to(dt)
    return (x, k, v, eta, g, w_in, w_out, *rest, cu_seqlens, chunk_size, float(momentum),
            activation, bool(residual), objective, bool(self_target), bool(dgd_erase),
            checkpoint_every, _KERNELS[kernel])


def _state_dtype(x, w_in):
    return torch.float64 if torch.float64 in (x.dtype, w_in.dtype) else torch.float32


@torch.library.register_fake("nlcore::memory_mlp_scan")
def _(x, k, v, eta, g, w_in, w_out, p_in, p_out, acc_in, acc_out, acc_g, n, cu_seqlens,
      chunk_size, momentum, activation, residual, objective, self_target, dgd_erase,
      checkpoint_every, kernel):
    B, T, H, D = x.shape
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    F = w_in.shape[-2]
    dt = _state_dtype(x, w_in)
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    a = x.new_empty((N, H, F, D), dtype=dt)
    b = x.new_empty((N, H, D, F), dtype=dt)
    return [y, a, b, torch.empty_like(a), torch.empty_like(b), torch.empty_like(a),
            torch.empty_like(b), x.new_empty((N, H), dtype=dt),
            x.new_empty((N,), dtype=torch.int64)]


@torch.library.register_fake("nlcore::memory_mlp_scan_backward")
def _(x, k, v, eta, g, w_in, w_out, p_in, p_out, acc_in, acc_out, acc_g, n, cu_seqlens,
      chunk_size, momentum, activation, residual, objective, self_target, dgd_erase,
      checkpoint_every, kernel, grad_y, grad_w_in, grad_w_out, grad_p_in, grad_p_out, grad_acc_in,
      grad_acc_out, grad_acc_g):
    dt = _state_dtype(x, w_in)

    def like(t):
        return x.new_empty((0,), dtype=dt) if t is None else torch.empty_like(
            t, memory_format=torch.contiguous_format)
    return [like(x), like(k), like(v), like(eta), like(g), like(w_in), like(w_out),
            like(p_in), like(p_out), like(acc_in), like(acc_out), like(acc_g)]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:14])
    ctx.args = inputs[14:]  # chunk_size .. kernel: the backward gets the same scalars
    ctx.has = [t is not None for t in inputs[:14]]


def _backward(ctx, grads):
    saved = list(ctx.saved_tensors)
    ins = [t if h else None for t, h in zip(saved, ctx.has)]
    x = ins[0]
    grad_y = grads[0] if grads[0] is not None else torch.zeros_like(x)
    state_grads = list(grads[1:8])
    d = torch.ops.nlcore.memory_mlp_scan_backward(*ins, *ctx.args, grad_y, *state_grads)
    dx, dk, dv, deta, dg, dw_in, dw_out, dp_in, dp_out, dacc_in, dacc_out, dacc_g = d
    has = ctx.has
    opt = lambda t, i: t if has[i] else None  # noqa: E731
    return (dx, dk, dv, deta, opt(dg, 4), dw_in, dw_out, opt(dp_in, 7), opt(dp_out, 8),
            opt(dacc_in, 9), opt(dacc_out, 10), opt(dacc_g, 11), None, None) \
        + (None,) * len(ctx.args)


torch.library.register_autograd("nlcore::memory_mlp_scan", _backward,
                                setup_context=_setup_context)
