"""Which tensor disagrees when an initial state is handed in? (issue 13) For the memory scan
and the self-modifying scan on the device against the CPU op: every output and every gradient
by name, for variants of the initial state that isolate its parts (chunk offset n = 0,
accumulators zero, momentum zero, gradients of the final state only / of y only).

    python bench/diag_state.py [--device cuda]
"""
from __future__ import annotations

import argparse
import sys

import torch

if __package__ in (None, ""):
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import sanitize_memory_mlp as smm  # noqa: E402
from bench import sanitize_self_modifying as ssm  # noqa: E402

STATE = ["s_w_in", "s_w_out", "s_p_in", "s_p_out", "s_acc_in", "s_acc_out", "s_acc_g"]


def variants(state, C):
    yield "as-is", state
    s = list(state); s[7] = torch.zeros_like(s[7]); yield "n=0", s
    s = list(state); s[4] = torch.zeros_like(s[4]); s[5] = torch.zeros_like(s[5])
    s[6] = torch.zeros_like(s[6]); yield "acc=0", s
    s = list(state); s[4:7] = [torch.zeros_like(t) for t in s[4:7]]; s[7] = torch.zeros_like(s[7])
    yield "acc=0 n=0", s
    s = list(state); s[2] = torch.zeros_like(s[2]); s[3] = torch.zeros_like(s[3]); yield "p=0", s
    s = list(state); s[2:7] = [torch.zeros_like(t) for t in s[2:7]]; s[7] = torch.zeros_like(s[7])
    yield "w only", s


def show(tag, names, got, want, tol):
    bad = []
    for n, g, w in zip(names, got, want):
        if g is None or w is None:
            bad.append(f"{n}=None({g is None},{w is None})")
            continue
        e = ((g.detach().double().cpu() - w.detach().double().cpu()).norm()
             / w.detach().double().cpu().norm().clamp_min(1e-30)).item()
        if not e < tol:
            bad.append(f"{n}={e:.2e}(|w|={w.detach().double().norm().item():.2e})")
    print(f"{tag:48s} {'ok' if not bad else 'BAD: ' + ' '.join(bad)}", flush=True)


def mm(dev, dtype=torch.float32):
    gen = torch.Generator().manual_seed(2468)
    for (B, T, H, D, C, cu, per_seq, h0) in [(2, 40, 1, 128, 16, None, True, True),
                                             (1, 40, 1, 32, 8, None, True, True),
                                             (2, 40, 1, 32, 8, None, True, True),
                                             (1, 40, 1, 32, 8, [0, 13, 13, 40], True, True)]:
        cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
        N = B if cu is None else len(cu) - 1
        x, state = smm.inputs(B, T, H, D, N, per_seq, h0, C, gen)
        print(f"memory_mlp B{B} T{T} H{H} D{D} C{C} n={state[7].tolist()}", flush=True)
        names = (["y"] + ["f_" + n[2:] for n in STATE] + ["dx", "dk", "dv", "deta", "dg"]
                 + ["d" + n for n in STATE])
        for vt, st in variants(state, C):
            got = smm.run(x, st, dev, dtype, C, cu_t)
            want = smm.run(x, st, torch.device("cpu"), dtype, C, cu_t)
            show(f"  {vt}", names, got, want, 1e-3)
        for vt, st in variants(state, C):
            got = smm.run(x, st, dev, dtype, C, cu_t, backward=False)
            want = smm.run(x, st, torch.device("cpu"), dtype, C, cu_t, backward=False)
            show(f"  fwd-only {vt}", names, got, want, 1e-3)


def sm(dev, dtype=torch.float32):
    gen = torch.Generator().manual_seed(1357)
    for (B, T, H, D, Fm, C, cu, per_seq, h0, biases, mom) in [
            (2, 40, 1, 128, 1, 16, None, True, True, True, 0.5),
            (1, 33, 2, 32, 4, 6, [0, 7, 7, 33], True, True, True, 0.5),
            (1, 40, 1, 32, 2, 8, None, True, True, False, 0.0)]:
        cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
        N = B if cu is None else len(cu) - 1
        x, state = ssm.inputs(B, T, H, D, Fm, N, per_seq, h0, biases, C, gen)
        print(f"self_modifying B{B} T{T} H{H} D{D} F{Fm * D} C{C} mom={mom} "
              f"n={state[7].tolist()}", flush=True)
        leaves = [n for n, t in x.items() if t is not None]
        names = (["k", "v", "eta", "g"] + ["f_" + n[2:] for n in STATE] + ["f_n"]
                 + ["d" + n for n in leaves] + ["d" + n for n in STATE])
        for vt, st in variants(state, C):
            got = ssm.run(x, st, dev, dtype, C, cu_t, mom, seed=3)
            want = ssm.run(x, st, torch.device("cpu"), dtype, C, cu_t, mom, seed=3)
            show(f"  {vt}", names, got, want, 1e-3)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    import nlcore  # noqa: F401
    dev = torch.device(a.device)
    mm(dev)
    sm(dev)
    return 0


if __name__ == "__main__":
    sys.exit(main())
