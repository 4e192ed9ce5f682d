"""The benchmark harness shared by every op bench (DESIGN §6).

An op bench builds `Task`s (one problem × one implementation × one mode); `run_tasks` times
them and turns them into rows; `write_record` writes one JSON file per run and
`format_table` prints the rows. Timing follows METHOD: warm up first, rotate among several
input sets so caches don't flatter, take the median of many repeats (CUDA events on the GPU,
perf_counter on the CPU), and judge every time against a roofline built from two ceilings
measured once per run on the device itself (a large device-to-device copy and a large
matrix product: bf16 on CUDA; on the CPU the faster of fp32 and bf16).

Row fields (see bench/results/README.md for the whole record):
    op, impl, mode, shape, dtype, device, ms (median), ms_q25, ms_q75, reps, sets,
    flops, bytes, tflops, gbps, roofline_ms, bound, roofline_frac, speedup_vs_ref, ref_impl,
    rel_err_vs_ref, peak_mb, params, experimental, error.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

SCHEMA = "nlcore-bench/1"
REPO_ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- run configuration


@dataclass
class Config:
    """Knobs of one run; every op bench reads the same object."""

    device: torch.device
    quick: bool = False
    modes: Tuple[str, ...] = ("fwd",)          # "fwd" and/or "fwdbwd"
    dtypes: Tuple[torch.dtype, ...] = (torch.float32,)
    dtypes_explicit: bool = False              # dtypes asked for (else an op may pick its own)
    compile: bool = True                       # include torch.compile'd references
    experimental: bool = True                  # include the ops' experimental kernels (CUDA)
    full: bool = False                         # GPU-size problems on the CPU too
    budget_ms: float = 200.0                   # timed time per task, roughly
    warmup_ms: float = 25.0
    min_reps: int = 10
    max_reps: int = 1000
    max_seconds: Optional[float] = None        # stop starting tasks after this long
    shapes: Optional[Tuple[Tuple[int, ...], ...]] = None   # override an op's problem list
    seed: int = 0
    progress: bool = True

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @classmethod
    def for_device(cls, device: torch.device, quick: bool = False, **overrides) -> "Config":
        """Defaults suited to the device: the CPU gets fewer repeats and smaller problems."""
        if quick:
            base = dict(budget_ms=20.0, warmup_ms=5.0, min_reps=2, max_reps=5)
        elif device.type == "cuda":
            base = dict(budget_ms=200.0, warmup_ms=25.0, min_reps=10, max_reps=1000)
        else:
            base = dict(budget_ms=300.0, warmup_ms=20.0, min_reps=3, max_reps=50)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(device=device, quick=quick, **base)


# ---------------------------------------------------------------- environment


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def git_commit() -> Tuple[str, Optional[bool]]:
    """(commit, dirty). NLCORE_GIT_COMMIT overrides: the GPU machine gets a copy of the
    working tree without .git, so the caller passes the commit along."""
    env = os.environ.get("NLCORE_GIT_COMMIT")
    if env:
        dirty = os.environ.get("NLCORE_GIT_DIRTY")
        return env, (None if dirty is None else dirty not in ("", "0", "false"))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, text=True,
                                capture_output=True, timeout=10)
        if commit.returncode != 0:
            return "unknown", None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=REPO_ROOT, text=True, capture_output=True, timeout=10)
        return commit.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def device_info(device: torch.device) -> Dict[str, Any]:
    info: Dict[str, Any] = {"device": device.type}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name,
                    capability=f"{props.major}.{props.minor}",
                    sm_count=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1),
                    l2_bytes=int(getattr(props, "L2_cache_size", 0)) or None,
                    driver=_nvidia_smi_field("driver_version"))
    else:
        info.update(device_name=_cpu_name(), cpu_threads=torch.get_num_threads())
    return info


def load_avg() -> Optional[float]:
    """1-minute load average: other work on the host (a compiler, say) distorts CPU timings
    and launch-bound GPU timings alike; the record keeps it so a reader can tell."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def busy_warning(env: Dict[str, Any]) -> Optional[str]:
    load, cpus = env.get("load_avg_start"), env.get("cpu_count") or 1
    if load is not None and load > 0.5 * cpus:
        return (f"# WARNING: host load average {load} on {cpus} CPUs before the run; "
                f"timings may be inflated by other work")
    return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_smi_field(name: str) -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={name}", "--format=csv,noheader"],
                             text=True, capture_output=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def environment(device: torch.device) -> Dict[str, Any]:
    """Everything a reader of the record needs to know about where the numbers came from."""
    commit, dirty = git_commit()
    try:
        import nlcore
        nl = {"nlcore_version": getattr(nlcore, "__version__", None),
              "nlcore_cuda_kernels": bool(getattr(nlcore, "cuda_kernels_available",
                                                  lambda: False)())}
    except Exception as exc:  # the harness must run (with stand-ins) without the package
        nl = {"nlcore_version": None, "nlcore_import_error": f"{type(exc).__name__}: {exc}"}
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "git_commit": commit,
        "git_dirty": dirty,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_avg_start": load_avg(),
    }
    env.update(device_info(device))
    env.update(nl)
    return env


