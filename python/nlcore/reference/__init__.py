"""Slow, obviously-correct PyTorch implementations of every nlcore op (float64-capable)."""
from .dgd import dgd, dgd_naive_chunk
from .memory_mlp import memory_mlp_scan
from .newton_schulz import newton_schulz, newton_schulz_torch
from .self_modifying import self_modifying_scan

__all__ = ["dgd", "dgd_naive_chunk", "memory_mlp_scan", "newton_schulz", "newton_schulz_torch",
           "self_modifying_scan"]
