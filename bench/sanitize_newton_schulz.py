"""Small Newton–Schulz cases for compute-sanitizer (scripts/gpu.sh sanitize): every kernel
path of nlcore.ops.newton_schulz once, forward and backward, on small batches.

Prints one line per case and exits 0 when every case ran (a path the op declines for a shape
is "unsupported", not a failure), 1 when a case raised, 2 on a CUDA error (after which the
context is unusable). Also runs on the CPU, where only the "auto" path exists.

    python bench/sanitize_newton_schulz.py [--device cuda] [--quick]
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import sys

import torch

# [batch, m, n]: one-block path (≤ 128, odd sizes, m > n), 256 (cluster/general),
# larger (GEMM paths, symmetric)
SHAPES = [(2, 64, 64), (3, 128, 128), (2, 96, 40), (2, 33, 65), (1, 256, 256), (2, 200, 256),
          (1, 384, 512), (1, 512, 128)]
QUICK_SHAPES = [(2, 64, 64), (2, 96, 40), (1, 256, 256)]


def kernels() -> list:
    from nlcore.ops import newton_schulz as op
    if "kernel" not in inspect.signature(op).parameters:
        return ["auto"]
    names = getattr(importlib.import_module("nlcore.ops.newton_schulz"), "_KERNELS", None)
    return list(names or ["auto"])


def _is_cuda_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "cuda error" in text or "illegal" in text or "cudaerror" in text \
        or "device-side assert" in text


def _unsupported(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, (NotImplementedError, ValueError)) or "not support" in text \
        or "unsupported" in text


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    dev = torch.device(a.device)

    import nlcore  # noqa: F401
    from nlcore.ops import newton_schulz as op
    from nlcore.reference import newton_schulz as truth

    gen = torch.Generator(device="cpu").manual_seed(1234)
    names = kernels() if dev.type == "cuda" else ["auto"]
    failures = 0
    print(f"device {dev}, kernels {names}", flush=True)
    for shape in (QUICK_SHAPES if a.quick else SHAPES):
        for dtype in (torch.bfloat16, torch.float32):
            G_cpu = torch.randn(shape, generator=gen).to(dtype)
            ref = truth(G_cpu.double(), emulate=torch.bfloat16)
            for k in names:
                backward = k == "auto"
                tag = f"{'x'.join(map(str, shape)):>12} {str(dtype)[6:]:>8} {k:>10}" \
                      f" {'fwd+bwd' if backward else 'fwd':>7}"
                try:
                    G = G_cpu.to(dev, dtype).requires_grad_(backward)
                    kw = {} if k == "auto" else {"kernel": k}
                    out = op(G, 5, "muon", 1e-7, compute_dtype=torch.bfloat16, **kw)
                    if backward:
                        out.backward(torch.randn(shape, generator=gen).to(dev, dtype))
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    err = ((out.detach().double().cpu() - ref).norm() / ref.norm()).item()
                    finite = bool(torch.isfinite(out).all()) and \
                        (not backward or bool(torch.isfinite(G.grad).all()))
                    verdict = "ok" if finite and err < 0.1 else "SUSPECT"
                    print(f"{tag}  {verdict:>8}  rel_err {err:.2e}", flush=True)
                except Exception as exc:  # record every case; a CUDA fault ends the run
                    if _is_cuda_error(exc):
                        print(f"{tag}  CUDA-ERROR  {exc}", flush=True)
                        return 2
                    if k != "auto" and _unsupported(exc):
                        print(f"{tag}  unsupported  {str(exc).splitlines()[0][:120]}",
                              flush=True)
                        continue
                    failures += 1
                    print(f"{tag}  ERROR  {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:160] if str(exc) else ''}", flush=True)
    print(f"sanitize cases done: {failures} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
