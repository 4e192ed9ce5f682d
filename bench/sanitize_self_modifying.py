"""Small self-modifying-memory cases for compute-sanitizer (scripts/gpu.sh sanitize): forward and
backward of nlcore.ops.self_modifying_scan on the CUDA kernels — fixed-length and varlen (with
an empty sequence), shared and per-sequence weights, with and without biases, an initial state
with an open chunk (streaming), a two-call stream against one call, C = 1, a partial last
chunk, every D, bf16 and fp32 — checked against the CPU op.
Exit 0: every case ran; 1: a case raised or disagreed; 2: a CUDA error.

    python bench/sanitize_self_modifying.py [--device cuda] [--quick]
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys

import torch

if __package__ in (None, ""):
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.sanitize_newton_schulz import _is_cuda_error  # noqa: E402

# (B, T, H, D, F / D, C, cu_seqlens, per-sequence weights, initial state, biases, momentum)
CASES = [(2, 37, 2, 32, 2, 8, None, False, False, True, 0.5),
         (1, 5, 1, 32, 1, 1, None, False, False, False, 0.0),
         (1, 50, 2, 64, 2, 16, [0, 20, 20, 50], True, False, True, 0.9),
         (2, 40, 1, 128, 1, 16, None, True, True, True, 0.5),
         (1, 30, 1, 64, 4, 64, None, False, False, False, 0.0),
         (1, 33, 2, 32, 4, 6, [0, 7, 7, 33], True, True, True, 0.5)]
QUICK = CASES[:2]


def inputs(B, T, H, D, Fm, N, per_seq, h0, biases, C, gen):
    """Unit-ish gains, rates up to eta_max = 0.05 and retention near 1 so that the memories move
    materially over the sequence without blowing up."""
    Fh = Fm * D
    lead = (4, N) if per_seq or h0 else (4,)
    x = dict(x=torch.randn(B, T, H, D, generator=gen),
             w_in=torch.randn(*lead, H, Fh, D, generator=gen) / math.sqrt(D),
             w_out=torch.randn(*lead, H, D, Fh, generator=gen) / math.sqrt(Fh),
             w_eta=torch.randn(H, D, generator=gen) / math.sqrt(D),
             w_alpha=torch.randn(H, D, generator=gen) / math.sqrt(D),
             b_eta=torch.randn(H, generator=gen) if biases else None,
             b_alpha=torch.randn(H, generator=gen) + 2.0 if biases else None)
    state = None
    if h0:
        state = [x.pop("w_in"), x.pop("w_out")]
        # four distinct tensors (a list `* 2` aliases p and acc: one leaf, summed .grad)
        state += [0.01 * torch.randn(4, N, H, *s, generator=gen)
                  for s in ((Fh, D), (D, Fh), (Fh, D), (D, Fh))]
        state += [-0.01 * torch.rand(N, H, generator=gen),
                  torch.randint(0, C, (N,), generator=gen)]
        x["w_in"] = x["w_out"] = None
    return x, state


def functional(outs, seed):
    """A fixed random linear functional of k, v, eta, g and the float entries of the state (a
    sum of squares would give k no gradient: ‖k_t‖ = 1)."""
    gen = torch.Generator().manual_seed(seed)
    total = 0
    for t in outs:
        w = torch.randn(t.shape, generator=gen).to(t.device)
        total = total + (t.float() * w).sum()
    return total


def run(x, state, dev, dtype, C, cu, momentum, seed):
    from nlcore.ops import self_modifying_scan
    xs = {n: (None if t is None else t.detach().clone().to(dev)) for n, t in x.items()}
    xs["x"] = xs["x"].to(dtype)
    leaves = [t.requires_grad_(True) for t in xs.values() if t is not None]
    st = None
    if state is not None:
        st = [t.detach().clone().to(dev) for t in state]  # fresh leaves on every device
        for t in st[:7]:
            t.requires_grad_(True)
        leaves += st[:7]
    k, v, eta, g, fin = self_modifying_scan(
        xs["x"], xs["w_in"], xs["w_out"], xs["w_eta"], xs["w_alpha"], C, eta_max=0.05,
        b_eta=xs["b_eta"], b_alpha=xs["b_alpha"], momentum=momentum, initial_state=st,
        output_final_state=True, cu_seqlens=None if cu is None else cu.to(dev),
        checkpoint_every=2)
    outs = [k, v, eta, g] + list(fin[:7])
    functional(outs, seed).backward()
    return outs + [fin[7]] + [t.grad for t in leaves]


def streamed(x, dev, dtype, C, cuts):
    """Forward in pieces through initial_state (a chunk left open at each cut)."""
    from nlcore.ops import self_modifying_scan
    xs = {n: (None if t is None else t.to(dev)) for n, t in x.items()}
    xs["x"] = xs["x"].to(dtype)
    outs, st = [], None
    for a, b in zip(cuts[:-1], cuts[1:]):
        w_in, w_out = (None, None) if st is not None else (xs["w_in"], xs["w_out"])
        *o, st = self_modifying_scan(xs["x"][:, a:b], w_in, w_out, xs["w_eta"], xs["w_alpha"],
                                     C, eta_max=0.05, b_eta=xs["b_eta"], b_alpha=xs["b_alpha"],
                                     momentum=0.5, initial_state=st, output_final_state=True)
        outs.append(o)
    return [torch.cat(p, 1) for p in zip(*outs)] + list(st)


def rel_errs(got, want):
    return [((g.detach().double().cpu() - w.detach().double().cpu()).norm()
             / w.detach().double().norm().clamp_min(1e-30)).item() for g, w in zip(got, want)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    import nlcore  # noqa: F401
    gen = torch.Generator().manual_seed(1357)
    failures = 0
    for i, ((B, T, H, D, Fm, C, cu, per_seq, h0, biases, mom), dtype) in enumerate(
            itertools.product(QUICK if a.quick else CASES, (torch.bfloat16, torch.float32))):
        cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
        N = B if cu is None else len(cu) - 1
        tag = (f"B{B} T{T} H{H} D{D} F{Fm * D} C{C} {'varlen' if cu else 'fixed'} "
               f"{'per-seq' if per_seq else 'shared'} h0={int(h0)} b={int(biases)} "
               f"{str(dtype)[6:]}")
        x, state = inputs(B, T, H, D, Fm, N, per_seq, h0, biases, C, gen)
        try:
            got = run(x, state, dev, dtype, C, cu_t, mom, seed=i)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            want = run(x, state, torch.device("cpu"), dtype, C, cu_t, mom, seed=i)
            errs = rel_errs(got, want)
            finite = all(bool(torch.isfinite(g.float()).all()) for g in got)
            ok = finite and max(errs) < (1e-3 if dtype == torch.float32 else 5e-2)
            failures += not ok
            print(f"{tag:66s} {'ok' if ok else 'MISMATCH':>8}  max rel_err {max(errs):.2e}",
                  flush=True)
        except Exception as exc:
            if _is_cuda_error(exc):
                print(f"{tag}  CUDA-ERROR  {exc}", flush=True)
                return 2
            failures += 1
            print(f"{tag}  ERROR  {type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
                  flush=True)
    # streaming: three calls on the device (a chunk open at each cut) against one CPU call
    tag = "stream B2 T17 H2 D32 F64 C5 cuts 0/7/8/17 fp32"
    try:
        x, _ = inputs(2, 17, 2, 32, 2, 2, False, False, True, 5, gen)
        got = streamed(x, dev, torch.float32, 5, (0, 7, 8, 17))
        want = streamed(x, torch.device("cpu"), torch.float32, 5, (0, 17))
        errs = rel_errs(got[:11], want[:11])
        n_ok = bool((got[11].cpu() == want[11]).all())
        ok = n_ok and max(errs) < 1e-3
        failures += not ok
        print(f"{tag:66s} {'ok' if ok else 'MISMATCH':>8}  max rel_err {max(errs):.2e}",
              flush=True)
    except Exception as exc:
        if _is_cuda_error(exc):
            print(f"{tag}  CUDA-ERROR  {exc}", flush=True)
            return 2
        failures += 1
        print(f"{tag}  ERROR  {type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
              flush=True)
    print(f"sanitize self_modifying cases done: {failures} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
