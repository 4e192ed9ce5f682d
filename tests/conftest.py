import os
import random

import pytest
import torch

# JAX grabs 75 % of a GPU's memory when its backend starts; under pytest-xdist (one GPU, several
# workers running torch CUDA tests) that would starve the others. Allocate on demand instead.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def seed():
    """Fresh random inputs per case; NLCORE_TEST_SEED fixes them. The seed is printed, so a
    failing case shows it in its captured output."""
    s = int(os.environ.get("NLCORE_TEST_SEED", random.randrange(2**31)))
    print(f"NLCORE_TEST_SEED={s}")
    torch.manual_seed(s)
    return s


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """‖x − ref‖ / ‖ref‖ in float64 (NaN anywhere gives inf)."""
    x = x.detach().to("cpu", torch.float64)
    ref = ref.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        return float("inf")
    return ((x - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def poison_cuda_cache(mb: int = 64) -> None:
    """Fill blocks of the CUDA caching allocator with NaNs and free them, so the next
    allocations (outputs, workspaces) start as NaN: an element a kernel never writes shows."""
    blocks = [torch.full((mb * 2**20 // 4,), float("nan"), device="cuda") for _ in range(4)]
    del blocks
