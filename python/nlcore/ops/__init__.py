"""nlcore ops: Python entry points of the custom torch ops (torch.ops.nlcore.*)."""
from .newton_schulz import newton_schulz

__all__ = ["newton_schulz"]
