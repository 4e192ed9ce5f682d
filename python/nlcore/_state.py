"""State tuples carried between calls of the scan ops (DESIGN §3.2, §3.3)."""
from __future__ import annotations

from typing import NamedTuple

import torch


class MLPMemoryState(NamedTuple):
    """State of `memory_mlp_scan` (and, stacked, of `self_modifying_scan`), per sequence:

    w_in `[N, H, F, D]`, w_out `[N, H, D, F]`: the weights of the open chunk;
    p_in, p_out: momentum buffers (shapes of w_in, w_out);
    acc_in, acc_out: the inner gradient summed over the open chunk's tokens so far;
    acc_g `[N, H]`: its log-retention sum; n `[N]` int64: how many tokens it has seen (< C).
    Passing it back as `initial_state` continues the sequence exactly.
    """
    w_in: torch.Tensor
    w_out: torch.Tensor
    p_in: torch.Tensor
    p_out: torch.Tensor
    acc_in: torch.Tensor
    acc_out: torch.Tensor
    acc_g: torch.Tensor
    n: torch.Tensor
