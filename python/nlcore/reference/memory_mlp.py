"""MLP memory scan (DESIGN §3.2) in plain PyTorch, chunk by chunk: the truth the kernels are
checked against (float64-capable, `emulate=` for the low-precision contract), and the eager
baseline of the benchmarks. Backward by autograd, through the inner gradient."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch

from .._state import MLPMemoryState

ACTIVATIONS = ("silu", "gelu")
OBJECTIVES = ("l2", "dot")


def activation_and_slope(z: torch.Tensor, activation: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """σ(z) and σ'(z) for "silu" and exact (erf) "gelu", as differentiable expressions."""
    if activation == "silu":
        s = torch.sigmoid(z)
        return z * s, s * (1 + z * (1 - s))
    if activation == "gelu":
        cdf = 0.5 * (1 + torch.erf(z * (1 / math.sqrt(2))))
        pdf = torch.exp(-0.5 * z * z) * (1 / math.sqrt(2 * math.pi))
        return z * cdf, cdf + z * pdf
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def check_flags(chunk_size, activation: str, objective: str, where: str = "memory_mlp_scan"):
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{where}: chunk_size must be an int >= 1, got {chunk_size!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{where}: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"{where}: objective must be one of {OBJECTIVES}, got {objective!r}")


class _Mem:
    """One 2-layer MLP memory over rows [R, H, ...] at fixed weights."""

    def __init__(self, w1, w2, activation, residual, emulate):
        self.w1, self.w2 = w1, w2
        self.activation, self.residual, self.emulate = activation, residual, emulate

    def mm(self, a, b):
        if self.emulate is not None:
            a = a.to(self.emulate).to(torch.float32)
            b = b.to(self.emulate).to(torch.float32)
        return a @ b

    def pre(self, u):  # z = u W1ᵀ
        return self.mm(u, self.w1.transpose(-1, -2))

    def out(self, u, h):  # [u +] h W2ᵀ
        y = self.mm(h, self.w2.transpose(-1, -2))
        return u + y if self.residual else y

    def __call__(self, u):
        h, _ = activation_and_slope(self.pre(u), self.activation)
        return self.out(u, h)


def inner_gradient(mem: "_Mem", K, target, eta, objective: str, dgd_erase: bool):
    """The chunk's inner gradient (G1, G2) at fixed weights: keys K, targets, rates eta
    (broadcastable `[..., len, 1]`)."""
    Z = mem.pre(K)
    H, dH = activation_and_slope(Z, mem.activation)
    E = mem.out(K, H) - target if objective == "l2" else -target
    Eeta = eta * E
    Q1 = dH * mem.mm(Eeta, mem.w2)
    if dgd_erase:                                                # W1 Kᵀ diag(η) K = (ηZ)ᵀ K
        Q1 = Q1 + eta * Z
    return mem.mm(Q1.transpose(-1, -2), K), mem.mm(Eeta.transpose(-1, -2), H)


def accumulate(st, G1, G2, gsum, n: int, chunk_size: int, momentum: float):
    """Adds a chunk's (G1, G2, Σg) to the open-chunk sums of st = (w1, w2, p1, p2, a1, a2, ag)
    and applies the update when the chunk completes (n = its tokens so far, after this part).
    Returns (state, n)."""
    w1, w2, p1, p2, a1, a2, ag = st
    a1, a2, ag = a1 + G1, a2 + G2, ag + gsum
    if n == chunk_size:                                          # the chunk completes
        alpha = ag.exp()[..., None, None]
        p1 = momentum * p1 - a1
        p2 = momentum * p2 - a2
        w1 = alpha * w1 + p1
        w2 = alpha * w2 + p2
        a1, a2, ag = torch.zeros_like(a1), torch.zeros_like(a2), torch.zeros_like(ag)
        n = 0
    return (w1, w2, p1, p2, a1, a2, ag), n


def chunk_bounds(T: int, n0: int, chunk_size: int):
    """(start, end) of the chunk pieces of T tokens when n0 tokens of a chunk came before."""
    s, n = 0, n0
    while s < T:
        e = min(T, s + chunk_size - n)
        yield s, e
        n = (n + e - s) % chunk_size
        s = e