# ---------------------------------------------------------------- ceilings


@dataclass
class Ceilings:
    copy_gbps: float          # bytes read + bytes written per second, /1e9
    matmul_tflops: float      # 2·n³ per second, /1e12
    matmul_dtype: str
    matmul_n: int
    copy_bytes: int
    matmul_tflops_by_dtype: Dict[str, float] = field(default_factory=dict)

    def roofline_ms(self, flops: float, nbytes: float) -> Tuple[float, str]:
        """The floor: the slower of moving the bytes and doing the arithmetic."""
        t_mem = nbytes / (self.copy_gbps * 1e9) * 1e3
        t_math = flops / (self.matmul_tflops * 1e12) * 1e3
        return (t_math, "compute") if t_math >= t_mem else (t_mem, "memory")


def measure_ceilings(cfg: Config) -> Ceilings:
    """A large device-to-device copy and a large matrix product (bf16 on CUDA; fp32 and bf16
    on the CPU, the faster kept), timed like any task."""
    dev = cfg.device
    gen = torch.Generator(device=dev).manual_seed(cfg.seed + 12345)
    if cfg.is_cuda:
        free, _ = torch.cuda.mem_get_info(dev)
        nbytes = min(1 << 30, free // 4) if not cfg.quick else 256 << 20
        n, mm_dtypes = (8192 if not cfg.quick else 4096), (torch.bfloat16,)
    else:
        nbytes = (256 << 20) if not cfg.quick else (32 << 20)
        n, mm_dtypes = (2048 if not cfg.quick else 1024), (torch.float32, torch.bfloat16)
    # random bits, never zeros (zeros have been seen to run faster than real data)
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=dev, generator=gen)
    dst = torch.empty_like(src)
    copy_ms = _time_calls(lambda s, d: d.copy_(s), [(src, dst)], cfg,
                          min_reps=max(3, cfg.min_reps), max_reps=50).median
    del src, dst
    # the CPU multiplies bf16 faster than fp32 where it has AVX512-BF16/AMX, and the ops
    # compute in bf16: take the faster of the two there, so no op beats its own roofline
    rates = {}
    for dt in mm_dtypes:
        a = torch.randn(n, n, device=dev, generator=gen).to(dt)
        b = torch.randn(n, n, device=dev, generator=gen).to(dt)
        out = torch.empty(n, n, device=dev, dtype=dt)
        mm_ms = _time_calls(lambda x, y, o: torch.mm(x, y, out=o), [(a, b, out)], cfg,
                            min_reps=max(3, cfg.min_reps), max_reps=50).median
        rates[dtype_str(dt)] = 2 * n**3 / (mm_ms * 1e-3) / 1e12
        del a, b, out
    best = max(rates, key=rates.get)
    return Ceilings(copy_gbps=2 * nbytes / (copy_ms * 1e-3) / 1e9,
                    matmul_tflops=rates[best], matmul_dtype=best, matmul_n=n,
                    copy_bytes=nbytes, matmul_tflops_by_dtype=rates)


# ---------------------------------------------------------------- timing


@dataclass
class Timing:
    median: float
    q25: float
    q75: float
    reps: int


