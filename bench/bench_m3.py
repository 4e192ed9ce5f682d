"""Benchmark: one M3 optimizer step (issue 6) on transformer-shaped parameters.

Problems: L layers of width d, each with qkv [3d, d], out [d, d], mlp [4d, d] and [d, 4d]
and two norm weights [d]. CUDA (and --full): d = 768 and d = 2048, 12 layers; the CPU
default: d = 768, 1 layer; --quick: d = 64, 2 layers.

One timed call is `slow_every` (f) optimizer steps, so that the slow-momentum step is
included once: `ms` / f is the average step time (params["steps_per_call"] = f). The
gradients are fixed random tensors set once. peak_mb (CUDA) is the memory one call
allocates above the live parameters, gradients and state.

Impls (the reference is the plain way, so rel_err compares nlcore's M3 with it):
    m3_plain     M3 written the plain way: a Python loop over parameters, one NS call and
                 per-tensor elementwise ops each (written here), AdamW (torch) for the norms
    nlcore       nlcore.optim.M3 (batched NS per shape, foreach elementwise)
    torch_muon   torch.optim.Muon on the matrices + torch.optim.AdamW on the norms
    torch_adamw  torch.optim.AdamW on everything (fused on CUDA)
"""
from __future__ import annotations

import math
import sys
from typing import List, Tuple

import torch

from bench.common import Config, Task

NAME = "m3"
REF = "m3_plain"
LR, BETAS, ALPHA = 0.02, (0.95, 0.999, 0.95), 1.0


def problems(cfg: Config) -> List[Tuple[int, int, int]]:
    """(layers, d, slow_every)."""
    if cfg.shapes:
        return [(int(s[0]), int(s[1]), int(s[2]) if len(s) > 2 else 8) for s in cfg.shapes]
    if cfg.quick:
        return [(2, 64, 2)]
    if cfg.is_cuda or cfg.full:
        return [(12, 768, 8), (12, 2048, 8)]
    return [(1, 768, 4)]


def layer_shapes(d: int) -> List[Tuple[int, ...]]:
    return [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d), (d,), (d,)]


def ns_flops(m: int, n: int, steps: int = 5) -> float:
    a, b = min(m, n), max(m, n)
    # per iteration: A = X Xᵀ (2a²b), A² (2a³), (bA + cA²) X (2a²b)
    return steps * (4 * a * a * b + 2 * a ** 3)


def _make_params(cfg: Config, layers: int, d: int):
    gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed + 1000 * layers + d)
    params, grads = [], []
    for _ in range(layers):
        for s in layer_shapes(d):
            scale = 1.0 / math.sqrt(s[-1]) if len(s) == 2 else 1.0
            p = torch.randn(s, device=cfg.device, generator=gen) * scale
            params.append(torch.nn.Parameter(p))
            grads.append(torch.randn(s, device=cfg.device, generator=gen) * 1e-2)
    for p, g in zip(params, grads):
        p.grad = g
    return params


class PlainM3:
    """M3 (muon variant) the plain way: per-parameter NS and per-tensor elementwise ops."""

    def __init__(self, params, lr=LR, betas=BETAS, alpha=ALPHA, slow_every=8):
        from nlcore.ops import newton_schulz
        self.ns = newton_schulz
        self.mats = [p for p in params if p.ndim >= 2]
        others = [p for p in params if p.ndim < 2]
        self.adamw = torch.optim.AdamW(others, lr=lr) if others else None
        self.lr, self.betas, self.alpha, self.f = lr, betas, alpha, slow_every
        self.t = 0
        self.state = {p: dict(m1=torch.zeros_like(p), m2=torch.zeros_like(p),
                              s=torch.zeros_like(p), o2=torch.zeros_like(p))
                      for p in self.mats}

    @torch.no_grad()
    def step(self):
        self.t += 1
        b1, _, b3 = self.betas
        due = self.t % self.f == 0
        for p in self.mats:
            st, g = self.state[p], p.grad
            st["m1"].lerp_(g, 1 - b1)
            u = g.lerp(st["m1"], b1)
            st["s"].add_(g)
            o1 = self.ns(u.reshape(p.shape[0], -1), 5, "muon", 1e-7,
                         compute_dtype=torch.bfloat16).view_as(p)
            a = self.lr * math.sqrt(max(1, p.shape[0] / (p.numel() // p.shape[0])))
            p.add_(o1.add_(st["o2"], alpha=self.alpha), alpha=-a)
            if due:
                st["m2"].lerp_(st["s"], 1 - b3)
                st["s"].zero_()
                st["o2"].copy_(self.ns(st["m2"].reshape(p.shape[0], -1), 5, "muon", 1e-7,
                                       compute_dtype=torch.bfloat16).view_as(p))
        if self.adamw is not None:
            self.adamw.step()


class _Both:
    def __init__(self, *opts):
        self.opts = opts

    def step(self):
        for o in self.opts:
            o.step()


def _optimizer(impl: str, params, f: int, cuda: bool):
    from nlcore.optim import M3
    mats = [p for p in params if p.ndim >= 2]
    others = [p for p in params if p.ndim < 2]
    if impl == "m3_plain":
        return PlainM3(params, slow_every=f)
    if impl == "nlcore":
        return M3(params, lr=LR, betas=BETAS, alpha=ALPHA, slow_every=f, adamw_lr=LR,
                  adamw_betas=(0.9, 0.999), weight_decay=0.0, adamw_weight_decay=0.01)
    if impl == "torch_muon":
        return _Both(torch.optim.Muon(mats, lr=LR, momentum=BETAS[0], weight_decay=0.0),
                     torch.optim.AdamW(others, lr=LR))
    if impl == "torch_adamw":
        return torch.optim.AdamW(params, lr=LR, fused=True if cuda else None)
    raise ValueError(impl)


def _task(cfg: Config, impl: str, layers: int, d: int, f: int) -> Task:
    shapes = layer_shapes(d)
    n_params = layers * sum(math.prod(s) for s in shapes)
    mats = [s for s in shapes if len(s) == 2]
    if impl == "torch_adamw":
        fl = 0.0
    else:
        per_step = sum(ns_flops(*s) for s in mats) * layers
        fl = per_step * (f + (1 if impl != "torch_muon" else 0))
    elems_per_step = {"torch_adamw": 7, "torch_muon": 6}.get(impl, 12)
    nbytes = float(n_params * 4 * elems_per_step * f)

    def make():
        params = _make_params(cfg, layers, d)
        opt = _optimizer(impl, params, f, cfg.is_cuda)
        return [(params, opt)]

    def fn(params, opt):
        for _ in range(f):
            opt.step()
        return params[0].detach().clone()  # a copy: later calls keep stepping params

    return Task(op=NAME, impl=impl, mode="fwd", shape=(layers, d), dtype=torch.float32,
                fn=fn, make_sets=make, flops=fl, nbytes=nbytes, ref_impl=REF,
                params={"layers": layers, "d": d, "slow_every": f, "steps_per_call": f,
                        "n_params": n_params, "alpha": ALPHA})


def tasks(cfg: Config) -> List[Task]:
    out: List[Task] = []
    if "fwd" not in cfg.modes:
        return out
    for layers, d, f in problems(cfg):
        for impl in (REF, "nlcore", "torch_muon", "torch_adamw"):
            out.append(_task(cfg, impl, layers, d, f))
    return out


if __name__ == "__main__":
    from bench.run import main
    sys.exit(main(["--ops", NAME] + sys.argv[1:]))
