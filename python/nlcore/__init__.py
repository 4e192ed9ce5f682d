"""nlcore: CUDA kernels and PyTorch ops for Nested Learning (DGD, CMS, Hope, M3)."""
import torch  # noqa: F401  (loads libtorch before our extension, which links against it)

from . import _C  # noqa: F401  (registers torch.ops.nlcore.*)
from . import ops, reference
from ._state import MLPMemoryState
from . import optim
from . import nn
from . import models

__version__ = "0.1.0"

__all__ = ["MLPMemoryState", "models", "nn", "ops", "optim", "reference", "cuda_kernels_available"]


def cuda_kernels_available() -> bool:
    """True when this build registered CUDA kernels for the nlcore ops."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("nlcore::newton_schulz", "CUDA")
