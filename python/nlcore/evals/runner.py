"""The runners behind `nlcore eval --task niah|mqar|continual`: train every model of --models
(hope and transformer by default: the same preset, the same initial seed, the same batches,
optimizer, schedule and number of steps) once per learning rate of --lrs, keep for each
model the learning rate that does best on a held-out validation set, score that model on a
separate test set, print a table, write OUT/TASK.json and a heat map OUT/TASK.png (or .svg).

niah / mqar — training: `steps` steps of `batch_size` freshly generated sequences (NIAH:
a length of --lengths and a uniform random depth per step/sequence; MQAR: a (pairs, length)
cell of the grid per step), loss on the answer bytes (--loss-on all: on every byte). The
validation and test sets: `eval_examples` sequences per cell of the grid (depth x length,
pairs x length), generated from seeds of their own (NIAH filler from the corpus's held-out
split), identical for every model. The score: exact-match accuracy of the answers (see
scoring.py); the sweep picks the highest validation accuracy, then byte accuracy, then the
lowest answer cross-entropy.

continual — the task stream of tasks.continual_tasks; for each task in order, `steps` steps
on random windows of `seq_len` bytes of its training split (one optimizer for the whole
stream, the schedule restarted per task), then bits per byte of every task's validation and
test windows (at most `max_windows` evenly spaced windows each). Reported: the test matrix
R[i][j] (bits per byte on task j after training through task i), its final average,
plasticity and forgetting (scoring.continual_summary); the sweep picks the lowest final
average validation bits per byte.

--checkpoint: instead of --models, the saved model (its weights as the starting point; for
niah / mqar --steps defaults to 0 then: the model scored as loaded).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import tasks as T
from .plot import Panel, plot_heatmaps
from .scoring import AnswerScore, continual_summary, score_model
from .training import (OPTIMIZERS, EvalError, build_model, check_models, check_preset, fit,
                       load_checkpoint, make_optimizer, n_params)

TASKS = ("bpb", "niah", "mqar", "continual")
RUNNER_TASKS = TASKS[1:]
LOSS_ON = ("answer", "all")
DEFAULT_MODELS = ("hope", "transformer")
DEFAULT_LRS = (1e-3, 3e-3)
# sized so that a whole task (both models, both learning rates) takes minutes on 2 CPU cores
# with the tiny preset
DEFAULT_STEPS = {"niah": 150, "mqar": 150, "continual": 50}
DEFAULT_LENGTHS = {"niah": (64, 128), "mqar": (64, 128)}
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_PAIRS = (2, 4, 8)
DEFAULT_BATCH = 16
DEFAULT_EVAL_EXAMPLES = 16
DEFAULT_SEQ_LEN = 64
DEFAULT_MAX_WINDOWS = 32
DEFAULT_N_TASKS = 3


@dataclass
class EvalArgs:
    """The options of `nlcore eval --task niah|mqar|continual` (None: the task's default)."""
    task: str
    models: Union[None, str, Sequence[str]] = None      # default: hope, transformer
    preset: str = "tiny"
    steps: Optional[int] = None                          # continual: steps per task
    lrs: Optional[Sequence[float]] = None
    seed: int = 0
    out: Optional[str] = None                            # default ./eval-TASK
    device: Optional[str] = None
    batch_size: Optional[int] = None
    optimizer: str = "adamw"
    checkpoint: Optional[str] = None
    data: Optional[str] = None
    json: Optional[str] = None
    eval_examples: Optional[int] = None                  # niah / mqar: per grid cell
    lengths: Optional[Sequence[int]] = None              # niah / mqar
    depths: Optional[Sequence[float]] = None             # niah
    pairs: Optional[Sequence[int]] = None                # mqar
    loss_on: str = "answer"                              # niah / mqar
    n_tasks: Optional[int] = None                        # continual
    stream: str = "permuted"                             # continual
    seq_len: Optional[int] = None                        # continual
    max_windows: Optional[int] = None                    # continual
    progress: bool = True
    plot: bool = True


# ------------------------------------------------------------------ checking the options


def _int(name: str, v: Any, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise EvalError(f"--{name.replace('_', '-')} must be an int >= {low}, got {v!r}")
    return v


def _int_list(name: str, vs: Sequence[Any], low: int) -> List[int]:
    vs = list(vs)
    if not vs:
        raise EvalError(f"--{name}: give at least one value")
    for v in vs:
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise EvalError(f"--{name} {','.join(map(str, vs))}: every value must be an int "
                            f">= {low}, got {v!r}")
    if len(set(vs)) != len(vs):
        raise EvalError(f"--{name} {','.join(map(str, vs))}: a value is given twice")
    return vs


def _lrs(vs: Optional[Sequence[Any]]) -> List[float]:
    vs = list(DEFAULT_LRS if vs is None else vs)
    if not vs:
        raise EvalError("--lrs: give at least one learning rate")
    for v in vs:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v <= 0:
            raise EvalError(f"--lrs: every learning rate must be a finite number > 0, got "
                            f"{v!r}")
    return [float(v) for v in vs]


@dataclass
class _Entry:
    """A contestant: its label, how to build it afresh and where it came from."""
    label: str
    build: Callable[[], nn.Module]
    source: str


def _entries(a: EvalArgs, device: torch.device) -> List[_Entry]:
    if a.checkpoint is not None:
        if a.models is not None:
            raise EvalError("--models and --checkpoint: give one of them (--checkpoint "
                            "evaluates the saved model)")
        _, kind = load_checkpoint(a.checkpoint, device)   # fails early on a bad folder
        return [_Entry(kind, lambda: load_checkpoint(a.checkpoint, device)[0],
                       f"checkpoint {a.checkpoint}")]
    names = check_models(list(DEFAULT_MODELS) if a.models is None else a.models)
    out = []
    for name in names:
        check_preset(name, a.preset)          # before anything trains
        out.append(_Entry(name, (lambda n=name: build_model(n, a.preset, a.seed, device)),
                          f"preset {a.preset}, seed {a.seed}"))
    return out


# ------------------------------------------------------------------ the retrieval grids


class _Grid:
    """A retrieval task's grid, data and labels (NIAH: depth x length; MQAR: pairs x
    length)."""
    task: str
    row_title: str
    row_key: str            # the row value's name in the JSON cells
    col_title = "length"
    rows: List[Any]
    cols: List[int]
    chance: float

    def feasible(self, row, col) -> bool:
        return True

    def cells(self) -> List[Tuple[Any, int]]:
        return [(r, c) for r in self.rows for c in self.cols if self.feasible(r, c)]

    def eval_batch(self, cell, split: str, n: int, seed: int) -> T.TaskBatch:
        raise NotImplementedError

    def train_batch(self, r, n: int) -> T.TaskBatch:
        raise NotImplementedError

    def row_label(self, v) -> str:
        return str(v)

    def settings(self) -> Dict[str, Any]:
        raise NotImplementedError


class _Niah(_Grid):
    task, row_title, row_key = "niah", "needle depth", "depth"
    key_len, value_len = 3, 2

    def __init__(self, a: EvalArgs):
        self.cols = _int_list("lengths", a.lengths or DEFAULT_LENGTHS["niah"], 2)
        depths = list(DEFAULT_DEPTHS if a.depths is None else a.depths)
        if not depths:
            raise EvalError("--depths: give at least one depth")
        for d in depths:
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d <= 1:
                raise EvalError(f"--depths {','.join(map(str, depths))}: every depth must be "
                                f"a number in [0, 1] (0: the needle starts the text, 1: it "
                                f"ends it), got {d!r}")
        if len(set(depths)) != len(depths):
            raise EvalError(f"--depths {','.join(map(str, depths))}: a value is given twice")
        self.rows = [float(d) for d in depths]
        need = T.niah_min_length(self.key_len, self.value_len)
        short = [L for L in self.cols if L < need]
        if short:
            raise EvalError(f"--lengths {','.join(map(str, self.cols))}: {short[0]} is too "
                            f"short for a needle in a haystack: the needle, the query and the "
                            f"answer take {T.niah_overhead(self.key_len, self.value_len)} "
                            f"bytes, plus at least {T.NIAH_MIN_FILLER} bytes of filler "
                            f"(lengths >= {need})")
        self.filler_train, self.filler_eval = T.corpus_filler(a.data)
        longest = max(self.cols) - T.niah_overhead(self.key_len, self.value_len)
        for what, text in (("train", self.filler_train), ("validation", self.filler_eval)):
            if len(text) < longest:
                raise EvalError(f"--data {a.data}: its {what} split has {len(text)} bytes, "
                                f"too few filler for --lengths {max(self.cols)}")
        self.chance = 10.0 ** -self.value_len

    def row_label(self, v) -> str:
        return f"{v:g}"

    def eval_batch(self, cell, split, n, seed):
        depth, length = cell
        return T.niah_batch(n, length, T.rng("niah", split, seed, length, depth),
                            self.filler_eval, depth, self.key_len, self.value_len)

    def train_batch(self, r, n):
        return T.niah_batch(n, r.choice(self.cols), r, self.filler_train, None, self.key_len,
                            self.value_len)

    def settings(self):
        return {"lengths": self.cols, "depths": self.rows, "key_len": self.key_len,
                "value_len": self.value_len, "needle": T.NIAH_NEEDLE, "query": T.NIAH_QUERY}


class _Mqar(_Grid):
    task, row_title, row_key = "mqar", "key-value pairs", "pairs"
    key_len, value_len = 2, 2

    def __init__(self, a: EvalArgs):
        self.cols = _int_list("lengths", a.lengths or DEFAULT_LENGTHS["mqar"], 2)
        self.rows = _int_list("pairs", DEFAULT_PAIRS if a.pairs is None else a.pairs, 1)
        limit = len(T.MQAR_KEY_LETTERS) ** self.key_len
        if max(self.rows) > limit:
            raise EvalError(f"--pairs: at most {limit} pairs (distinct 2-letter keys), got "
                            f"{max(self.rows)}")
        if not self.cells():
            need = T.mqar_min_length(min(self.rows), self.key_len, self.value_len)
            raise EvalError(f"--lengths {','.join(map(str, self.cols))} / --pairs "
                            f"{','.join(map(str, self.rows))}: no length fits any number of "
                            f"pairs ({min(self.rows)} pairs need length >= {need}: "
                            f"{2 + self.key_len + self.value_len} bytes per pair and per query "
                            f"and a separator)")
        self.chance = 10.0 ** -self.value_len

    def feasible(self, pairs, length):
        return T.mqar_min_length(pairs, self.key_len, self.value_len) <= length

    def eval_batch(self, cell, split, n, seed):
        pairs, length = cell
        return T.mqar_batch(n, length, pairs, T.rng("mqar", split, seed, length, pairs),
                            self.key_len, self.value_len)

    def train_batch(self, r, n):
        pairs, length = r.choice(self.cells())
        return T.mqar_batch(n, length, pairs, r, self.key_len, self.value_len)

    def settings(self):
        return {"lengths": self.cols, "pairs": self.rows, "key_len": self.key_len,
                "value_len": self.value_len,
                "cells_skipped": [[p, L] for p in self.rows for L in self.cols
                                  if not self.feasible(p, L)]}


# ------------------------------------------------------------------ shared helpers


def _progress(enabled: bool, steps: int, desc: str):
    from ..train.progress import Progress
    return Progress(steps, 0, enabled=enabled and steps > 0, desc=desc)


def _fmt_pct(x: Optional[float]) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def _fmt_num(x: Optional[float], digits: int = 3) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _table(header: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)   # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] +
                     [line(r) for r in rows])


def _strict(obj):
    """obj with non-finite floats as None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def _write_json(path: Path, rec: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_strict(rec), indent=1) + "\n")
    except OSError as e:
        raise EvalError(f"cannot write {path}: {e.strerror or e}") from None


def _out_dir(a: EvalArgs) -> Path:
    out = Path(a.out or f"eval-{a.task}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EvalError(f"--out {out}: cannot create it ({e.strerror or e})") from None
    return out


def _common(a: EvalArgs) -> Dict[str, Any]:
    if a.task == "bpb":
        raise EvalError("--task bpb is not run here: it is nlcore.train.evaluate.run_eval "
                        "(`nlcore eval --checkpoint DIR`)")
    if a.task not in RUNNER_TASKS:
        raise EvalError(f"--task must be one of {', '.join(TASKS)}, got {a.task!r}")
    s: Dict[str, Any] = {}
    default_steps = 0 if (a.checkpoint is not None and a.task != "continual") \
        else DEFAULT_STEPS[a.task]
    s["steps"] = _int("steps", default_steps if a.steps is None else a.steps,
                      1 if a.task == "continual" else 0)
    s["lrs"] = _lrs(a.lrs)
    s["seed"] = _int("seed", a.seed, 0)
    s["batch_size"] = _int("batch_size", DEFAULT_BATCH if a.batch_size is None
                           else a.batch_size, 1)
    if a.optimizer not in OPTIMIZERS:
        raise EvalError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got "
                        f"{a.optimizer!r}")
    s["optimizer"] = a.optimizer
    if not isinstance(a.preset, str) or not a.preset:
        raise EvalError(f"--preset must be a preset name, got {a.preset!r}")
    s["preset"] = a.preset
    return s


def run_task(a: EvalArgs) -> dict:
    """Runs one task (see the module docstring); prints the table and returns the record
    also written to the JSON file."""
    from ..train.evaluate import pick_device
    s = _common(a)
    device = pick_device(a.device)
    if a.task == "continual":
        return _run_continual(a, s, device)
    if a.loss_on not in LOSS_ON:
        raise EvalError(f"--loss-on must be one of {', '.join(LOSS_ON)}, got {a.loss_on!r}")
    s["loss_on"] = a.loss_on
    s["eval_examples"] = _int("eval_examples", DEFAULT_EVAL_EXAMPLES if a.eval_examples is None
                              else a.eval_examples, 1)
    grid = _Niah(a) if a.task == "niah" else _Mqar(a)
    return _run_retrieval(a, s, grid, device)


# ------------------------------------------------------------------ niah / mqar


def _score_cells(model, sets, batch_size, device) -> Tuple[AnswerScore, Dict[Any, AnswerScore]]:
    per = {cell: score_model(model, b, batch_size, device) for cell, b in sets.items()}
    total = AnswerScore()
    for sc in per.values():
        total = total + sc
    return total, per


def _rank(sc: AnswerScore) -> Tuple[float, float, float]:
    nll = sc.answer_nll
    return (sc.accuracy, sc.byte_accuracy, -nll if math.isfinite(nll) else -math.inf)


def _run_retrieval(a: EvalArgs, s: Dict[str, Any], grid: _Grid, device: torch.device) -> dict:
    t_start = time.perf_counter()
    entries = _entries(a, device)
    out = _out_dir(a)
    cells = grid.cells()
    n, seed, B = s["eval_examples"], s["seed"], s["batch_size"]
    val_sets = {c: grid.eval_batch(c, "val", n, seed) for c in cells}
    test_sets = {c: grid.eval_batch(c, "test", n, seed) for c in cells}
    print(f"nlcore eval --task {grid.task}: {', '.join(e.label for e in entries)}; "
          f"{len(cells)} cells x {n} sequences (validation and test); "
          + (f"{s['steps']} steps x {B} sequences per learning rate "
             f"{', '.join(f'{lr:g}' for lr in s['lrs'])} ({s['optimizer']}, loss on "
             f"{s['loss_on']} bytes)" if s["steps"] else "no training (--steps 0)")
          + f" on {device}", flush=True)
    models_rec: Dict[str, Any] = {}
    for e in entries:
        sweep, best = [], None
        if s["steps"] == 0:
            model = e.build()
            val, _ = _score_cells(model, val_sets, B, device)
            best = (None, model, val)
            sweep.append({"lr": None, "steps": 0, "val": val.to_dict()})
        for lr in (s["lrs"] if s["steps"] else []):
            model = e.build()
            opt = make_optimizer(model, s["optimizer"], lr, device)
            r = T.rng(grid.task, "train", seed)        # the same batches for every run

            def next_batch(step, r=r):
                b = grid.train_batch(r, B)
                return b.input_ids, b.labels(s["loss_on"])

            bar = _progress(a.progress, s["steps"], f"{e.label} lr {lr:g}")
            try:
                res = fit(model, opt, next_batch, s["steps"], device,
                          on_step=lambda st, loss: bar.update(st, loss=f"{loss:.3f}"))
            finally:
                bar.close()
            rec = {"lr": lr, "steps": res.steps, "diverged": res.diverged,
                   "final_train_loss": res.final_loss, "train_seconds": round(res.seconds, 2)}
            if res.diverged:
                print(f"  {e.label} lr {lr:g}: diverged at step {res.steps}", flush=True)
                rec["val"] = None
            else:
                val, _ = _score_cells(model, val_sets, B, device)
                rec["val"] = val.to_dict()
                print(f"  {e.label} lr {lr:g}: validation accuracy {_fmt_pct(val.accuracy)}, "
                      f"byte accuracy {_fmt_pct(val.byte_accuracy)}, answer loss "
                      f"{_fmt_num(val.answer_nll)} ({res.seconds:.1f}s training)", flush=True)
                if best is None or _rank(val) > _rank(best[2]):
                    best = (lr, model, val)
            sweep.append(rec)
        entry_rec: Dict[str, Any] = {"source": e.source, "lr_sweep": sweep,
                                     "best_lr": best[0] if best else None, "test": None}
        if best is not None:
            model = best[1]
            entry_rec["params"] = n_params(model)
            total, per = _score_cells(model, test_sets, B, device)
            entry_rec["test"] = {**total.to_dict(), "cells": [
                {grid.row_key: c[0], "length": c[1],
                 **per[c].to_dict()} for c in cells]}
            entry_rec["_per"] = per
        models_rec[e.label] = entry_rec
    # ---- the table
    labels = list(models_rec)
    header = [grid.col_title, grid.row_title] + labels
    rows = []
    for (rv, L) in sorted(cells, key=lambda c: (c[1], grid.rows.index(c[0]))):
        rows.append([str(L), grid.row_label(rv)] + [
            _fmt_pct(models_rec[m]["_per"][(rv, L)].accuracy) if "_per" in models_rec[m]
            else "-" for m in labels])
    rows.append(["all", ""] + [_fmt_pct((models_rec[m]["test"] or {}).get("accuracy"))
                               for m in labels])
    rows.append(["byte accuracy", ""] + [
        _fmt_pct((models_rec[m]["test"] or {}).get("byte_accuracy")) for m in labels])
    rows.append(["answer loss (nats)", ""] + [
        _fmt_num((models_rec[m]["test"] or {}).get("answer_nll")) for m in labels])
    rows.append(["best lr", ""] + [
        "-" if models_rec[m]["best_lr"] is None else f"{models_rec[m]['best_lr']:g}"
        for m in labels])
    rows.append(["parameters", ""] + [f"{models_rec[m].get('params', 0):,}" for m in labels])
    rows.append(["training seconds", ""] + [
        f"{sum(x.get('train_seconds', 0) for x in models_rec[m]['lr_sweep']):.0f}"
        for m in labels])
    print(f"\n{grid.task}: test accuracy (all answer bytes right, teacher-forced argmax), "
          f"{n} sequences per cell; chance {100 * grid.chance:g}%")
    print(_table(header, rows))
    # ---- plot and JSON
    plot_path = None
    if a.plot:
        panels = []
        for m in labels:
            per = models_rec[m].get("_per")
            vals = [[(per[(rv, L)].accuracy if per is not None and (rv, L) in per else None)
                     for L in grid.cols] for rv in grid.rows]
            lr = models_rec[m]["best_lr"]
            panels.append(Panel(f"{m}" + (f" (lr {lr:g})" if lr is not None else ""), vals,
                                [grid.row_label(v) for v in grid.rows],
                                [str(c) for c in grid.cols], grid.row_title, grid.col_title))
        plot_path, line = plot_heatmaps(panels, out / grid.task,
                                        f"{grid.task}: test accuracy", vmin=0.0, vmax=1.0,
                                        label="accuracy")
        print(line)
    for m in labels:
        models_rec[m].pop("_per", None)
    rec = {"task": grid.task, "settings": {**s, "models": labels, **grid.settings(),
                                          "checkpoint": a.checkpoint, "data": a.data},
           "scoring": "exact match: every answer byte is the argmax of the model's "
                      "next-byte logits given the true bytes before it (teacher-forced; "
                      "equal to greedy decoding for exact match)",
           "chance": grid.chance, "models": models_rec,
           "plot": str(plot_path) if plot_path else None,
           "seconds": round(time.perf_counter() - t_start, 2), "device": str(device),
           "torch": torch.__version__}
    path = Path(a.json) if a.json else out / f"{grid.task}.json"
    _write_json(path, rec)
    print(f"json: {path}")
    rec["json"] = str(path)
    return rec


# ------------------------------------------------------------------ continual


def _bpb(model, windows, batch_size, device) -> float:
    from ..train.evaluate import cross_entropy_sum, metrics
    return metrics(cross_entropy_sum(model, windows, batch_size, device).cpu())["bits_per_byte"]


def _run_continual(a: EvalArgs, s: Dict[str, Any], device: torch.device) -> dict:
    from ..train.data import WindowSampler, validation_windows
    t_start = time.perf_counter()
    L = _int("seq_len", DEFAULT_SEQ_LEN if a.seq_len is None else a.seq_len, 2)
    K = _int("n_tasks", DEFAULT_N_TASKS if a.n_tasks is None else a.n_tasks, 1)
    W = _int("max_windows", DEFAULT_MAX_WINDOWS if a.max_windows is None
             else a.max_windows, 1)
    if a.stream not in T.CONTINUAL_KINDS:
        raise EvalError(f"--stream must be one of {', '.join(T.CONTINUAL_KINDS)}, got "
                        f"{a.stream!r}")
    try:
        stream = T.continual_tasks(K, a.stream, a.data, s["seed"], min_bytes=L + 1)
    except ValueError as e:
        msg = str(e).replace("continual: n_tasks", "--n-tasks")
        raise EvalError(msg) from None
    entries = _entries(a, device)
    out = _out_dir(a)
    s.update(seq_len=L, n_tasks=K, max_windows=W, stream=a.stream)
    win = {split: [validation_windows(getattr(t, split), L, W) for t in stream]
           for split in ("val", "test")}
    B, steps = s["batch_size"], s["steps"]
    print(f"nlcore eval --task continual: {', '.join(e.label for e in entries)}; {K} tasks "
          f"({a.stream}): " + "; ".join(t.name for t in stream) + f"; {steps} steps x {B} "
          f"windows of {L} bytes per task, learning rates "
          f"{', '.join(f'{lr:g}' for lr in s['lrs'])} ({s['optimizer']}) on {device}",
          flush=True)

    def matrix_row(model, split):
        return [_bpb(model, w, B, device) for w in win[split]]

    models_rec: Dict[str, Any] = {}
    for e in entries:
        sweep, best = [], None
        for lr in s["lrs"]:
            model = e.build()
            opt = make_optimizer(model, s["optimizer"], lr, device)
            initial = matrix_row(model, "test")
            val_R, test_R, diverged, secs = [], [], False, 0.0
            for i, task in enumerate(stream):
                gseed = T.rng("continual", "train", s["seed"], i).getrandbits(62)
                sampler = WindowSampler(task.train, L, B, gseed)

                def next_batch(step, sampler=sampler):
                    x = sampler.next()
                    return x, x

                bar = _progress(a.progress, steps, f"{e.label} lr {lr:g} task {i + 1}/{K}")
                try:
                    res = fit(model, opt, next_batch, steps, device,
                              on_step=lambda st, loss: bar.update(st, loss=f"{loss:.3f}"))
                finally:
                    bar.close()
                secs += res.seconds
                if res.diverged:
                    diverged = True
                    print(f"  {e.label} lr {lr:g}: diverged on task {i + 1} at step "
                          f"{res.steps}", flush=True)
                    break
                val_R.append(matrix_row(model, "val"))
                test_R.append(matrix_row(model, "test"))
            rec: Dict[str, Any] = {"lr": lr, "diverged": diverged,
                                   "train_seconds": round(secs, 2)}
            if not diverged:
                val_avg = sum(val_R[-1]) / K
                rec["val_final_average_bpb"] = val_avg
                print(f"  {e.label} lr {lr:g}: final average validation {val_avg:.4f} bits "
                      f"per byte ({secs:.1f}s training)", flush=True)
                if not math.isfinite(val_avg):
                    rec["diverged"] = True
                elif best is None or val_avg < best[2]:
                    best = (lr, test_R, val_avg, initial, val_R, model)
            sweep.append(rec)
        entry_rec: Dict[str, Any] = {"source": e.source, "lr_sweep": sweep,
                                     "best_lr": best[0] if best else None}
        if best is not None:
            entry_rec.update(params=n_params(best[5]), test_matrix_bpb=best[1],
                             val_matrix_bpb=best[4], initial_test_bpb=best[3],
                             summary=continual_summary(best[1]))
        models_rec[e.label] = entry_rec
    labels = list(models_rec)
    # ---- the tables
    print(f"\ncontinual: test bits per byte; row i: after training on tasks 1..i "
          f"(lower is better)")
    names = [f"task {j + 1}" for j in range(K)]
    for m in labels:
        r = models_rec[m]
        if r["best_lr"] is None:
            print(f"{m}: every learning rate diverged")
            continue
        print(f"{m} (lr {r['best_lr']:g})")
        rows = [["before training"] + [_fmt_num(v) for v in r["initial_test_bpb"]]]
        rows += [[f"after task {i + 1}"] + [_fmt_num(v) for v in row]
                 for i, row in enumerate(r["test_matrix_bpb"])]
        print(_table([""] + names, rows))
    summary_rows = []
    for key, what in (("final_average", "final average bpb"),
                      ("plasticity", "plasticity (bpb right after each task)"),
                      ("average_forgetting", "average forgetting (bpb)")):
        summary_rows.append([what] + [
            _fmt_num((models_rec[m].get("summary") or {}).get(key)) for m in labels])
    summary_rows.append(["best lr"] + ["-" if models_rec[m]["best_lr"] is None
                                       else f"{models_rec[m]['best_lr']:g}" for m in labels])
    summary_rows.append(["parameters"] + [f"{models_rec[m].get('params', 0):,}"
                                          for m in labels])
    summary_rows.append(["training seconds"] + [
        f"{sum(x['train_seconds'] for x in models_rec[m]['lr_sweep']):.0f}" for m in labels])
    print()
    print(_table(["summary"] + labels, summary_rows))
    plot_path = None
    if a.plot:
        panels = []
        for m in labels:
            r = models_rec[m]
            vals = r.get("test_matrix_bpb") or [[None] * K for _ in range(K)]
            title = m + (f" (lr {r['best_lr']:g})" if r["best_lr"] is not None else "")
            panels.append(Panel(title, vals, [f"after {i + 1}" for i in range(K)],
                                [str(j + 1) for j in range(K)], "trained through task",
                                "evaluated on task"))
        plot_path, line = plot_heatmaps(panels, out / "continual",
                                        "continual: test bits per byte", fmt="{:.2f}",
                                        reverse=True, label="bits per byte")
        print(line)
    rec = {"task": "continual", "settings": {**s, "models": labels,
                                            "checkpoint": a.checkpoint, "data": a.data},
           "tasks": [t.info() for t in stream],
           "scoring": "bits per byte (mean cross-entropy / ln 2) on consecutive windows of "
                      "each task's test split, each window from empty memories; "
                      "forgetting = final minus best earlier value",
           "models": models_rec, "plot": str(plot_path) if plot_path else None,
           "seconds": round(time.perf_counter() - t_start, 2), "device": str(device),
           "torch": torch.__version__}
    path = Path(a.json) if a.json else out / "continual.json"
    _write_json(path, rec)
    print(f"json: {path}")
    rec["json"] = str(path)
    return rec


# ------------------------------------------------------------------ the public entry points


def run_niah(**kw) -> dict:
    """`run_task(EvalArgs(task="niah", **kw))`."""
    return run_task(EvalArgs(task="niah", **kw))


def run_mqar(**kw) -> dict:
    return run_task(EvalArgs(task="mqar", **kw))


def run_continual(**kw) -> dict:
    return run_task(EvalArgs(task="continual", **kw))
