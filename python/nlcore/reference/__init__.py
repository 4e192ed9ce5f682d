"""Slow, obviously-correct PyTorch implementations of every nlcore op (float64-capable)."""
from .newton_schulz import newton_schulz, newton_schulz_torch

__all__ = ["newton_schulz", "newton_schulz_torch"]
