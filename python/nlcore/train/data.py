"""Byte-level data for language modeling: every byte is a token (vocabulary 256).

The corpus is one byte string:
  * a text file, read as is;
  * a folder: every regular file below it in sorted path order (hidden files and folders,
    and files whose first 8 KiB hold a NUL byte, i.e. binaries, are skipped), joined by "\\n";
  * nothing (the default): the English reference documentation that ships inside every
    CPython, `pydoc_data.topics` (about 460 KB of text: the language reference and library
    topics behind `help()`), topics in sorted order. Its exact bytes depend on the Python
    version; the fingerprint in every log and checkpoint says which corpus was used.

Split: the last `val_fraction` (5%) of the bytes is the validation split, the rest the
training split — deterministic, no shuffling, so validation text is never trained on.

Training batches are windows of `seq_len` bytes starting at uniformly random offsets of the
training split, drawn by a seeded `torch.Generator`; its state and the number of batches
drawn are the "data position" stored in checkpoints (a resumed run draws the same windows).
Under DDP/FSDP every rank draws the same global batch and takes its own rows.

Validation windows: the validation split cut into consecutive, non-overlapping windows of
`seq_len` bytes (a last partial window is dropped); with `max_windows` below their number,
that many windows evenly spaced over the split. Each window is scored on its own (the model
starts from empty memories at the window start), predicting bytes 2..seq_len of the window
from the bytes before them in the window: bits per byte is the mean of those predictions'
cross-entropy (nats) divided by ln 2.
"""
from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import TrainError

EMBEDDED = "pydoc_data.topics"
VAL_FRACTION = 0.05
_BINARY_PROBE = 8192


@dataclass
class Corpus:
    """The bytes of a corpus and where they came from."""
    source: str          # the path as given, or "embedded"
    description: str     # for logs: a path with a file count, or the embedded corpus's name
    data: bytes
    files: int

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.data).hexdigest()[:16]

    def split(self, val_fraction: float = VAL_FRACTION) -> Tuple[Tensor, Tensor]:
        """(train, validation) as uint8 tensors: the last `val_fraction` of the bytes is
        validation."""
        n = len(self.data)
        n_val = int(round(n * val_fraction))
        ids = torch.frombuffer(bytearray(self.data), dtype=torch.uint8)
        return ids[:n - n_val], ids[n - n_val:]

    def info(self) -> dict:
        return {"source": self.source, "description": self.description, "bytes": len(self.data),
                "files": self.files, "fingerprint": self.fingerprint}


def embedded_corpus() -> Corpus:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # a Python built without its documentation
        raise TrainError("the embedded corpus (pydoc_data.topics) is missing from this "
                         "Python; pass --data PATH") from None
    data = "".join(topics[k] for k in sorted(topics)).encode("utf-8")
    version = ".".join(map(str, sys.version_info[:3]))
    return Corpus("embedded", f"CPython {version} documentation ({EMBEDDED}, {len(topics)} "
                  f"topics)", data, len(topics))


def _is_binary(path: Path) -> bool:
    with open(path, "rb") as f:
        return b"\0" in f.read(_BINARY_PROBE)


def load_corpus(path: Optional[str]) -> Corpus:
    """The corpus at `path` (a file or a folder), or the embedded one for None."""
    if path is None:
        return embedded_corpus()
    p = Path(path)
    if not p.exists():
        raise TrainError(f"--data {path}: no such file or folder")
    try:
        if p.is_file():
            data, files = p.read_bytes(), 1
        elif p.is_dir():
            parts = []
            for root, dirs, names in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    f = Path(root) / name
                    if name.startswith(".") or not f.is_file() or _is_binary(f):
                        continue
                    parts.append(f.read_bytes())
            data, files = b"\n".join(parts), len(parts)
        else:
            raise TrainError(f"--data {path}: not a regular file or a folder")
    except OSError as e:
        raise TrainError(f"--data {path}: cannot read it ({e.strerror or e})") from None
    if not data.strip():
        what = "file" if p.is_file() else f"folder ({files} text files)"
        raise TrainError(f"--data {path}: the corpus is empty (the {what} holds no text)")
    desc = str(p) if p.is_file() else f"{p} ({files} files)"
    return Corpus(str(path), desc, data, files)


def check_sizes(train: Tensor, val: Tensor, seq_len: int, what: str) -> None:
    """A clear error when a split cannot give one window of seq_len bytes."""
    if len(train) < seq_len + 1 or len(val) < seq_len:
        need = int((seq_len + 1) / VAL_FRACTION) + 1
        raise TrainError(f"{what}: {len(train) + len(val)} bytes are too few for --seq-len "
                         f"{seq_len} (the validation split, the last {VAL_FRACTION:.0%}, needs "
                         f"at least {seq_len} bytes: about {need} bytes in all); use a larger "
                         f"corpus or a smaller --seq-len")


class WindowSampler:
    """Batches `[B, L]` (int64) of random training windows from a seeded generator; its
    state (generator + batches drawn) is the data position that checkpoints save."""

    def __init__(self, tokens: Tensor, seq_len: int, batch_size: int, seed: int):
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn = 0
        self._offsets = torch.arange(seq_len)

    def next(self) -> Tensor:
        starts = torch.randint(0, len(self.tokens) - self.seq_len + 1, (self.batch_size,),
                               generator=self.generator)
        self.drawn += 1
        return self.tokens[starts[:, None] + self._offsets].long()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.drawn = int(state["drawn"])


def validation_windows(val: Tensor, seq_len: int, max_windows: Optional[int] = None) -> Tensor:
    """The validation windows `[N, seq_len]` (int64) described in the module docstring."""
    n_all = len(val) // seq_len
    idx = torch.arange(n_all)
    if max_windows is not None and max_windows < n_all:
        idx = torch.linspace(0, n_all - 1, max_windows).round().long().unique()
    starts = idx * seq_len
    return val[starts[:, None] + torch.arange(seq_len)].long()