def _time_calls(fn: Callable, sets: Sequence[tuple], cfg: Config,
                min_reps: Optional[int] = None, max_reps: Optional[int] = None) -> Timing:
    """Median milliseconds of fn(*sets[i % len(sets)]) after a warm-up.

    The first call is never timed (module load, compilation, handle creation); a few more
    calls for about warmup_ms give the estimate that sizes the timed loop to budget_ms.
    """
    dev = cfg.device
    min_reps = cfg.min_reps if min_reps is None else min_reps
    max_reps = cfg.max_reps if max_reps is None else max_reps
    fn(*sets[0])
    _synchronize(dev)
    est, calls = [], 0
    t_start = time.perf_counter()
    while calls < 2 or ((time.perf_counter() - t_start) * 1e3 < cfg.warmup_ms and calls < 100):
        t0 = time.perf_counter()
        fn(*sets[calls % len(sets)])
        _synchronize(dev)
        est.append((time.perf_counter() - t0) * 1e3)
        calls += 1
    per_call = max(statistics.median(est), 1e-4)
    reps = int(min(max_reps, max(min_reps, math.ceil(cfg.budget_ms / per_call))))
    times: List[float] = []
    if dev.type == "cuda":
        # one event pair per call; the GPU timeline between them is what the call costs
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for i in range(reps):
            args = sets[(calls + i) % len(sets)]
            starts[i].record()
            fn(*args)
            ends[i].record()
        torch.cuda.synchronize(dev)
        times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    else:
        for i in range(reps):
            args = sets[(calls + i) % len(sets)]
            t0 = time.perf_counter()
            fn(*args)
            times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return Timing(median=statistics.median(times), q25=q[0], q75=q[2], reps=reps)