def scan_rows(X, K, V, ETA, Gs, st: Sequence[torch.Tensor], n0: int, chunk_size: int,
              momentum: float, activation: str, residual: bool, objective: str,
              self_target: bool, dgd_erase: bool, emulate: Optional[torch.dtype],
              first_order: bool = False):
    """Rows that share one chunk grid: X, K, V `[R, H, T, D]`, ETA, Gs `[R, H, T]` in the work
    dtype; st = (w1, w2, p1, p2, a1, a2, ag) with a leading R; n0 = tokens of the open chunk
    carried in. first_order=True detaches the inner gradient G (the first-order approximation;
    the tests use it to show the second-order terms matter). Returns (Y `[R, H, T, D]`, state
    tuple, n)."""
    st = tuple(st)
    ys: List[torch.Tensor] = []
    n = n0
    for s, e in chunk_bounds(X.shape[2], n0, chunk_size):
        mem = _Mem(st[0], st[1], activation, residual, emulate)
        Xc, Kc, Vc = X[:, :, s:e], K[:, :, s:e], V[:, :, s:e]
        ys.append(mem(Xc))                                       # read at the anchor
        target = mem(Vc) if self_target else Vc
        G1, G2 = inner_gradient(mem, Kc, target, ETA[:, :, s:e].unsqueeze(-1), objective,
                                dgd_erase)
        if first_order:
            G1, G2 = G1.detach(), G2.detach()
        st, n = accumulate(st, G1, G2, Gs[:, :, s:e].sum(-1), n + e - s, chunk_size, momentum)
    Y = torch.cat(ys, 2) if ys else X.new_zeros(X.shape)
    return Y, st, n


def memory_mlp_scan(x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eta: torch.Tensor,
                    w_in: Optional[torch.Tensor], w_out: Optional[torch.Tensor], chunk_size: int,
                    g: Optional[torch.Tensor] = None, momentum: float = 0.0,
                    activation: str = "silu", residual: bool = True, objective: str = "l2",
                    self_target: bool = False, dgd_erase: bool = True,
                    initial_state: Optional[Sequence[torch.Tensor]] = None,
                    output_final_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None,
                    emulate: Optional[torch.dtype] = None, first_order: bool = False
                    ) -> Tuple[torch.Tensor, Optional[MLPMemoryState]]:
    """DESIGN §3.2, chunk by chunk (see `nlcore.ops.memory_mlp_scan` for the arguments).
    emulate=None computes in the inputs' promoted dtype (float64 inputs give the truth);
    emulate=<bf16|fp16> rounds every GEMM operand (weights included) to that dtype and
    accumulates in fp32, the kernels' precision contract. Differentiable (first_order=True:
    with the inner gradient detached, for tests only)."""
    check_flags(chunk_size, activation, objective)
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
    F = w_in.shape[-2]
    dev = x.device
    if initial_state is not None:
        st = [t.to(work) for t in initial_state[:7]]
        n_list = [int(c) for c in initial_state[7].tolist()]
    else:
        st = [w_in.to(work).expand(N, Hh, F, D), w_out.to(work).expand(N, Hh, D, F)]
        st += [torch.zeros(N, Hh, F, D, dtype=work, device=dev),
               torch.zeros(N, Hh, D, F, dtype=work, device=dev)] * 2
        st += [torch.zeros(N, Hh, dtype=work, device=dev)]
        n_list = [0] * N

    def heads(t):  # [R, T', H(, D)] -> [R, H, T'(, D)]
        return t.to(work).transpose(1, 2)

    gz = torch.zeros_like(eta) if g is None else g
    flags = dict(momentum=momentum, activation=activation, residual=residual,
                 objective=objective, self_target=self_target, dgd_erase=dgd_erase,
                 emulate=emulate, first_order=first_order)
    # One batched pass when every row shares the chunk grid, else one sequence at a time.
    if cu_seqlens is None and len(set(n_list)) <= 1:
        groups = [(list(range(B)), 0, T)]
    else:
        groups = [([i], t0, t1) for i, (_, t0, t1) in enumerate(bounds)]
    y_parts, finals = [], [None] * N
    n_out = [0] * N
    for rows, t0, t1 in groups:
        b_rows = [bounds[i][0] for i in rows]
        sl = lambda t: heads(t[b_rows, t0:t1])  # noqa: E731
        Y, fin, n_end = scan_rows(sl(x), sl(k), sl(v), sl(eta), sl(gz),
                                  [s_[rows] for s_ in st], n_list[rows[0]], chunk_size, **flags)
        y_parts.append(Y.transpose(1, 2))
        for j, i in enumerate(rows):
            finals[i] = [f[j] for f in fin]
            n_out[i] = n_end
    y = torch.cat(y_parts, 1 if cu_seqlens is not None else 0).to(x.dtype)
    if not output_final_state:
        return y, None
    state = [torch.stack([finals[i][j] for i in range(N)]) for j in range(7)]
    state.append(torch.tensor(n_out, dtype=torch.int64, device=dev))
    return y, MLPMemoryState(*state)
