"""Checkpoints of a training run, crash-safe.

Layout of a run folder DIR:

    DIR/checkpoint-STEP/      config.json + model weights (`save_pretrained`), optimizer.pt
                              (the optimizer's state_dict with whole, unsharded CPU tensors,
                              parameters in `m3_param_groups` order) and trainer_state.json
                              (step, run settings, data position, RNG states, file sizes),
                              written last
    DIR/latest                the name of the newest complete checkpoint (one line)
    DIR/log.jsonl, DIR/loss.png (or loss.svg)

A checkpoint is written into DIR/.tmp-checkpoint-STEP-PID/, its files flushed to disk, then
renamed to DIR/checkpoint-STEP (a rename within a folder is atomic), and only then is
DIR/latest replaced (again write-then-rename). An interrupted save leaves at most a
.tmp-… folder, which is never read and is removed by the next save; a checkpoint-STEP folder
is therefore always complete, and trainer_state.json's file sizes catch one damaged later.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, List, Optional

from . import TrainError

FORMAT = "nlcore-train/1"
STATE_NAME = "trainer_state.json"
OPTIM_NAME = "optimizer.pt"
LATEST = "latest"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
_TMP_PREFIX = ".tmp-checkpoint-"


def _fsync_tree(d: Path) -> None:
    for f in d.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(d)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover (platforms without directory fds)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def checkpoints(run_dir: Path) -> List[Path]:
    """The checkpoint-STEP folders of a run, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir()
             if p.is_dir() and (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def save(run_dir: Path, step: int, write: Callable[[Path], dict], keep: Optional[int]) -> Path:
    """Writes checkpoint-`step` through `write(folder) -> trainer state` (the callback writes
    the model and optimizer files; this function adds the file sizes and writes
    trainer_state.json last), renames it into place, points DIR/latest at it and removes
    all but the newest `keep` checkpoints (None: keep all)."""
    for stale in run_dir.glob(_TMP_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = run_dir / f"{_TMP_PREFIX}{step}-{os.getpid()}"
    tmp.mkdir()
    state = write(tmp)
    state = {"format": FORMAT, **state,
             "files": {f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.is_file()}}
    (tmp / STATE_NAME).write_text(json.dumps(state, indent=1) + "\n")
    _fsync_tree(tmp)
    final = run_dir / f"checkpoint-{step}"
    if final.exists():  # the same step saved again (a resumed run that re-ends there)
        old = run_dir / f"{_TMP_PREFIX}old-{step}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(run_dir)
    write_text_atomic(run_dir / LATEST, final.name + "\n")
    if keep is not None:
        for old in checkpoints(run_dir)[:-keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(ckpt: Path) -> dict:
    """trainer_state.json of a checkpoint folder, checked: TrainError if the folder is not a
    complete checkpoint of this format."""
    sp = ckpt / STATE_NAME
    if not sp.is_file():
        raise TrainError(f"{ckpt} is not a complete training checkpoint (no {STATE_NAME}; an "
                         f"interrupted save, or not a checkpoint folder)")
    try:
        state = json.loads(sp.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise TrainError(f"{ckpt}: {STATE_NAME} is unreadable or half-written ({e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainError(f"{ckpt}: {STATE_NAME} is not an nlcore training state (format "
                         f"{state.get('format') if isinstance(state, dict) else None!r}, "
                         f"expected {FORMAT!r})")
    for name, size in state.get("files", {}).items():
        f = ckpt / name
        if not f.is_file():
            raise TrainError(f"{ckpt} is incomplete: {name} is missing")
        if f.stat().st_size != size:
            raise TrainError(f"{ckpt} is damaged: {name} has {f.stat().st_size} bytes, the "
                             f"checkpoint recorded {size}")
    return state


def latest(run_dir: Path) -> Optional[Path]:
    """The checkpoint to resume from: the one DIR/latest names (checked), else the newest
    complete checkpoint-STEP folder; None when the run has none."""
    pointer = run_dir / LATEST
    if pointer.is_file():
        name = pointer.read_text().strip()
        ckpt = run_dir / name
        if not _CKPT_RE.match(name) or not ckpt.is_dir():
            raise TrainError(f"{pointer} names {name!r}, which is not a checkpoint folder of "
                             f"{run_dir}")
        read_state(ckpt)
        return ckpt
    for ckpt in reversed(checkpoints(run_dir)):
        try:
            read_state(ckpt)
        except TrainError:
            continue
        return ckpt
    return None


def resolve(path: str) -> Path:
    """A checkpoint given on the command line: a checkpoint-STEP folder, or a run folder
    (its latest checkpoint), or a plain `save_pretrained` model folder."""
    p = Path(path)
    if not p.exists():
        raise TrainError(f"--checkpoint {path}: no such folder")
    if not p.is_dir():
        raise TrainError(f"--checkpoint {path}: not a folder (give a run folder, a "
                         f"checkpoint-STEP folder or a saved model folder)")
    if p.name.startswith(_TMP_PREFIX):
        raise TrainError(f"--checkpoint {path}: an unfinished checkpoint (a save that was "
                         f"interrupted); use the run folder or a checkpoint-STEP folder")
    if (p / STATE_NAME).is_file() or _CKPT_RE.match(p.name):
        read_state(p)
        return p
    if (p / LATEST).is_file() or checkpoints(p):
        ckpt = latest(p)
        if ckpt is None:
            raise TrainError(f"--checkpoint {path}: the run has no complete checkpoint")
        return ckpt
    if (p / "config.json").is_file():
        return p
    raise TrainError(f"--checkpoint {path}: neither a run folder, a checkpoint-STEP folder "
                     f"nor a saved model (no {LATEST}, {STATE_NAME} or config.json)")
