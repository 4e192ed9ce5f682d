"""`nlcore.ops.dgd` and `nlcore.ops.gated_delta_rule`: the DGD linear memory (DESIGN §3.1)."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

# Tokens per chunk of the chunk-parallel algorithm. An implementation detail: results do not
# depend on it beyond rounding (tests change it to prove that).
CHUNK_SIZE = 64


def _check_tensor(x, name, optional=False):
    if x is None and optional:
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"dgd: {name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point() and name != "cu_seqlens":
        raise TypeError(f"dgd: {name} must be a floating tensor, got {x.dtype}")


def dgd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
        g: Optional[torch.Tensor] = None, erase: Optional[torch.Tensor] = None,
        scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
        output_final_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None,
        read: str = "after") -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The DGD fast-weight memory, per sequence and value head (DESIGN §3.1):

        S_t = exp(g_t) S_{t-1} − a_t k_t (k_tᵀ S_{t-1}) + beta_t k_t v_tᵀ     (a = erase or beta)
        o_t = scale · S_tᵀ q_t   (read="after", fla's convention)
        o_t = scale · S_{t-1}ᵀ q_t  (read="before", the paper's y_t = M_{t-1}(q_t))

    Args:
        q, k: `[B, T, H, K]`. v: `[B, T, HV, V]`, HV a multiple of H (GVA: value head j reads
            q/k head j // (HV // H)). q, k, v share one dtype (float32/bfloat16/float16;
            float64 on CPU).
        beta: `[B, T, HV]` write strength. g: `[B, T, HV]` log-retention (≤ 0 expected), default 0.
        erase: `[B, T, HV]` erase strength, default beta (DeltaNet); exp(g)·beta gives fla's
            gated delta rule.
        scale: default K ** -0.5. initial_state: `[N, HV, K, V]` (N = B, or the number of
            sequences with cu_seqlens). output_final_state: also return the final state.
        cu_seqlens: `[N + 1]` int32/int64 offsets of packed sequences (B must be 1).
        read: "after" or "before".

    Returns:
        (o `[B, T, HV, V]` in v's dtype, final state `[N, HV, K, V]` float32 (float64 for
        float64 inputs) or None). Differentiable in q, k, v, beta, g, erase and initial_state;
        the final state may itself receive a gradient (chained chunks of a long sequence).
    """
    for x, name, opt in ((q, "q", False), (k, "k", False), (v, "v", False), (beta, "beta", False),
                         (g, "g", True), (erase, "erase", True),
                         (initial_state, "initial_state", True)):
        _check_tensor(x, name, opt)
    if cu_seqlens is not None and (not isinstance(cu_seqlens, torch.Tensor)
                                   or cu_seqlens.dtype not in (torch.int32, torch.int64)):
        raise TypeError(f"dgd: cu_seqlens must be an int32/int64 tensor, got "
                        f"{getattr(cu_seqlens, 'dtype', type(cu_seqlens).__name__)}")
    if read not in ("after", "before"):
        raise ValueError(f"dgd: read must be 'after' or 'before', got {read!r}")
    if q.dim() != 4:
        raise ValueError(f"dgd: q must be [B, T, H, K], got shape {tuple(q.shape)}")
    dev = q.device.type
    if torch.is_autocast_enabled(dev):  # one sequence dtype under autocast (DESIGN §2)
        dt = torch.get_autocast_dtype(dev)
        q, k, v = q.to(dt), k.to(dt), v.to(dt)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"dgd: scale must be a finite number, got {scale!r}")
    o, final = torch.ops.nlcore.dgd(q, k, v, beta, g, erase, initial_state, cu_seqlens,
                                    float(scale), read == "before", CHUNK_SIZE)
    return o, (final if output_final_state else None)


def gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                     beta: torch.Tensor, scale: Optional[float] = None,
                     initial_state: Optional[torch.Tensor] = None,
                     output_final_state: bool = False,
                     cu_seqlens: Optional[torch.Tensor] = None,
                     use_qk_l2norm_in_kernel: bool = False
                     ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """flash-linear-attention's `chunk_gated_delta_rule` signature and semantics:
    S_t = exp(g_t) S_{t-1} + beta_t k_t (v_t − exp(g_t) S_{t-1}ᵀ k_t)ᵀ,  o_t = scale S_tᵀ q_t,
    i.e. `dgd` with erase = exp(g)·beta and read="after". Shapes as in `dgd`."""
    _check_tensor(g, "g")
    _check_tensor(beta, "beta")
    if use_qk_l2norm_in_kernel:
        q = _l2norm(q)
        k = _l2norm(k)
    if g.shape != beta.shape:
        raise ValueError(f"gated_delta_rule: g must have beta's shape {tuple(beta.shape)}, got "
                         f"{tuple(g.shape)}")
    erase = torch.exp(g) * beta
    return dgd(q, k, v, beta, g=g, erase=erase, scale=scale, initial_state=initial_state,
               output_final_state=output_final_state, cu_seqlens=cu_seqlens, read="after")


def _l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """fla's l2norm: x / sqrt(sum(x²) + eps), computed in fp32, returned in x's dtype."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.square().sum(-1, keepdim=True) + eps)).to(x.dtype)


@torch.library.register_fake("nlcore::dgd")
def _(q, k, v, beta, g, erase, initial_state, cu_seqlens, scale, read_before, chunk_size=64):
    n = q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    state_dtype = torch.float64 if torch.float64 in (q.dtype, v.dtype) else torch.float32
    o = torch.empty_like(v, memory_format=torch.contiguous_format)
    final = q.new_empty((n, v.shape[2], q.shape[3], v.shape[3]), dtype=state_dtype)
    return o, final


@torch.library.register_fake("nlcore::dgd_backward")
def _(q, k, v, beta, g, erase, initial_state, cu_seqlens, grad_o, grad_final_state, scale,
      read_before, chunk_size=64):
    def like(x):
        return q.new_empty((0,)) if x is None else torch.empty_like(
            x, memory_format=torch.contiguous_format)
    return (like(q), like(k), like(v), like(beta), like(g), like(erase), like(initial_state))


def _setup_context(ctx, inputs, output):
    q, k, v, beta, g, erase, initial_state, cu_seqlens, scale, read_before, chunk_size = inputs
    ctx.save_for_backward(q, k, v, beta, g, erase, initial_state, cu_seqlens)
    ctx.args = (scale, read_before, chunk_size)


def _backward(ctx, grad_o, grad_final):
    q, k, v, beta, g, erase, initial_state, cu_seqlens = ctx.saved_tensors
    scale, read_before, chunk_size = ctx.args
    if grad_o is None:
        grad_o = torch.zeros_like(v)
    dq, dk, dv, dbeta, dg, derase, dh0 = torch.ops.nlcore.dgd_backward(
        q, k, v, beta, g, erase, initial_state, cu_seqlens, grad_o, grad_final, scale,
        read_before, chunk_size)
    return (dq, dk, dv, dbeta, dg if g is not None else None,
            derase if erase is not None else None, dh0 if initial_state is not None else None,
            None, None, None, None)


torch.library.register_autograd("nlcore::dgd", _backward, setup_context=_setup_context)
