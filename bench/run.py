"""Run the nlcore op benchmarks: one table on stdout, one JSON record per run.

    python bench/run.py [--quick] [--out DIR] [--device auto|cpu|cuda[:i]] [--ops a,b]
                        [--modes fwd,fwdbwd] [--dtypes float32,bfloat16] [--shapes 16x64x64,...]
                        [--compile | --no-compile] [--no-experimental] [--full]
                        [--budget-ms MS] [--max-seconds S] [--seed N] [--no-progress]
    python -m bench ...            (the same, from the repository root)

From Python (e.g. the `nlcore bench` command, run from a source checkout):
    from bench.run import main, run_benchmarks
    main(["--quick"]);  record = run_benchmarks(ops=["newton_schulz"], quick=True)
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common  # noqa: E402

# op name -> module with NAME and tasks(cfg)
OPS: Dict[str, str] = {
    "newton_schulz": "bench.bench_newton_schulz",
    "dgd": "bench.bench_dgd",
    "m3": "bench.bench_m3",
    "memory_mlp": "bench.bench_memory_mlp",
    "self_modifying": "bench.bench_self_modifying",
}
DEFAULT_OUT = common.REPO_ROOT / "bench" / "out"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
           "float64": torch.float64}


def _device(name: Optional[str]) -> torch.device:
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench: --device cuda asked for, but torch sees no CUDA device")
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)
    return dev


def _csv(text: Optional[str]) -> Optional[List[str]]:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


# --shapes syntax per op; the shapes go to every op of the run (dgd, memory_mlp and
# self_modifying ignore, with a message, the lengths that are not theirs), so name one op with them
SHAPE_HELP = ("newton_schulz: [batch]xMxN; dgd: BxTxHxKxV or BxTxHxD; "
              "m3: LAYERSxD[xSLOW_EVERY]; memory_mlp: BxTxHxDxFxC, F the MLP's hidden width "
              "and C the chunk size, e.g. 1x1024x4x64x256x16; self_modifying: BxTxHxDxFxC "
              "likewise, e.g. 1x512x4x64x128x16")


def _shape(text: str):
    try:
        shape = tuple(int(x) for x in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"bad shape {text!r}; want positive integers joined "
                                         f"by 'x' ({SHAPE_HELP})")
    return shape


def run_benchmarks(ops: Optional[Sequence[str]] = None, device: Optional[str] = None,
                   quick: bool = False, out: Optional[os.PathLike] = DEFAULT_OUT,
                   modes: Optional[Sequence[str]] = None,
                   dtypes: Optional[Sequence[str]] = None,
                   shapes: Optional[Sequence[Sequence[int]]] = None,
                   compile: Optional[bool] = None, experimental: bool = True,
                   full: bool = False, budget_ms: Optional[float] = None,
                   max_seconds: Optional[float] = None, seed: int = 0,
                   progress: bool = True, print_table: bool = True) -> Dict[str, Any]:
    """Run the benches of `ops` (default: all) and return the record written to `out`
    (out=None writes nothing). The record's "path" names the file written."""
    dev = _device(device)
    ops = list(ops or OPS)
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        raise SystemExit(f"bench: unknown op(s) {unknown}; known: {sorted(OPS)}")
    if modes is None:
        modes = ("fwd",) if quick else ("fwd", "fwdbwd")
    bad = [m for m in modes if m not in ("fwd", "fwdbwd")]
    if bad:
        raise SystemExit(f"bench: unknown mode(s) {bad}; known: fwd, fwdbwd")
    try:
        dts = tuple(_DTYPES[d] for d in (dtypes or ["float32"]))
    except KeyError as exc:
        raise SystemExit(f"bench: unknown dtype {exc}; known: {sorted(_DTYPES)}") from None
    if compile is None:  # compiling takes ~20 s a graph on the CPU: not in a smoke run
        compile = not quick
    cfg = common.Config.for_device(dev, quick=quick, modes=tuple(modes), dtypes=dts,
                                   dtypes_explicit=dtypes is not None,
                                   compile=compile, experimental=experimental, full=full,
                                   budget_ms=budget_ms, max_seconds=max_seconds, seed=seed,
                                   progress=progress,
                                   shapes=tuple(tuple(s) for s in shapes) if shapes else None)
    t0 = time.perf_counter()
    env = common.environment(dev)
    ceilings = common.measure_ceilings(cfg)
    tasks: List[common.Task] = []
    for name in ops:
        tasks += importlib.import_module(OPS[name]).tasks(cfg)
    rows = common.run_tasks(tasks, cfg, ceilings)
    env["load_avg_end"] = common.load_avg()
    args = {"ops": ops, "device": str(dev), "quick": quick, "modes": list(modes),
            "dtypes": [common.dtype_str(d) for d in dts], "compile": compile,
            "experimental": experimental, "full": full, "budget_ms": cfg.budget_ms,
            "min_reps": cfg.min_reps, "max_reps": cfg.max_reps,
            "shapes": [list(s) for s in cfg.shapes] if cfg.shapes else None,
            "max_seconds": max_seconds, "seed": seed,
            "wall_s": round(time.perf_counter() - t0, 1)}
    record = {**env, "ceilings": ceilings.__dict__, "args": args, "rows": rows, "path": None}
    if out is not None:
        record["path"] = str(common.write_record(out, env, ceilings, rows, args))
    if print_table:
        print(common.format_table(rows, env, ceilings))
        print()
        print(common.format_summary(rows))
        failed = sum(1 for r in rows if r["error"] and not r["error"].startswith("skipped"))
        print(f"# {len(rows)} rows, {failed} failed, {args['wall_s']} s"
              + (f"; wrote {record['path']}" if record["path"] else ""))
    return record


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description="nlcore op benchmarks (JSON + table)")
    p.add_argument("--out", default=str(DEFAULT_OUT),
                   help="folder for the JSON record (default bench/out); '-' writes none")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny problems, few repeats, fwd only, no torch.compile")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--ops", default=None, help=f"comma list (default all: {','.join(OPS)})")
    p.add_argument("--modes", default=None,
                   help="fwd,fwdbwd (default both; fwd with --quick)")
    p.add_argument("--dtypes", default=None,
                   help="input dtypes, comma list (default float32; dgd, memory_mlp, "
                        "self_modifying: bfloat16 on CUDA)")
    p.add_argument("--shapes", default=None,
                   help="problem shapes replacing the op's list, e.g. 16x64x64,1x4096x4096 "
                        f"({SHAPE_HELP})")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="include torch.compile'd references (default, except --quick)")
    g.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--no-experimental", dest="experimental", action="store_false",
                   help="leave out the ops' forced/experimental CUDA kernels")
    p.add_argument("--full", action="store_true",
                   help="the GPU-size problems on the CPU too (slow)")
    p.add_argument("--budget-ms", type=float, default=None,
                   help="timed milliseconds per task (sets the repeat count)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="start no task after this many seconds; the rest are recorded skipped")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    # `timeout` sends SIGTERM: stop like Ctrl-C so the rows done so far are still written
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    shapes = None
    if a.shapes:
        try:
            shapes = [_shape(s) for s in _csv(a.shapes)]
        except argparse.ArgumentTypeError as exc:
            raise SystemExit(f"bench: {exc}") from None
    record = run_benchmarks(ops=_csv(a.ops), device=a.device, quick=a.quick,
                            out=None if a.out == "-" else a.out, modes=_csv(a.modes),
                            dtypes=_csv(a.dtypes), shapes=shapes, compile=a.compile,
                            experimental=a.experimental, full=a.full, budget_ms=a.budget_ms,
                            max_seconds=a.max_seconds, seed=a.seed, progress=a.progress)
    failed = [r for r in record["rows"] if r["error"] and not r["error"].startswith("skipped")]
    return 1 if record["rows"] and len(failed) == len(record["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
