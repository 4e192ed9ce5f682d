"""Self-modifying memories (DESIGN §3.3) in plain PyTorch, chunk by chunk: Hope's four coupled
MLP memories M_k, M_v, M_η, M_α that produce the keys, values, learning rates and retention
gates they are themselves trained with. The truth the kernels are checked against
(float64-capable, `emulate=` for the low-precision contract); backward by autograd."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .._state import MLPMemoryState
from .memory_mlp import _Mem, accumulate, check_flags, chunk_bounds, inner_gradient

MEMORIES = ("k", "v", "eta", "alpha")
NORM_EPS = 1e-12  # k = r / sqrt(‖r‖² + ε)


def derive(r: torch.Tensor, w_eta, w_alpha, b_eta, b_alpha, eta_max: float):
    """k, v, eta, g from the four reads r `[R, 4, H, len, D]` (DESIGN §3.3)."""
    rk, rv, re, ra = r.unbind(1)
    k = rk * torch.rsqrt((rk * rk).sum(-1, keepdim=True) + NORM_EPS)
    a = (re * w_eta[:, None, :]).sum(-1) + b_eta[:, None]
    b = (ra * w_alpha[:, None, :]).sum(-1) + b_alpha[:, None]
    return k, rv, eta_max * torch.sigmoid(a), F.logsigmoid(b)


def scan_rows(X, st: Sequence[torch.Tensor], n0: int, chunk_size: int, w_eta, w_alpha, b_eta,
              b_alpha, eta_max: float, momentum: float, activation: str, dgd_erase: bool,
              emulate: Optional[torch.dtype], detach_target: bool = False,
              frozen: bool = False):
    """Rows sharing one chunk grid: X `[R, H, T, D]`; st = (w1 `[R, 4, H, F, D]`, w2, p1, p2,
    a1, a2, ag `[R, 1, H]`). detach_target / frozen (tests only): detach the self-generated
    targets / never apply the updates. Returns (k, v, eta, g over `[R, H, T(, D)]`, state, n)."""
    st = tuple(st)
    outs: List[Tuple[torch.Tensor, ...]] = []
    n = n0
    for s, e in chunk_bounds(X.shape[2], n0, chunk_size):
        mem = _Mem(st[0], st[1], activation, True, emulate)
        r = mem(X[:, None, :, s:e])                               # the four reads, [R, 4, H, len, D]
        k, v, eta, g = derive(r, w_eta, w_alpha, b_eta, b_alpha, eta_max)
        outs.append((k, v, eta, g))
        target = mem(v[:, None])                                  # each memory's own target
        if detach_target:
            target = target.detach()
        G1, G2 = inner_gradient(mem, k[:, None], target, eta[:, None, ..., None], "l2",
                                dgd_erase)
        n_new = n + e - s
        if frozen:
            n = n_new % chunk_size
            continue
        st, n = accumulate(st, G1, G2, g.sum(-1)[:, None], n_new, chunk_size, momentum)
    if not outs:
        z = X.new_zeros(X.shape)
        return z, z, z[..., 0], z[..., 0], st, n
    k, v, eta, g = (torch.cat(t, 2) for t in zip(*outs))
    return k, v, eta, g, st, n


def self_modifying_scan(x: torch.Tensor, w_in: Optional[torch.Tensor],
                        w_out: Optional[torch.Tensor], w_eta: torch.Tensor,
                        w_alpha: torch.Tensor, chunk_size: int, eta_max: float = 1.0,
                        b_eta: Optional[torch.Tensor] = None,
                        b_alpha: Optional[torch.Tensor] = None, momentum: float = 0.0,
                        activation: str = "silu", dgd_erase: bool = True,
                        initial_state: Optional[Sequence[torch.Tensor]] = None,
                        output_final_state: bool = False,
                        cu_seqlens: Optional[torch.Tensor] = None,
                        emulate: Optional[torch.dtype] = None, detach_target: bool = False,
                        frozen: bool = False):
    """DESIGN §3.3, chunk by chunk (see `nlcore.ops.self_modifying_scan` for the arguments).
    emulate=None computes in the inputs' promoted dtype (float64 inputs give the truth);
    emulate=<bf16|fp16> rounds every GEMM operand to that dtype and accumulates in fp32.
    detach_target / frozen are for tests: detach the self-generated targets / freeze the
    memories between chunks. Returns (k, v, eta, g, MLPMemoryState | None)."""
    check_flags(chunk_size, activation, "l2", where="self_modifying_scan")
    B, T, Hh, D = x.shape
    if initial_state is not None:
        w_in, w_out = initial_state[0], initial_state[1]
    f64 = torch.float64 in (x.dtype, w_in.dtype)
    work = torch.float64 if f64 else torch.float32
    if emulate is not None and not f64:
        emulate = emulate if emulate in (torch.bfloat16, torch.float16) else None
    if cu_seqlens is None:
        bounds = [(b, 0, T) for b in range(B)]
    else:
        cs = [int(c) for c in cu_seqlens.tolist()]
        bounds = [(0, cs[i], cs[i + 1]) for i in range(len(cs) - 1)]
    N = len(bounds)
    Fh = w_in.shape[-2]
    dev = x.device

    def mem_first(t):  # public [4, N, H, ...] -> internal [N, 4, H, ...]
        return t.to(work).transpose(0, 1)

    if initial_state is not None:
        st = [mem_first(t) for t in initial_state[:6]]
        st.append(initial_state[6].to(work)[:, None])             # acc_g [N, 1, H]
        n_list = [int(c) for c in initial_state[7].tolist()]
    else:
        shared = w_in.dim() == 4
        w1 = w_in.to(work).unsqueeze(0).expand(N, 4, Hh, Fh, D) if shared else mem_first(w_in)
        w2 = w_out.to(work).unsqueeze(0).expand(N, 4, Hh, D, Fh) if shared else mem_first(w_out)
        z1 = torch.zeros(N, 4, Hh, Fh, D, dtype=work, device=dev)
        z2 = torch.zeros(N, 4, Hh, D, Fh, dtype=work, device=dev)
        st = [w1, w2, z1, z2, z1, z2, torch.zeros(N, 1, Hh, dtype=work, device=dev)]
        n_list = [0] * N
    zeros_h = torch.zeros(Hh, dtype=work, device=dev)
    gates = dict(w_eta=w_eta.to(work), w_alpha=w_alpha.to(work),
                 b_eta=zeros_h if b_eta is None else b_eta.to(work),
                 b_alpha=zeros_h if b_alpha is None else b_alpha.to(work))
    flags = dict(eta_max=float(eta_max), momentum=momentum, activation=activation,
                 dgd_erase=dgd_erase, emulate=emulate, detach_target=detach_target,
                 frozen=frozen)
    if cu_seqlens is None and len(set(n_list)) <= 1:
        groups = [(list(range(B)), 0, T)]
    else:
        groups = [([i], t0, t1) for i, (_, t0, t1) in enumerate(bounds)]
    parts: List[List[torch.Tensor]] = [[], [], [], []]
    finals: List = [None] * N
    n_out = [0] * N
    for rows, t0, t1 in groups:
        b_rows = [bounds[i][0] for i in rows]
        X = x[b_rows, t0:t1].to(work).transpose(1, 2)             # [R, H, len, D]
        *seq, fin, n_end = scan_rows(X, [s_[rows] for s_ in st], n_list[rows[0]], chunk_size,
                                     **gates, **flags)
        for j, t in enumerate(seq):
            parts[j].append(t.transpose(1, 2))
        for j, i in enumerate(rows):
            finals[i] = [f[j] for f in fin]
            n_out[i] = n_end
    cat_dim = 1 if cu_seqlens is not None else 0
    k, v, eta, g = (torch.cat(p, cat_dim) for p in parts)
    k, v = k.to(x.dtype), v.to(x.dtype)
    if not output_final_state:
        return k, v, eta, g, None
    state = [torch.stack([finals[i][j] for i in range(N)]).transpose(0, 1) for j in range(6)]
    state.append(torch.stack([finals[i][6][0] for i in range(N)]))  # acc_g [N, H]
    state.append(torch.tensor(n_out, dtype=torch.int64, device=dev))
    return k, v, eta, g, MLPMemoryState(*state)
