"""`nlcore.ops.self_modifying_scan`: Hope's four coupled self-modifying memories (DESIGN §3.3)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .._state import MLPMemoryState
from ..reference.memory_mlp import check_flags
from .memory_mlp import CHECKPOINT_EVERY, _check_tensor

_OP = "self_modifying_scan"


def _check(x, name, optional=False, floating=True):
    try:
        _check_tensor(x, name, optional=optional, floating=floating)
    except TypeError as e:  # same message, this op's name
        raise TypeError(str(e).replace("memory_mlp_scan", _OP)) from None


def _number(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{_OP}: {name} must be a number, got {v!r}")
    return float(v)


def self_modifying_scan(x: torch.Tensor, w_in: Optional[torch.Tensor],
                        w_out: Optional[torch.Tensor], w_eta: torch.Tensor,
                        w_alpha: torch.Tensor, chunk_size: int, eta_max: float = 1.0,
                        b_eta: Optional[torch.Tensor] = None,
                        b_alpha: Optional[torch.Tensor] = None, momentum: float = 0.0,
                        activation: str = "silu", dgd_erase: bool = True,
                        initial_state: Optional[Sequence[torch.Tensor]] = None,
                        output_final_state: bool = False,
                        cu_seqlens: Optional[torch.Tensor] = None, *,
                        checkpoint_every: int = CHECKPOINT_EVERY
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                   Optional[MLPMemoryState]]:
    """Hope's self-modifying memories (DESIGN §3.3): four residual MLP memories M_k, M_v, M_η,
    M_α per sequence and head produce the keys, values, learning rates and retention gates,
    and are trained in context with them, once per chunk of `chunk_size` tokens. In chunk c
    every memory reads x at its chunk-start weights, r_□ = M_□(x_t); then
    k_t = r_k / ‖r_k‖, v_t = r_v, eta_t = eta_max·sigmoid(w_ηᵀ r_η + b_η),
    g_t = log sigmoid(w_αᵀ r_α + b_α), and every memory takes one step of
    `memory_mlp_scan` (objective "l2", its own target M_□(v_t), keys k, rates eta,
    log-retention g, momentum, dgd_erase) when the chunk completes. The memories are coupled
    (the next chunk's keys come from M_k as trained with this chunk's values), so they advance
    together in one op.

    Args:
        x: `[B, T, H, D]` (after Hope's short convolution), float32/bfloat16/float16
            (float64 on CPU).
        w_in `[4, H, F, D]` / w_out `[4, H, D, F]` (memories k, v, eta, alpha; shared by every
            sequence) or `[4, N, H, F, D]` / `[4, N, H, D, F]`; None with initial_state.
        w_eta, w_alpha: `[H, D]` read-out vectors of the rate and retention memories;
            b_eta, b_alpha: `[H]` biases (default 0; a positive b_alpha starts retention near 1).
        chunk_size: tokens per update, an int >= 1. eta_max: the largest learning rate (> 0).
        momentum: μ of the memories' momentum buffers. activation: "silu" or "gelu".
        dgd_erase: the DGD erase term on each memory's W_in.
        initial_state: an `MLPMemoryState` with the four memories stacked first (w_in
            `[4, N, H, F, D]`, ..., acc_g `[N, H]`, n `[N]`) to continue from.
        output_final_state: also return the final state.
        cu_seqlens: `[N + 1]` offsets of packed sequences (B must be 1).
        checkpoint_every: the backward recomputes chunk-start states from checkpoints kept every
            this many chunks: extra memory per sequence and head
            (⌈chunks / checkpoint_every⌉ + checkpoint_every) states of 16·F·D floats.

    Returns:
        (k, v `[B, T, H, D]` in x's dtype, eta, g `[B, T, H]` float32 (float64 for float64
        inputs), final state or None). Differentiable in x, all four memories' initial weights
        / state, w_eta, w_alpha, b_eta, b_alpha, through the inner gradients and the coupling.
    """
    check_flags(chunk_size, activation, "l2", where=_OP)
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) \
            or checkpoint_every < 1:
        raise ValueError(f"{_OP}: checkpoint_every must be an int >= 1, got "
                         f"{checkpoint_every!r}")
    momentum = _number(momentum, "momentum")
    eta_max = _number(eta_max, "eta_max")
    _check(x, "x")
    _check(w_eta, "w_eta")
    _check(w_alpha, "w_alpha")
    _check(b_eta, "b_eta", optional=True)
    _check(b_alpha, "b_alpha", optional=True)
    if cu_seqlens is not None and (not isinstance(cu_seqlens, torch.Tensor)
                                   or cu_seqlens.dtype not in (torch.int32, torch.int64)):
        raise TypeError(f"{_OP}: cu_seqlens must be an int32/int64 tensor, got "
                        f"{getattr(cu_seqlens, 'dtype', type(cu_seqlens).__name__)}")
    if initial_state is not None:
        if w_in is not None or w_out is not None:
            raise ValueError(f"{_OP}: pass either w_in/w_out or initial_state, not both")
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 8:
            raise ValueError(f"{_OP}: initial_state must be an MLPMemoryState (or an 8-tuple "
                             "(w_in, w_out, p_in, p_out, acc_in, acc_out, acc_g, n))")
        for t, name in zip(initial_state, MLPMemoryState._fields):
            _check(t, f"initial_state.{name}", floating=name != "n")
        w_in, w_out = initial_state[0], initial_state[1]
        rest = tuple(initial_state[2:])
    else:
        if w_in is None or w_out is None:
            raise ValueError(f"{_OP}: w_in and w_out are required without initial_state")
        _check(w_in, "w_in")
        _check(w_out, "w_out")
        rest = (None,) * 6
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        x = x.to(torch.get_autocast_dtype(dev))
    out = torch.ops.nlcore.self_modifying_scan(
        x, w_in, w_out, w_eta, w_alpha, b_eta, b_alpha, *rest, cu_seqlens, chunk_size, eta_max,
        momentum, activation, bool(dgd_erase), checkpoint_every)
    k, v, eta, g = out[:4]
    return k, v, eta, g, (MLPMemoryState(*out[4:]) if output_final_state else None)


def _state_dtype(x, w_in):
    return torch.float64 if torch.float64 in (x.dtype, w_in.dtype) else torch.float32


@torch.library.register_fake("nlcore::self_modifying_scan")
def _(x, w_in, w_out, w_eta, w_alpha, b_eta, b_alpha, p_in, p_out, acc_in, acc_out, acc_g, n,
      cu_seqlens, chunk_size, eta_max, momentum, activation, dgd_erase, checkpoint_every):
    B, T, H, D = x.shape
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    F = w_in.shape[-2]
    dt = _state_dtype(x, w_in)
    k = torch.empty_like(x, memory_format=torch.contiguous_format)
    gate = x.new_empty((B, T, H), dtype=dt)
    a = x.new_empty((4, N, H, F, D), dtype=dt)
    b = x.new_empty((4, N, H, D, F), dtype=dt)
    return [k, torch.empty_like(k), gate, torch.empty_like(gate), a, b, torch.empty_like(a),
            torch.empty_like(b), torch.empty_like(a), torch.empty_like(b),
            x.new_empty((N, H), dtype=dt), x.new_empty((N,), dtype=torch.int64)]


@torch.library.register_fake("nlcore::self_modifying_scan_backward")
def _(x, w_in, w_out, w_eta, w_alpha, b_eta, b_alpha, p_in, p_out, acc_in, acc_out, acc_g, n,
      cu_seqlens, chunk_size, eta_max, momentum, activation, dgd_erase, checkpoint_every,
      grad_k, grad_v, grad_eta, grad_g, grad_w_in, grad_w_out, grad_p_in, grad_p_out,
      grad_acc_in, grad_acc_out, grad_acc_g):
    dt = _state_dtype(x, w_in)

    def like(t):
        return x.new_empty((0,), dtype=dt) if t is None else torch.empty_like(
            t, memory_format=torch.contiguous_format)
    return [like(x), like(w_in), like(w_out), like(w_eta), like(w_alpha), like(b_eta),
            like(b_alpha), like(p_in), like(p_out), like(acc_in), like(acc_out), like(acc_g)]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:14])
    ctx.args = inputs[14:]
    ctx.has = [t is not None for t in inputs[:14]]


def _backward(ctx, grads):
    ins = [t if h else None for t, h in zip(ctx.saved_tensors, ctx.has)]
    d = torch.ops.nlcore.self_modifying_scan_backward(*ins, *ctx.args, *grads[:11])
    has = ctx.has
    opt = lambda t, i: t if has[i] else None  # noqa: E731
    dx, dw_in, dw_out, dw_eta, dw_alpha, db_eta, db_alpha = d[:7]
    state = [opt(t, 7 + j) for j, t in enumerate(d[7:12])]
    return (dx, dw_in, dw_out, dw_eta, dw_alpha, opt(db_eta, 5), opt(db_alpha, 6), *state,
            None, None) + (None,) * 6


torch.library.register_autograd("nlcore::self_modifying_scan", _backward,
                                setup_context=_setup_context)
