"""Token-by-token DGD linear memory (DESIGN §3.1): the slow, obviously-correct truth."""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def _round(t: torch.Tensor, emulate: Optional[torch.dtype]) -> torch.Tensor:
    return t if emulate is None else t.to(emulate).to(torch.float32)


def dgd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
        g: Optional[torch.Tensor] = None, erase: Optional[torch.Tensor] = None,
        scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
        output_final_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None,
        read: str = "after", emulate: Optional[torch.dtype] = None
        ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The recurrence, one token at a time, per sequence and value head:

        S_t = exp(g_t) S_{t-1} − a_t k_t (k_tᵀ S_{t-1}) + beta_t k_t v_tᵀ,  a = erase or beta
        o_t = scale · S_tᵀ q_t  (read="after")   or   scale · S_{t-1}ᵀ q_t  (read="before")

    q, k `[B, T, H, K]`; v `[B, T, HV, V]` (HV a multiple of H: value head j reads q/k head
    j // (HV // H)); beta, g, erase `[B, T, HV]`; initial_state `[N, HV, K, V]`.
    emulate=None computes in the inputs' promoted dtype (pass float64 for the truth);
    emulate=<bf16|fp16> rounds every product's operands (the fp32 state included, and the
    write vector w_t = beta_t v_t − a_t S_{t-1}ᵀ k_t of the rank-1 update k_t w_tᵀ) to that
    dtype with fp32 accumulation, as the kernels' precision contract says.
    Returns (o in v's dtype, final state `[N, HV, K, V]` or None). Differentiable.
    """
    if read not in ("after", "before"):
        raise ValueError(f"read must be 'after' or 'before', got {read!r}")
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    group = HV // H
    work = torch.float32 if emulate is not None else torch.promote_types(q.dtype, torch.float32)
    scale = K ** -0.5 if scale is None else scale
    if cu_seqlens is None:
        bounds = [(b, 0, T) for b in range(B)]
    else:
        cs = [int(x) for x in cu_seqlens.tolist()]
        bounds = [(0, cs[i], cs[i + 1]) for i in range(len(cs) - 1)]
    qf, kf, vf, bf = (t.to(work) for t in (q, k, v, beta))
    gf = None if g is None else g.to(work)
    af = bf if erase is None else erase.to(work)
    outs = []
    finals = []
    for n, (b, t0, t1) in enumerate(bounds):
        if initial_state is None:
            S = torch.zeros(HV, K, V, dtype=work, device=q.device)
        else:
            S = initial_state[n].to(work)
        o_seq = []
        for t in range(t0, t1):
            qt = qf[b, t].repeat_interleave(group, 0)      # [HV, K]
            kt = kf[b, t].repeat_interleave(group, 0)
            vt = vf[b, t]                                   # [HV, V]
            before = scale * torch.einsum("hk,hkv->hv", _round(qt, emulate), _round(S, emulate))
            kS = torch.einsum("hk,hkv->hv", _round(kt, emulate), _round(S, emulate))
            decay = torch.ones(HV, dtype=work, device=q.device) if gf is None else gf[b, t].exp()
            # the rank-1 write k_t w_tᵀ with w_t = beta_t v_t − a_t S_{t-1}ᵀ k_t (its operands
            # are rounded under emulation, like any product's)
            w = bf[b, t][:, None] * vt - af[b, t][:, None] * kS
            S = decay[:, None, None] * S + kt[:, :, None] * _round(w, emulate)[:, None, :]
            if read == "before":
                o_seq.append(before)
            else:
                o_seq.append(scale * torch.einsum("hk,hkv->hv", _round(qt, emulate),
                                                  _round(S, emulate)))
        outs.append(torch.stack(o_seq) if o_seq else vf.new_zeros(0, HV, V))
        finals.append(S)
    if cu_seqlens is None:
        o = torch.stack(outs)
    else:
        o = torch.cat(outs)[None]
    final = torch.stack(finals) if output_final_state else None
    out_dtype = v.dtype
    return o.to(out_dtype), final


def dgd_naive_chunk(q, k, v, beta, g=None, erase=None, scale=None, initial_state=None,
                    chunk_size: int = 64, read: str = "after"):
    """A pure-PyTorch chunked DGD (the chunk form of DESIGN §3.1 with a Python loop over
    chunks and a batched triangular solve): the fastest plain-PyTorch baseline for benches.
    Fixed-length batches only; returns (o, final_state)."""
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    group = HV // H
    scale = K ** -0.5 if scale is None else scale
    work = torch.promote_types(q.dtype, torch.float32)
    tr = lambda x: x.to(work).transpose(1, 2)  # noqa: E731  [B, H, T, D]
    qh, kh = tr(q).repeat_interleave(group, 1), tr(k).repeat_interleave(group, 1)
    vh, bh = tr(v), beta.to(work).transpose(1, 2)
    ah = bh if erase is None else erase.to(work).transpose(1, 2)
    gh = torch.zeros_like(bh) if g is None else g.to(work).transpose(1, 2)
    S = (torch.zeros(B, HV, K, V, dtype=work, device=q.device) if initial_state is None
         else initial_state.to(work).clone())
    o = torch.empty(B, HV, T, V, dtype=work, device=q.device)
    for c0 in range(0, T, chunk_size):
        c1 = min(T, c0 + chunk_size)
        Q, Kc, Vc = qh[:, :, c0:c1], kh[:, :, c0:c1], vh[:, :, c0:c1]
        be, a, gg = bh[:, :, c0:c1], ah[:, :, c0:c1], gh[:, :, c0:c1]
        Gc = gg.cumsum(-1)
        Gp = Gc - gg
        C = c1 - c0
        strict = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)
        incl = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        gamma = (Gp[..., :, None] - Gc[..., None, :]).masked_fill(~strict, float("-inf")).exp()
        L = a[..., :, None] * gamma * (Kc @ Kc.mT)
        eye = torch.eye(C, dtype=work, device=q.device)
        U = be[..., None] * Vc - (a * Gp.exp())[..., None] * (Kc @ S)
        W = torch.linalg.solve_triangular(eye + L, U, upper=False, unitriangular=True)
        if read == "after":
            M = (Gc[..., :, None] - Gc[..., None, :]).masked_fill(~incl, float("-inf")).exp()
            Dq = Gc.exp()
        else:
            M, Dq = gamma, Gp.exp()
        o[:, :, c0:c1] = scale * (Dq[..., None] * (Q @ S) + (M * (Q @ Kc.mT)) @ W)
        d = (Gc[..., -1:] - Gc).exp()
        S = Gc[..., -1, None, None].exp() * S + Kc.mT @ (d[..., None] * W)
    return o.transpose(1, 2).to(v.dtype), S
