"""Slow, obviously-correct PyTorch implementations of every nlcore op (float64-capable)."""
from .dgd import dgd, dgd_naive_chunk
from .newton_schulz import newton_schulz, newton_schulz_torch

__all__ = ["dgd", "dgd_naive_chunk", "newton_schulz", "newton_schulz_torch"]
