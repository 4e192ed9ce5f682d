"""Models assembled from the nlcore ops."""
from .hope import HopeCache, HopeConfig, HopeForCausalLM, HopeModel, HopeOutput

__all__ = ["HopeCache", "HopeConfig", "HopeForCausalLM", "HopeModel", "HopeOutput"]
