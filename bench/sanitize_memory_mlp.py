"""Small MLP-memory-scan cases for compute-sanitizer (scripts/gpu.sh sanitize): forward and
backward of nlcore.ops.memory_mlp_scan on the CUDA kernels — fixed-length and varlen (with an
empty sequence), shared and per-sequence weights, an initial state with an open chunk, C = 1,
a partial last chunk, every D with F = 4D, bf16 and fp32 — checked against the CPU op
(rates η shrink with F as in the benchmark, so that the in-context descent stays stable).
Then the experimental persistent forward (kernel="persistent", DESIGN §7 step two) on cases
that cover every cluster size (1, 2, 4, 8 CTAs per sequence and head), varlen with an empty
sequence and an initial state with open chunks; forward only (its backward is step one, run
above). A persistent case whose path falls back to step one says so in its line.
Exit 0: every case ran; 1: a case raised or disagreed; 2: a CUDA error.

    python bench/sanitize_memory_mlp.py [--device cuda] [--quick] [--no-persistent]
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

# (B, T, H, D, C, cu_seqlens, per-sequence weights, initial state)
CASES = [(2, 37, 2, 32, 8, None, False, False), (1, 5, 1, 32, 1, None, False, False),
         (1, 50, 2, 64, 16, [0, 20, 20, 50], True, False), (2, 40, 1, 128, 16, None, True, True),
         (1, 70, 1, 64, 64, None, False, False)]
QUICK = CASES[:2]
# kernel="persistent": (B, T, H, D, F, C, cu_seqlens, per-sequence weights, initial state);
# (D, F) -> cluster size: (32, 128) 1, (64, 256) 2, (128, 256) 4, (128, 512) 8
PERSISTENT_CASES = [(2, 37, 2, 32, 128, 8, None, False, False),
                    (1, 50, 2, 64, 256, 16, [0, 20, 20, 50], True, False),
                    (2, 40, 1, 128, 256, 16, None, True, True),
                    (1, 45, 1, 128, 512, 3, [0, 3, 3, 45], True, True),
                    (1, 6, 2, 64, 256, 1, None, False, False)]
QUICK_PERSISTENT = PERSISTENT_CASES[:1]


def inputs(B, T, H, D, N, per_seq, h0, C, gen, Fh=None):
    Fh = 4 * D if Fh is None else Fh
    x = dict(x=torch.randn(B, T, H, D, generator=gen),
             k=F.normalize(torch.randn(B, T, H, D, generator=gen), dim=-1),
             v=torch.randn(B, T, H, D, generator=gen),
             eta=0.05 * min(1.0, 128 / Fh) * torch.rand(B, T, H, generator=gen),
             g=F.logsigmoid(torch.randn(B, T, H, generator=gen) + 4))
    lead = (N,) if per_seq or h0 else ()
    x["w_in"] = 0.3 * torch.randn(*lead, H, Fh, D, generator=gen)
    x["w_out"] = torch.randn(*lead, H, D, Fh, generator=gen) / Fh ** 0.5
    state = None
    if h0:
        state = [x.pop("w_in"), x.pop("w_out")]
        # four distinct tensors (a list `* 2` would hand the same tensor in as p and acc:
        # one leaf whose .grad sums both gradients — the 2026-11-26 "h0 mismatch")
        state += [0.01 * torch.randn(N, H, *s, generator=gen)
                  for s in ((Fh, D), (D, Fh), (Fh, D), (D, Fh))]
        state += [-0.01 * torch.rand(N, H, generator=gen),
                  torch.randint(0, C, (N,), generator=gen)]
        x["w_in"] = x["w_out"] = None
    return x, state


def run(x, state, dev, dtype, C, cu, kernel="auto", backward=True):
    from nlcore.ops import memory_mlp_scan
    xs = {n: (None if t is None else t.detach().clone().to(dev)) for n, t in x.items()}
    for n in ("x", "k", "v"):
        xs[n] = xs[n].to(dtype)
    leaves = [t.requires_grad_(backward) for t in xs.values() if t is not None]
    st = None
    if state is not None:
        st = [t.detach().clone().to(dev) for t in state]  # fresh leaves on every device
        for t in st[:7]:
            t.requires_grad_(backward)
        leaves += st[:7]
    y, fin = memory_mlp_scan(xs["x"], xs["k"], xs["v"], xs["eta"], xs["w_in"], xs["w_out"], C,
                             g=xs["g"], momentum=0.9, self_target=True, initial_state=st,
                             output_final_state=True,
                             cu_seqlens=None if cu is None else cu.to(dev), kernel=kernel)
    if not backward:
        return [y] + list(fin[:7])
    (y.float().square().sum() + sum(t.square().sum() for t in fin[:7])).backward()
    return [y] + list(fin[:7]) + [t.grad for t in leaves]


def path_of(x, state, dev, dtype, C, cu):
    """The path kernel="persistent" takes on `dev` for this case, as a short tag."""
    from nlcore.ops.memory_mlp import memory_mlp_scan_path
    xs = {n: (None if t is None else t.to(dev)) for n, t in x.items()}
    st = None if state is None else [t.to(dev) for t in state]
    p = memory_mlp_scan_path(xs["x"].to(dtype), xs["k"].to(dtype), xs["v"].to(dtype), xs["eta"],
                             xs["w_in"], xs["w_out"], C, g=xs["g"], momentum=0.9,
                             self_target=True, initial_state=st,
                             cu_seqlens=None if cu is None else cu.to(dev), kernel="persistent")
    return (f"persistent c={p.cluster_size}" if p.kernel == "persistent"
            else f"{p.kernel} ({p.reason})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-persistent", dest="persistent", action="store_false",
                   help="leave out the experimental persistent-forward cases")
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    import nlcore  # noqa: F401
    gen = torch.Generator().manual_seed(2468)
    failures = 0
    for (B, T, H, D, C, cu, per_seq, h0), dtype in itertools.product(
            QUICK if a.quick else CASES, (torch.bfloat16, torch.float32)):
        cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
        N = B if cu is None else len(cu) - 1
        tag = (f"B{B} T{T} H{H} D{D} C{C} {'varlen' if cu else 'fixed'} "
               f"{'per-seq' if per_seq else 'shared'} h0={int(h0)} {str(dtype)[6:]}")
        x, state = inputs(B, T, H, D, N, per_seq, h0, C, gen)
        try:
            got = run(x, state, dev, dtype, C, cu_t)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            want = run(x, state, torch.device("cpu"), dtype, C, cu_t)
            errs = [((g.detach().double().cpu() - w.double()).norm()
                     / w.double().norm().clamp_min(1e-30)).item() for g, w in zip(got, want)]
            finite = all(bool(torch.isfinite(g).all()) for g in got)
            ok = finite and max(errs) < (1e-3 if dtype == torch.float32 else 5e-2)
            failures += not ok
            print(f"{tag:60s} {'ok' if ok else 'MISMATCH':>8}  max rel_err {max(errs):.2e}",
                  flush=True)
        except Exception as exc:
            if _is_cuda_error(exc):
                print(f"{tag}  CUDA-ERROR  {exc}", flush=True)
                return 2
            failures += 1
            print(f"{tag}  ERROR  {type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
                  flush=True)
    if a.persistent:
        for (B, T, H, D, Fh, C, cu, per_seq, h0), dtype in itertools.product(
                QUICK_PERSISTENT if a.quick else PERSISTENT_CASES,
                (torch.bfloat16, torch.float32)):
            cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
            N = B if cu is None else len(cu) - 1
            tag = (f"persistent B{B} T{T} H{H} D{D} F{Fh} C{C} "
                   f"{'varlen' if cu else 'fixed'} {'per-seq' if per_seq else 'shared'} "
                   f"h0={int(h0)} {str(dtype)[6:]}")
            x, state = inputs(B, T, H, D, N, per_seq, h0, C, gen, Fh)
            try:
                how = path_of(x, state, dev, dtype, C, cu_t)
                got = run(x, state, dev, dtype, C, cu_t, kernel="persistent", backward=False)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                want = run(x, state, torch.device("cpu"), dtype, C, cu_t, backward=False)
                errs = [((g.detach().double().cpu() - w.double()).norm()
                         / w.double().norm().clamp_min(1e-30)).item()
                        for g, w in zip(got, want)]
                finite = all(bool(torch.isfinite(g).all()) for g in got)
                ok = finite and max(errs) < (1e-3 if dtype == torch.float32 else 5e-2)
                failures += not ok
                print(f"{tag:72s} {'ok' if ok else 'MISMATCH':>8}  max rel_err "
                      f"{max(errs):.2e}  [{how}]", flush=True)
            except Exception as exc:
                if _is_cuda_error(exc):
                    print(f"{tag}  CUDA-ERROR  {exc}", flush=True)
                    return 2
                failures += 1
                print(f"{tag}  ERROR  {type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
                      flush=True)
    print(f"sanitize memory_mlp cases done: {failures} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
