"""Batched Newton–Schulz (DESIGN §3.4): nlcore.ops.newton_schulz against the eager torch
baseline (nlcore.reference.newton_schulz_torch, written the way torch.optim.Muon does it),
the same baseline under torch.compile, torch.optim.Muon's own 2-D routine, and, on CUDA,
the op's forced kernel paths when it exposes them.

FLOPs per matrix and step, with m = min(rows, cols) and n = max:
    2·m·m·n (A = X Xᵀ) + 2·m³ (A²) + 2·m·m·n ((bA + cA²) X)
forward+backward counts three times the forward (each product has two gradient products).
Bytes: G read and O written once each (plus dO read and dG written for forward+backward).

Run through bench/run.py, or alone: python bench/bench_newton_schulz.py --quick
"""
from __future__ import annotations

import importlib
import inspect
import sys
import zlib
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import Config, Task, rotation_count  # noqa: E402

NAME = "newton_schulz"
STEPS = 5
COEFFICIENTS = "muon"
EPS = 1e-7
COMPUTE_DTYPE = torch.bfloat16
REF = "torch_eager"

# [batch, m, n]: batches of small matrices (one block per matrix on CUDA), then the large
# single matrices of a transformer layer (the GEMM paths).
CUDA_SHAPES: Tuple[Tuple[int, int, int], ...] = tuple(
    (b, s, s) for s in (64, 128, 256) for b in (16, 128, 1024)
) + ((1, 1024, 1024), (1, 4096, 4096), (1, 8192, 8192), (1, 4096, 1024))
# the CPU op is a loop of small GEMMs: shrink so that a default CPU run takes minutes
CPU_SHAPES: Tuple[Tuple[int, int, int], ...] = (
    (16, 64, 64), (128, 64, 64), (16, 128, 128), (64, 128, 128), (16, 256, 256),
    (1, 1024, 1024), (1, 1024, 256),
)
QUICK_SHAPES: Tuple[Tuple[int, int, int], ...] = ((8, 64, 64), (4, 128, 128), (1, 256, 96))


def flops(shape: Sequence[int], steps: int = STEPS) -> float:
    """Forward FLOPs of `steps` iterations on a [..., rows, cols] batch."""
    *batch, rows, cols = shape
    m, n = min(rows, cols), max(rows, cols)
    count = 1
    for b in batch:
        count *= b
    return float(count * steps * (4 * m * m * n + 2 * m ** 3))


def shapes_for(cfg: Config) -> Tuple[Tuple[int, ...], ...]:
    if cfg.shapes:
        return tuple(cfg.shapes)
    if cfg.quick:
        return QUICK_SHAPES
    return CUDA_SHAPES if (cfg.is_cuda or cfg.full) else CPU_SHAPES


def _forced_kernels() -> List[str]:
    """Kernel names the op accepts besides "auto" (an optional `kernel=` keyword); [] when the
    op has no such keyword. Nothing here depends on it being there."""
    try:
        from nlcore.ops import newton_schulz as op
        if "kernel" not in inspect.signature(op).parameters:
            return []
        module = importlib.import_module("nlcore.ops.newton_schulz")
        names = getattr(module, "_KERNELS", None)
        return [k for k in (names or {}) if k != "auto"]
    except Exception:
        return []


def _compiled(fn: Callable) -> Callable:
    import torch._dynamo
    cfg = torch._dynamo.config
    # one compiled graph per shape: lift the recompile limits so no shape falls back to eager
    for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                 "accumulated_recompile_limit"):
        if hasattr(cfg, knob):
            setattr(cfg, knob, max(getattr(cfg, knob), 256))
    return torch.compile(fn)


def _impls(cfg: Config, shape: Sequence[int], mode: str):
    """(name, forward fn G -> O, experimental, skip reason) in the order they are timed;
    the reference comes first so the others can be compared with its output."""
    from nlcore.ops import newton_schulz as op
    from nlcore.reference import newton_schulz_torch as eager

    def ref(G):
        return eager(G, STEPS, COEFFICIENTS, EPS, dtype=COMPUTE_DTYPE)

    def ours(G):
        return op(G, STEPS, COEFFICIENTS, EPS, compute_dtype=COMPUTE_DTYPE)

    out = [(REF, ref, False, None), ("nlcore", ours, False, None)]
    if cfg.compile:
        out.append(("torch_compile", _compiled(ref), False, None))
    if len(shape) == 2 or all(b == 1 for b in shape[:-2]):
        muon = _torch_muon()
        if muon is not None and mode == "fwd" and COEFFICIENTS == "muon":
            from nlcore._coefficients import MUON

            def peer(G):
                return muon(G.reshape(G.shape[-2:]), MUON, STEPS, EPS)
            out.append(("torch_muon", peer, False, None))
    if cfg.is_cuda and cfg.experimental:
        for k in _forced_kernels():
            def forced(G, _k=k):
                return op(G, STEPS, COEFFICIENTS, EPS, compute_dtype=COMPUTE_DTYPE, kernel=_k)
            out.append((f"nlcore[{k}]", forced, True, None))
    return out


def _torch_muon() -> Optional[Callable]:
    try:
        from torch.optim._muon import _zeropower_via_newtonschulz
        return _zeropower_via_newtonschulz
    except Exception:
        return None


def _sets_maker(cfg: Config, shape: Tuple[int, ...], dtype: torch.dtype, mode: str):
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = 1
    for s in shape:
        numel *= s
    set_bytes = numel * itemsize * (2 if mode == "fwdbwd" else 1)
    # the same seed for every impl of a problem: identical inputs, comparable outputs
    seed = cfg.seed + zlib.crc32(f"{NAME}/{mode}/{shape}/{dtype}".encode())

    def make() -> List[tuple]:
        gen = torch.Generator(device=cfg.device).manual_seed(seed)
        sets = []
        for _ in range(rotation_count(cfg, set_bytes)):
            G = torch.randn(shape, device=cfg.device, generator=gen).to(dtype)
            if mode == "fwd":
                sets.append((G,))
            else:
                dO = torch.randn(shape, device=cfg.device, generator=gen).to(dtype)
                sets.append((G.requires_grad_(True), dO))
        return sets
    return make, numel * itemsize


def _timed(fwd: Callable, mode: str) -> Callable:
    if mode == "fwd":
        def run(G):
            with torch.no_grad():
                return fwd(G)
        return run

    def run_fb(G, dO):
        (dG,) = torch.autograd.grad(fwd(G), G, dO)
        return dG
    return run_fb


def tasks(cfg: Config) -> List[Task]:
    out: List[Task] = []
    for mode in cfg.modes:
        for dtype in cfg.dtypes:
            for shape in shapes_for(cfg):
                shape = tuple(int(s) for s in shape)
                make, tensor_bytes = _sets_maker(cfg, shape, dtype, mode)
                f = flops(shape) * (3 if mode == "fwdbwd" else 1)
                nbytes = tensor_bytes * (4 if mode == "fwdbwd" else 2)
                params = {"steps": STEPS, "coefficients": COEFFICIENTS,
                          "compute_dtype": str(COMPUTE_DTYPE).replace("torch.", "")}
                for name, fwd, experimental, skip in _impls(cfg, shape, mode):
                    out.append(Task(op=NAME, impl=name, mode=mode, shape=shape, dtype=dtype,
                                    fn=_timed(fwd, mode), make_sets=make, flops=f,
                                    nbytes=nbytes, ref_impl=REF, params=params,
                                    experimental=experimental, skip=skip))
    return out


if __name__ == "__main__":
    from bench.run import main
    sys.exit(main(["--ops", NAME] + sys.argv[1:]))
