"""`nlcore.ops.m3`: the fused elementwise step of `nlcore.optim.M3`'s muon variant (DESIGN §4).

Two in-place multi-tensor ops (CPU: ATen per tensor; CUDA: one multi-tensor kernel launch per
chunk of tensors, nlcore/m3.h). Each list holds one tensor per parameter; the tensors with the
same index share shape, dtype and device (contiguous on CUDA). Arithmetic is fp32 with one
rounding per result.

* ``torch.ops.nlcore.m3_muon_pre_(momentum, slow_sum, fast, grads, beta1, nesterov)``::

      M1 ← lerp(M1, g, 1−β1);  S ← S + g;  fast ← lerp(g, M1, β1) if nesterov else M1

* ``torch.ops.nlcore.m3_muon_post_(params, updates, slow_update, lr, decay, alpha)``::

      θ ← θ·decay;  θ ← θ − lr[i]·(U + α·O2)
"""
from __future__ import annotations

import torch

__all__: list = []


@torch.library.register_fake("nlcore::m3_muon_pre_")
def _(momentum, slow_sum, fast, grads, beta1, nesterov):
    torch._check(len(momentum) == len(slow_sum) == len(fast) == len(grads),
                 lambda: "m3_muon_pre_: the lists must have equal lengths")
    return None


@torch.library.register_fake("nlcore::m3_muon_post_")
def _(params, updates, slow_update, lr, decay, alpha):
    torch._check(len(params) == len(updates) == len(slow_update) == len(lr),
                 lambda: "m3_muon_post_: the lists must have equal lengths")
    return None
