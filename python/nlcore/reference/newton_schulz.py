"""Slow, obviously-correct Newton–Schulz (DESIGN §3.4) and the eager torch baseline."""
from __future__ import annotations

from typing import Optional

import torch

from .._coefficients import Coefficients, resolve


def _to_matrices(G: torch.Tensor):
    m, n = G.shape[-2], G.shape[-1]
    X = G.reshape(-1, m, n)
    transposed = m > n
    if transposed:
        X = X.mT
    return X, transposed


def newton_schulz(G: torch.Tensor, steps: int = 5, coefficients: Coefficients = "muon",
                  eps: float = 1e-7, emulate: Optional[torch.dtype] = None) -> torch.Tensor:
    """Reference NS on `G` [..., m, n], differentiable with plain autograd.

    emulate=None computes in G's dtype (pass float64 for the truth). emulate=<bf16|fp16>
    follows the precision contract of DESIGN §2 exactly: every GEMM operand rounded to that
    dtype, fp32 accumulation, fp32 combinations, X/A/B rounded when stored (the rounding is
    straight-through for autograd). Returns G's dtype.
    """
    triples, scale, additive = resolve(coefficients, steps)
    X, transposed = _to_matrices(G)
    if emulate is None:
        work = G.dtype
        rnd = lambda t: t  # noqa: E731
    else:
        work = torch.float32
        rnd = lambda t: t.to(emulate).to(work)  # noqa: E731
    X = X.to(work)
    norm = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)
    denom = norm * scale + eps if additive else torch.clamp(norm * scale, min=eps)
    X = rnd(X / denom)
    for a, b, c in triples:
        A = rnd(X @ X.mT)
        B = rnd(b * A + c * (A @ A))
        X = rnd(a * X + B @ X)
    if transposed:
        X = X.mT
    return X.reshape(G.shape).to(G.dtype)


def newton_schulz_torch(G: torch.Tensor, steps: int = 5, coefficients: Coefficients = "muon",
                        eps: float = 1e-7, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """The practical eager baseline: torch.optim.Muon's `_zeropower_via_newtonschulz`
    written for a batch (storage in `dtype`, bmm/baddbmm), the thing users run today."""
    triples, scale, additive = resolve(coefficients, steps)
    X, transposed = _to_matrices(G)
    X = X.to(dtype)
    norm = X.norm(dim=(-2, -1), keepdim=True)
    X = X / (norm * scale + eps if additive else (norm * scale).clamp(min=eps))
    for a, b, c in triples:
        A = torch.bmm(X, X.mT)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, B, X, beta=a)
    if transposed:
        X = X.mT
    return X.reshape(G.shape).to(G.dtype)
