"""Small DGD cases for compute-sanitizer (scripts/gpu.sh sanitize): forward and backward of
nlcore.ops.dgd on the CUDA kernels — fixed-length and varlen (with an empty sequence), GVA,
read before/after, with and without g / erase / initial state, each dtype — checked against
the CPU op. Exit 0: every case ran; 1: a case raised or disagreed; 2: a CUDA error.

    python bench/sanitize_dgd.py [--device cuda] [--quick]
"""
from __future__ import annotations

import argparse
import itertools
import sys

import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.sanitize_newton_schulz import _is_cuda_error  # noqa: E402

# (B, T, H, HV, K, V, cu_seqlens)
CASES = [(2, 70, 2, 4, 64, 64, None), (1, 1, 1, 1, 32, 32, None), (1, 150, 1, 2, 128, 64, None),
         (1, 100, 2, 2, 64, 64, [0, 30, 30, 100]), (1, 64, 1, 1, 256, 256, None)]
QUICK = CASES[:2]


def inputs(B, T, H, HV, K, V, dtype, gen, with_g, with_erase, h0, N):
    x = dict(q=torch.randn(B, T, H, K, generator=gen).to(dtype),
             k=F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1).to(dtype),
             v=torch.randn(B, T, HV, V, generator=gen).to(dtype),
             beta=torch.rand(B, T, HV, generator=gen))
    x["g"] = F.logsigmoid(torch.randn(B, T, HV, generator=gen) + 3) if with_g else None
    x["erase"] = torch.rand(B, T, HV, generator=gen) * 1.4 if with_erase else None
    x["initial_state"] = torch.randn(N, HV, K, V, generator=gen) if h0 else None
    return x


def run(x, dev, cu, read):
    from nlcore.ops import dgd
    xs = {n: (None if t is None else t.to(dev).requires_grad_(True)) for n, t in x.items()}
    o, s = dgd(xs["q"], xs["k"], xs["v"], xs["beta"], g=xs["g"], erase=xs["erase"],
               initial_state=xs["initial_state"], output_final_state=True,
               cu_seqlens=None if cu is None else cu.to(dev), read=read)
    (o.float().square().sum() + s.sum()).backward()
    grads = [t.grad for t in xs.values() if t is not None]
    return [o, s] + grads


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    import nlcore  # noqa: F401
    gen = torch.Generator().manual_seed(4321)
    failures = 0
    for (B, T, H, HV, K, V, cu), dtype, (with_g, with_erase, h0), read in itertools.product(
            QUICK if a.quick else CASES, (torch.bfloat16, torch.float32),
            [(True, True, True), (False, False, False)], ("after", "before")):
        cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
        N = B if cu is None else len(cu) - 1
        tag = f"B{B} T{T} H{H}/{HV} K{K} V{V} {'varlen' if cu else 'fixed'} " \
              f"{str(dtype)[6:]} g={int(with_g)} erase={int(with_erase)} h0={int(h0)} {read}"
        x = inputs(B, T, H, HV, K, V, dtype, gen, with_g, with_erase, h0, N)
        try:
            got = run(x, dev, cu_t, read)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            want = run(x, torch.device("cpu"), cu_t, read)
            errs = [((g.detach().double().cpu() - w.double()).norm()
                     / w.double().norm().clamp_min(1e-30)).item() for g, w in zip(got, want)]
            finite = all(bool(torch.isfinite(g).all()) for g in got)
            ok = finite and max(errs) < (1e-3 if dtype == torch.float32 else 5e-2)
            failures += not ok
            print(f"{tag:70s} {'ok' if ok else 'MISMATCH':>8}  max rel_err {max(errs):.2e}",
                  flush=True)
        except Exception as exc:
            if _is_cuda_error(exc):
                print(f"{tag}  CUDA-ERROR  {exc}", flush=True)
                return 2
            failures += 1
            print(f"{tag}  ERROR  {type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
                  flush=True)
    print(f"sanitize dgd cases done: {failures} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
