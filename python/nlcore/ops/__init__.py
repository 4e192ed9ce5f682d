"""nlcore ops: Python entry points of the custom torch ops (torch.ops.nlcore.*)."""
from . import m3 as _m3  # noqa: F401  (register_fake of the M3 ops)
from .dgd import dgd, gated_delta_rule
from .memory_mlp import memory_mlp_scan
from .newton_schulz import newton_schulz
from .self_modifying import self_modifying_scan

__all__ = ["dgd", "gated_delta_rule", "memory_mlp_scan", "newton_schulz",
           "self_modifying_scan"]
