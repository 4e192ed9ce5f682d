"""nlcore optimizers: M3 (Multi-scale Momentum Muon, DESIGN §4)."""
from .m3 import M3, adjusted_lr, m3_param_groups

__all__ = ["M3", "m3_param_groups", "adjusted_lr"]
