"""`nlcore.ops.newton_schulz`: batched Newton–Schulz orthogonalization (DESIGN §3.4)."""
from __future__ import annotations

import math

import torch

from .._coefficients import Coefficients, resolve

_COMPUTE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)

# Kernel selection for benchmarking the experimental CUDA forms (values of the C API's
# NLCORE_NS_FLAG_*); "auto" takes only paths a GPU run has proven.
_KERNELS = {"auto": 0, "small": 1, "general": 2, "symmetric": 4, "cluster": 8}


def _check(G, compute_dtype, eps, kernel):
    if not isinstance(G, torch.Tensor):
        raise TypeError(f"newton_schulz: G must be a torch.Tensor, got {type(G).__name__}")
    if G.dim() < 2:
        raise ValueError(f"newton_schulz: G must have at least 2 dims [..., m, n], got shape "
                         f"{tuple(G.shape)}")
    if G.shape[-2] < 1 or G.shape[-1] < 1:
        raise ValueError(f"newton_schulz: G's matrices must be non-empty (m, n >= 1), got shape "
                         f"{tuple(G.shape)}")
    if G.dtype not in _INPUT_DTYPES:
        raise TypeError(f"newton_schulz: G must be float32, bfloat16, float16 or float64, got "
                        f"{G.dtype}")
    if G.dtype == torch.float64 and G.device.type == "cuda":
        raise TypeError("newton_schulz: float64 is not supported on CUDA; use float32, "
                        "bfloat16 or float16")
    if compute_dtype not in _COMPUTE_DTYPES:
        raise TypeError(f"newton_schulz: compute_dtype must be torch.bfloat16, torch.float16 or "
                        f"torch.float32, got {compute_dtype!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) \
            or eps < 0:
        raise ValueError(f"newton_schulz: eps must be a finite number >= 0, got {eps!r}")
    if kernel not in _KERNELS:
        raise ValueError(f"newton_schulz: kernel must be one of {sorted(_KERNELS)}, got "
                         f"{kernel!r}")


def newton_schulz(G: torch.Tensor, steps: int = 5, coefficients: Coefficients = "muon",
                  eps: float = 1e-7, compute_dtype: torch.dtype = torch.bfloat16, *,
                  kernel: str = "auto") -> torch.Tensor:
    """Orthogonalize every matrix of G `[..., m, n]` by Newton–Schulz iteration.

    Per matrix: X = G in `compute_dtype`, transposed if m > n, normalized, then `steps`
    iterations `A = X Xᵀ; X ← a X + (b A + c A²) X`, transposed back; returned in G's dtype.

    Args:
        G: `[..., m, n]` float32 / bfloat16 / float16 (float64 on CPU, which computes in
            float64 whatever `compute_dtype` says). Leading dims are a batch.
        steps: number of iterations, an int >= 1.
        coefficients: "muon" (3.4445, -4.7750, 2.0315) every step; "polar_express"
            (Amsel et al. 2025, per-step, normalization ‖X‖·1.01 + eps); an (a, b, c)
            triple repeated every step; or a list of `steps` triples.
        eps: normalization epsilon.
        compute_dtype: GEMM operand dtype (bf16/fp16 round operands and accumulate in fp32;
            float32 is full fp32 arithmetic).
        kernel: CUDA kernel selection, for benchmarks: "auto" (default), "small",
            "general", "symmetric" or "cluster" (the last two experimental).

    Returns:
        Tensor of G's shape and dtype. Differentiable (backward through the iteration).
    """
    _check(G, compute_dtype, eps, kernel)
    triples, norm_scale, norm_additive = resolve(coefficients, steps)
    flat = [float(x) for t in triples for x in t]
    return torch.ops.nlcore.newton_schulz(G, flat, float(eps), float(norm_scale),
                                          bool(norm_additive), compute_dtype, _KERNELS[kernel])


@torch.library.register_fake("nlcore::newton_schulz")
def _(G, coefficients, eps, norm_scale, norm_additive, compute_dtype, flags=0):
    torch._check(G.dim() >= 2, lambda: "newton_schulz: G must have at least 2 dims")
    return torch.empty_like(G, memory_format=torch.contiguous_format)


@torch.library.register_fake("nlcore::newton_schulz_backward")
def _(grad, G, coefficients, eps, norm_scale, norm_additive, compute_dtype):
    return torch.empty_like(G, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    G, coefficients, eps, norm_scale, norm_additive, compute_dtype, _flags = inputs
    ctx.save_for_backward(G)
    ctx.args = (coefficients, eps, norm_scale, norm_additive, compute_dtype)


def _backward(ctx, grad):
    (G,) = ctx.saved_tensors
    dG = torch.ops.nlcore.newton_schulz_backward(grad, G, *ctx.args)
    return dG, None, None, None, None, None, None


torch.library.register_autograd("nlcore::newton_schulz", _backward, setup_context=_setup_context)