def rotation_count(cfg: Config, set_bytes: int) -> int:
    """How many input sets to rotate through so that one set is out of cache when reused:
    together at least four times the last-level cache (at most 256 sets on CUDA, 16 on the
    CPU, and 2 GiB)."""
    if cfg.quick:
        return 2
    if cfg.is_cuda:
        props = torch.cuda.get_device_properties(cfg.device)
        cache = int(getattr(props, "L2_cache_size", 0)) or (50 << 20)
        most = 256
    else:
        cache, most = 32 << 20, 16  # CPU inputs are generated slowly; its caches are small
    want = math.ceil(4 * cache / max(set_bytes, 1))
    cap = max(1, (2 << 30) // max(set_bytes, 1))
    return int(max(1, min(want, most, cap)))


# ---------------------------------------------------------------- tasks and rows


@dataclass
class Task:
    """One implementation of one problem in one mode.

    make_sets() builds the rotating input sets (tuples of fn's arguments); fn returns a
    tensor (or a tuple/list of tensors, e.g. several gradients), compared against the
    reference impl's on the first set (rel_err_vs_ref).
    """

    op: str
    impl: str
    mode: str
    shape: Tuple[int, ...]
    dtype: torch.dtype
    fn: Callable[..., torch.Tensor]
    make_sets: Callable[[], List[tuple]]
    flops: float
    nbytes: float
    ref_impl: str
    params: Dict[str, Any] = field(default_factory=dict)
    experimental: bool = False
    skip: Optional[str] = None

    @property
    def problem(self) -> Tuple:
        return (self.op, self.mode, self.shape, str(self.dtype),
                json.dumps(self.params, sort_keys=True))

    @property
    def label(self) -> str:
        return f"{self.op} {self.mode} {self.impl} {shape_str(self.shape)} {dtype_str(self.dtype)}"


def shape_str(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def dtype_str(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _tensors(out: Any) -> List[torch.Tensor]:
    """fn's result as a list of tensors (one tensor, or a tuple/list of them; None dropped)."""
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in out if t is not None]


def _to_cpu(out: Any) -> List[torch.Tensor]:
    return [t.detach().to("cpu") for t in _tensors(out)]


def _rel_err(out: Sequence[torch.Tensor], ref: Sequence[torch.Tensor]) -> Optional[float]:
    """‖out − ref‖ / ‖ref‖ over all the tensors together (as if concatenated)."""
    try:
        if len(out) != len(ref):
            return None
        num = den = 0.0
        for a, b in zip(out, ref):
            a, b = a.detach().double(), b.detach().double()
            den += torch.linalg.vector_norm(b).item() ** 2
            num += torch.linalg.vector_norm(a - b).item() ** 2
        num, den = math.sqrt(num), math.sqrt(den)
        return num / den if den > 0 else num
    except Exception:
        return None


def _set_bytes(args: Sequence[Any]) -> int:
    return sum(t.numel() * t.element_size() for t in args if isinstance(t, torch.Tensor))


def peak_memory_mb(fn: Callable, args: Sequence[Any], cfg: Config) -> Optional[float]:
    """Peak device memory of one call of fn(*args), in MiB: the input set's tensors plus the
    most the call allocated above what was live before it (temporaries, outputs, saved
    activations and gradients). CUDA only (the caching allocator keeps the count); None on
    the CPU, where torch's allocations are not tracked cheaply."""
    if not cfg.is_cuda:
        return None
    dev = cfg.device
    torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    out = fn(*args)
    torch.cuda.synchronize(dev)
    extra = torch.cuda.max_memory_allocated(dev) - base
    del out
    return (extra + _set_bytes(args)) / 2**20


def _short(exc: BaseException) -> str:
    msg = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return (msg[0] if msg else type(exc).__name__)[:300]


class _Progress:
    """tqdm when it is installed and stderr is a terminal, else one plain line per task."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.n, self.bar = total, enabled, 0, None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit="task", dynamic_ncols=True, leave=False)
            except ImportError:
                self.bar = None

    def start(self, label: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description_str(label[:60])
        else:
            print(f"[{self.n + 1}/{self.total}] {label}", file=sys.stderr, flush=True)

    def done(self) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_tasks(tasks: Sequence[Task], cfg: Config, ceilings: Ceilings) -> List[Dict[str, Any]]:
    """Time every task and return one row each, in the order given.

    Experimental impls run after all others: a crash of one of them (a CUDA fault poisons
    the context) must not cost the rows of the stable ones.
    """
    order = sorted(range(len(tasks)), key=lambda i: tasks[i].experimental)
    rows: Dict[int, Dict[str, Any]] = {}
    ref_out: Dict[Tuple, torch.Tensor] = {}
    progress = _Progress(len(tasks), cfg.progress)
    t_begin = time.perf_counter()
    try:
        for i in order:
            task = tasks[i]
            progress.start(task.label)
            over = cfg.max_seconds is not None and time.perf_counter() - t_begin > cfg.max_seconds
            skip = task.skip or (f"time limit ({cfg.max_seconds:.0f} s) reached" if over else None)
            rows[i] = _run_one(task, cfg, ceilings, ref_out, skip)
            progress.done()
    except KeyboardInterrupt:
        print("bench: interrupted; keeping the rows done so far", file=sys.stderr)
        for i in order:
            rows.setdefault(i, _row(tasks[i], cfg, ceilings, error="interrupted"))
    finally:
        progress.close()
    out = [rows[i] for i in range(len(tasks))]
    _fill_speedups(out)
    return out


def _run_one(task: Task, cfg: Config, ceilings: Ceilings, ref_out: Dict, skip: Optional[str]):
    if skip:
        return _row(task, cfg, ceilings, error=f"skipped: {skip}")
    sets = None
    try:
        sets = task.make_sets()
        out = _to_cpu(task.fn(*sets[0]))
        _synchronize(cfg.device)
        if task.impl == task.ref_impl:
            ref_out[task.problem] = out
            err = 0.0
        else:
            ref = ref_out.get(task.problem)
            err = None if ref is None else _rel_err(out, ref)
        del out
        timing = _time_calls(task.fn, sets, cfg)
        peak = peak_memory_mb(task.fn, sets[0], cfg)  # one call beyond the warm-up
        return _row(task, cfg, ceilings, timing=timing, sets=len(sets), rel_err=err,
                    peak_mb=peak)
    except Exception as exc:  # one failing impl must not end the run
        return _row(task, cfg, ceilings, error=_short(exc))
    finally:
        del sets
        if cfg.is_cuda:
            try:  # after a CUDA fault this raises too; the row already says what happened
                torch.cuda.empty_cache()
            except Exception:
                pass


def _row(task: Task, cfg: Config, ceilings: Ceilings, timing: Optional[Timing] = None,
         sets: Optional[int] = None, rel_err: Optional[float] = None,
         error: Optional[str] = None, peak_mb: Optional[float] = None) -> Dict[str, Any]:
    roof_ms, bound = ceilings.roofline_ms(task.flops, task.nbytes)
    row: Dict[str, Any] = {
        "op": task.op, "impl": task.impl, "mode": task.mode,
        "shape": list(task.shape), "dtype": dtype_str(task.dtype), "device": cfg.device.type,
        "ms": None, "ms_q25": None, "ms_q75": None, "reps": None, "sets": sets,
        "flops": task.flops, "bytes": task.nbytes, "tflops": None, "gbps": None,
        "roofline_ms": roof_ms, "bound": bound, "roofline_frac": None,
        "speedup_vs_ref": None, "ref_impl": task.ref_impl, "rel_err_vs_ref": rel_err,
        "peak_mb": peak_mb, "params": task.params, "experimental": task.experimental,
        "error": error,
    }
    if timing is not None:
        ms = timing.median
        row.update(ms=ms, ms_q25=timing.q25, ms_q75=timing.q75, reps=timing.reps,
                   tflops=task.flops / (ms * 1e-3) / 1e12,
                   gbps=task.nbytes / (ms * 1e-3) / 1e9,
                   roofline_frac=roof_ms / ms)
    return row


def _fill_speedups(rows: List[Dict[str, Any]]) -> None:
    def key(r):
        return (r["op"], r["mode"], tuple(r["shape"]), r["dtype"],
                json.dumps(r["params"], sort_keys=True))
    ref_ms = {key(r): r["ms"] for r in rows if r["impl"] == r["ref_impl"] and r["ms"]}
    for r in rows:
        base = ref_ms.get(key(r))
        if base and r["ms"]:
            r["speedup_vs_ref"] = base / r["ms"]


# ---------------------------------------------------------------- output


_COLUMNS = [  # (header, width, row -> text)
    ("op", 14, lambda r: r["op"]),
    ("mode", 6, lambda r: r["mode"]),
    ("shape", 22, lambda r: shape_str(r["shape"])),
    ("dtype", 8, lambda r: r["dtype"]),
    ("impl", 22, lambda r: r["impl"]),
    ("ms", 10, lambda r: _num(r["ms"], 4)),
    ("±iqr%", 6, lambda r: _iqr(r)),
    ("TFLOP/s", 8, lambda r: _num(r["tflops"], 3)),
    ("GB/s", 8, lambda r: _num(r["gbps"], 3)),
    ("%roof", 6, lambda r: _num(None if r["roofline_frac"] is None
                                else 100 * r["roofline_frac"], 3)),
    ("bound", 7, lambda r: r["bound"][:7]),
    ("vs ref", 7, lambda r: "" if r["speedup_vs_ref"] is None
     else f"{r['speedup_vs_ref']:.2f}x"),
    ("err", 8, lambda r: "" if r["rel_err_vs_ref"] is None else f"{r['rel_err_vs_ref']:.1e}"),
    ("peakMB", 7, lambda r: _num(r.get("peak_mb"), 4)),
]


def _num(x: Optional[float], digits: int) -> str:
    if x is None:
        return ""
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    decimals = max(0, digits - 1 - mag)
    return f"{x:.{decimals}f}"


def _iqr(r: Dict[str, Any]) -> str:
    if not r["ms"] or r["ms_q25"] is None:
        return ""
    return f"{100 * (r['ms_q75'] - r['ms_q25']) / r['ms']:.0f}"


def format_table(rows: Sequence[Dict[str, Any]], env: Optional[Dict[str, Any]] = None,
                 ceilings: Optional[Ceilings] = None) -> str:
    lines = []
    if env is not None:
        lines.append(f"# {env.get('device_name')} ({env.get('device')}), torch {env.get('torch')}"
                     f", CUDA {env.get('cuda')}, commit {str(env.get('git_commit'))[:12]}"
                     f"{' (dirty)' if env.get('git_dirty') else ''}, {env.get('date')}")
    if env is not None and busy_warning(env):
        lines.append(busy_warning(env))
    if ceilings is not None:
        lines.append(f"# ceilings: copy {ceilings.copy_gbps:.1f} GB/s (read+write), "
                     f"matmul {ceilings.matmul_tflops:.2f} TFLOP/s "
                     f"({ceilings.matmul_dtype}, n={ceilings.matmul_n})")
    header = " ".join(h.ljust(w) if i < 5 else h.rjust(w)
                      for i, (h, w, _) in enumerate(_COLUMNS))
    lines += [header, "-" * len(header)]
    prev = None
    for r in rows:
        problem = (r["op"], r["mode"], tuple(r["shape"]), r["dtype"])
        if prev is not None and problem != prev:
            lines.append("")
        prev = problem
        cells = []
        for i, (_, w, get) in enumerate(_COLUMNS):
            text = str(get(r))
            cells.append(text[:w].ljust(w) if i < 5 else text.rjust(w))
        line = " ".join(cells)
        if r["error"]:
            line = " ".join(cells[:5]) + "  " + r["error"][:100]
        lines.append(line.rstrip())
    return "\n".join(lines)


def format_summary(rows: Sequence[Dict[str, Any]], ours: str = "nlcore") -> str:
    """One line per problem: the reference, our op, and the fastest other impl — short
    enough to survive the end of a captured log."""
    problems: Dict[Tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        problems.setdefault((r["op"], r["mode"], tuple(r["shape"]), r["dtype"]), []).append(r)
    head = (f"{'op':<14} {'mode':<6} {'shape':<22} {'dtype':<8} {'ref ms':>9} {ours + ' ms':>10}"
            f" {'%roof':>6} {'vs ref':>7}  fastest other (ms, vs ref)")
    lines = [head, "-" * len(head)]
    for (op, mode, shape, dtype), rs in problems.items():
        ref = next((r for r in rs if r["impl"] == r["ref_impl"]), None)
        me = next((r for r in rs if r["impl"] == ours), None)
        others = [r for r in rs if r["ms"] and r is not ref and r is not me]
        best = min(others, key=lambda r: r["ms"], default=None)
        mine = "" if me is None else (_num(me["ms"], 4) if not me["error"] else
                                      "skipped" if me["error"].startswith("skipped")
                                      else "interrupted" if me["error"] == "interrupted"
                                      else "error")
        roof = me and me["roofline_frac"] and 100 * me["roofline_frac"]
        speed = "" if not me or me["speedup_vs_ref"] is None else f"{me['speedup_vs_ref']:.2f}x"
        other = "" if best is None else f"{best['impl']} {_num(best['ms'], 4)}" + (
            "" if best["speedup_vs_ref"] is None else f" ({best['speedup_vs_ref']:.2f}x)")
        lines.append(f"{op[:14]:<14} {mode:<6} {shape_str(shape)[:22]:<22} {dtype[:8]:<8} "
                     f"{_num(ref and ref['ms'], 4):>9} {mine:>10} {_num(roof, 3):>6} "
                     f"{speed:>7}  {other}")
    return "\n".join(line.rstrip() for line in lines)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "device"


def write_record(out_dir: os.PathLike, env: Dict[str, Any], ceilings: Ceilings,
                 rows: Sequence[Dict[str, Any]], args: Dict[str, Any],
                 name: Optional[str] = None) -> Path:
    """One JSON file per run: <out_dir>/bench-<date>-<device>-<commit>.json (or `name`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if name is None:
        stamp = env["date"].replace(":", "").replace("-", "").replace("+0000", "Z")
        name = (f"bench-{stamp}-{_slug(str(env.get('device_name')))}-"
                f"{_slug(str(env.get('git_commit'))[:8])}.json")
    record = {"schema": SCHEMA, **env, "ceilings": dataclasses.asdict(ceilings),
              "args": args, "rows": list(rows)}
    path = out / name
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def _json_default(x: Any) -> Any:
    if isinstance(x, torch.dtype):
        return dtype_str(x)
    if isinstance(x, (torch.device, Path)):
        return str(x)
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")
