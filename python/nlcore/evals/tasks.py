"""The evaluation tasks' data: deterministic, byte-level (token ids are byte values 0..255).

Every generator takes its randomness from a `random.Random` passed in (never the global RNG):
the same seed gives the same bytes on every platform and Python version, another seed other
bytes. `rng(*parts)` builds one from a seed and names (a str seed is hashed with SHA-512 by
`random.Random`, so it is independent of PYTHONHASHSEED).

needle in a haystack (`niah_sample`)
    filler text of the corpus with the needle "The code for KEY is VALUE. " planted at byte
    round(depth · F) of the F filler bytes (depth 0: the text starts with the needle, 1: the
    needle ends the filler), then the query "\\nThe code for KEY is " and the answer VALUE.
    KEY: `key_len` upper-case letters, VALUE: `value_len` digits. The sequence is exactly
    `length` bytes and ends with the answer's last byte.

multi-query associative recall (`mqar_sample`)
    `pairs` key-value pairs "KEY:VALUE " (KEY `key_len` distinct lower-case letters, VALUE
    `value_len` digits), the separator "|", then every key once more, in a random order, as
    a query "KEY:VALUE " whose VALUE is the answer; the space between the queries up to
    `length` bytes is filled with "." runs of random lengths.

continual learning (`continual_tasks`)
    a stream of disjoint byte-level corpora: "topics" — the embedded corpus's documentation
    topics (pydoc_data.topics) in sorted order, cut into n groups of about equal size (with
    --data: the corpus cut into n contiguous parts); "permuted" — n contiguous parts of the
    corpus, part k > 0 with its letters remapped by a seeded permutation (task 0 unchanged),
    the text analogue of permuted MNIST. Each task's bytes: the first 90% train, the next 5%
    validation, the last 5% test.
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

NO_ANSWER = -1
NIAH_NEEDLE = "The code for {key} is {value}. "
NIAH_QUERY = "\nThe code for {key} is "
NIAH_MIN_FILLER = 8
KEY_LETTERS = string.ascii_uppercase
MQAR_KEY_LETTERS = string.ascii_lowercase
DIGITS = string.digits
MQAR_SEPARATOR = "|"
MQAR_GAP = "."
CONTINUAL_KINDS = ("permuted", "topics")
HELDOUT_FRACTION = 0.05


def rng(*parts: Any) -> random.Random:
    """A `random.Random` seeded by `parts` joined with "/" (e.g. rng("niah", "test", 0, 128))."""
    return random.Random("/".join(str(p) for p in parts))


# ------------------------------------------------------------------------------ samples
@dataclass
class Sample:
    """One sequence: its bytes, the [start, end) byte spans of its answers and what the
    generator chose (key, value, depth, needle position, ...)."""
    data: bytes
    answers: List[Tuple[int, int]]
    meta: Dict[str, Any] = field(default_factory=dict)

    def answer_bytes(self) -> List[bytes]:
        return [self.data[a:b] for a, b in self.answers]


@dataclass
class TaskBatch:
    """Sequences of one length: `input_ids [N, T]` (int64 byte values) and `answer_id [N, T]`
    (NO_ANSWER = -1 outside answers; inside, the answer's index within its row), with each
    row's `meta`."""
    input_ids: Tensor
    answer_id: Tensor
    meta: List[Dict[str, Any]]

    @classmethod
    def from_samples(cls, samples: Sequence[Sample]) -> "TaskBatch":
        if not samples:
            raise ValueError("TaskBatch.from_samples: no samples")
        lengths = {len(s.data) for s in samples}
        if len(lengths) != 1:
            raise ValueError(f"TaskBatch.from_samples: samples of different lengths {lengths}")
        T = lengths.pop()
        ids = torch.tensor([list(s.data) for s in samples], dtype=torch.long)
        aid = torch.full((len(samples), T), NO_ANSWER, dtype=torch.long)
        for r, s in enumerate(samples):
            for i, (a, b) in enumerate(s.answers):
                if not 1 <= a < b <= T:   # byte 0 has no prediction
                    raise ValueError(f"TaskBatch.from_samples: answer span {(a, b)} outside "
                                     f"[1, {T}]")
                aid[r, a:b] = i
        return cls(ids, aid, [dict(s.meta) for s in samples])

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def labels(self, loss_on: str = "answer") -> Tensor:
        """Training labels for `model(input_ids, labels=...)` (shifted inside the model):
        "answer" — the answer bytes only (every other position -100), "all" — every byte."""
        if loss_on == "all":
            return self.input_ids.clone()
        if loss_on == "answer":
            return self.input_ids.masked_fill(self.answer_id < 0, -100)
        raise ValueError(f"loss_on must be 'answer' or 'all', got {loss_on!r}")

    def slice(self, start: int, stop: int) -> "TaskBatch":
        return TaskBatch(self.input_ids[start:stop], self.answer_id[start:stop],
                         self.meta[start:stop])


def _word(r: random.Random, letters: str, n: int) -> str:
    return "".join(r.choice(letters) for _ in range(n))


def _pos_int(name: str, v: Any, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    return v


# --------------------------------------------------------------------- needle in a haystack
def niah_overhead(key_len: int = 3, value_len: int = 2) -> int:
    """Bytes of a NIAH sequence that are not filler: the needle, the query and the answer."""
    key, value = "K" * key_len, "0" * value_len
    return len(NIAH_NEEDLE.format(key=key, value=value)) + \
        len(NIAH_QUERY.format(key=key)) + value_len


def niah_min_length(key_len: int = 3, value_len: int = 2) -> int:
    """The shortest NIAH sequence: the overhead plus NIAH_MIN_FILLER filler bytes."""
    return niah_overhead(key_len, value_len) + NIAH_MIN_FILLER


def check_niah(length: int, depth: float, key_len: int = 3, value_len: int = 2) -> None:
    _pos_int("niah: key_len", key_len)
    _pos_int("niah: value_len", value_len)
    _pos_int("niah: length", length)
    need = niah_min_length(key_len, value_len)
    if length < need:
        raise ValueError(f"niah: length {length} is too short: the needle, query and answer "
                         f"take {niah_overhead(key_len, value_len)} bytes and at least "
                         f"{NIAH_MIN_FILLER} filler bytes are needed (length >= {need})")
    if isinstance(depth, bool) or not isinstance(depth, (int, float)) or not 0 <= depth <= 1:
        raise ValueError(f"niah: depth must be a number in [0, 1], got {depth!r}")


def niah_sample(length: int, depth: float, r: random.Random, filler: bytes,
                key_len: int = 3, value_len: int = 2) -> Sample:
    """A needle-in-a-haystack sequence of exactly `length` bytes (see the module docstring);
    the filler is a random slice of `filler`. meta: key, value, depth, needle_start,
    needle_end, filler_bytes, filler_offset."""
    check_niah(length, depth, key_len, value_len)
    n_fill = length - niah_overhead(key_len, value_len)
    if len(filler) < n_fill:
        raise ValueError(f"niah: the filler text has {len(filler)} bytes, fewer than the "
                         f"{n_fill} a sequence of length {length} needs")
    off = r.randrange(len(filler) - n_fill + 1)
    text = filler[off:off + n_fill]
    key, value = _word(r, KEY_LETTERS, key_len), _word(r, DIGITS, value_len)
    needle = NIAH_NEEDLE.format(key=key, value=value).encode()
    query = NIAH_QUERY.format(key=key).encode()
    pos = int(round(depth * n_fill))
    data = text[:pos] + needle + text[pos:] + query + value.encode()
    assert len(data) == length
    return Sample(data, [(length - value_len, length)],
                  {"key": key, "value": value, "depth": float(depth), "needle_start": pos,
                   "needle_end": pos + len(needle), "filler_bytes": n_fill,
                   "filler_offset": off, "length": length})


def niah_batch(n: int, length: int, r: random.Random, filler: bytes,
               depth: Optional[float] = None, key_len: int = 3, value_len: int = 2
               ) -> TaskBatch:
    """n sequences of `length` bytes, the needle at `depth` (None: a uniform random depth in
    [0, 1] per sequence)."""
    _pos_int("niah: n", n)
    return TaskBatch.from_samples([
        niah_sample(length, r.random() if depth is None else depth, r, filler, key_len,
                    value_len) for _ in range(n)])


# --------------------------------------------------------------- multi-query associative recall
def mqar_min_length(pairs: int, key_len: int = 2, value_len: int = 2) -> int:
    """The shortest MQAR sequence with `pairs` pairs: every pair and every query once, no
    gaps."""
    unit = key_len + 1 + value_len + 1
    return 2 * pairs * unit + len(MQAR_SEPARATOR)


def check_mqar(length: int, pairs: int, key_len: int = 2, value_len: int = 2) -> None:
    _pos_int("mqar: key_len", key_len)
    _pos_int("mqar: value_len", value_len)
    _pos_int("mqar: pairs", pairs)
    _pos_int("mqar: length", length)
    if pairs > len(MQAR_KEY_LETTERS) ** key_len:
        raise ValueError(f"mqar: {pairs} pairs need more distinct keys than "
                         f"{len(MQAR_KEY_LETTERS)}^{key_len}")
    need = mqar_min_length(pairs, key_len, value_len)
    if length < need:
        raise ValueError(f"mqar: length {length} is too short for {pairs} pairs (their pairs "
                         f"and queries take {need} bytes)")


def mqar_sample(length: int, pairs: int, r: random.Random, key_len: int = 2,
                value_len: int = 2) -> Sample:
    """A multi-query associative recall sequence of exactly `length` bytes (see the module
    docstring). meta: keys, values, query_keys (in query order), pairs."""
    check_mqar(length, pairs, key_len, value_len)
    keys: List[str] = []
    seen = set()
    while len(keys) < pairs:
        k = _word(r, MQAR_KEY_LETTERS, key_len)
        if k not in seen:
            seen.add(k)
            keys.append(k)
    values = [_word(r, DIGITS, value_len) for _ in keys]
    order = list(range(pairs))
    r.shuffle(order)
    unit = key_len + 1 + value_len + 1
    context = "".join(f"{k}:{v} " for k, v in zip(keys, values)) + MQAR_SEPARATOR
    gap_total = length - len(context) - pairs * unit
    # gaps before each query and after the last: a uniform composition of gap_total
    cuts = sorted(r.sample(range(gap_total + pairs), pairs))
    gaps = [c - i for i, c in enumerate(cuts)]                    # nondecreasing
    gaps = [gaps[0]] + [b - a for a, b in zip(gaps, gaps[1:])]
    out, answers = [context], []
    pos = len(context)
    for g, qi in zip(gaps, order):
        out.append(MQAR_GAP * g)
        pos += g
        out.append(f"{keys[qi]}:")
        pos += key_len + 1
        answers.append((pos, pos + value_len))
        out.append(f"{values[qi]} ")
        pos += value_len + 1
    out.append(MQAR_GAP * (length - pos))
    data = "".join(out).encode()
    assert len(data) == length, (len(data), length)
    return Sample(data, answers, {"keys": keys, "values": values,
                                  "query_keys": [keys[i] for i in order], "pairs": pairs,
                                  "length": length})


def mqar_batch(n: int, length: int, pairs: int, r: random.Random, key_len: int = 2,
               value_len: int = 2) -> TaskBatch:
    _pos_int("mqar: n", n)
    return TaskBatch.from_samples([mqar_sample(length, pairs, r, key_len, value_len)
                                   for _ in range(n)])


# ------------------------------------------------------------------------ continual learning
@dataclass
class ContinualTask:
    """One task of the stream: its name and its train / validation / test bytes (uint8)."""
    name: str
    train: Tensor
    val: Tensor
    test: Tensor

    def info(self) -> Dict[str, Any]:
        return {"name": self.name, "train_bytes": len(self.train), "val_bytes": len(self.val),
                "test_bytes": len(self.test)}


def _split3(data: bytes, name: str) -> ContinualTask:
    n = len(data)
    n_held = int(round(n * HELDOUT_FRACTION))
    ids = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return ContinualTask(name, ids[:n - 2 * n_held], ids[n - 2 * n_held:n - n_held],
                         ids[n - n_held:])


def _even_parts(sizes: Sequence[int], n: int) -> List[Tuple[int, int]]:
    """Cut a sequence of items with these sizes into n contiguous groups of about equal
    total size: [(first, stop)] item indices."""
    total = sum(sizes)
    bounds, acc, item = [0], 0, 0
    for g in range(1, n):
        target = total * g / n
        while item < len(sizes) and acc + sizes[item] / 2 <= target:
            acc += sizes[item]
            item += 1
        item = max(item, bounds[-1] + 1)          # every group gets at least one item
        bounds.append(item)
    bounds.append(len(sizes))
    return list(zip(bounds, bounds[1:]))


def _letter_permutation(r: random.Random) -> bytes:
    table = bytearray(range(256))
    for letters in (string.ascii_lowercase, string.ascii_uppercase):
        src = list(letters)
        dst = src[:]
        r.shuffle(dst)
        for a, b in zip(src, dst):
            table[ord(a)] = ord(b)
    return bytes(table)


def continual_tasks(n_tasks: int = 3, kind: str = "permuted", data: Optional[str] = None,
                    seed: int = 0, min_bytes: int = 0) -> List[ContinualTask]:
    """The task stream described in the module docstring. `data`: a text file or folder
    instead of the embedded corpus; `seed`: the letter permutations of "permuted" (the
    "topics" stream does not depend on it); `min_bytes`: every split must hold at least
    this many bytes (else ValueError naming n_tasks)."""
    _pos_int("continual: n_tasks", n_tasks)
    if kind not in CONTINUAL_KINDS:
        raise ValueError(f"continual: kind must be one of {CONTINUAL_KINDS}, got {kind!r}")
    from ..train.data import load_corpus
    if kind == "topics" and data is None:
        try:
            from pydoc_data.topics import topics
        except ImportError:
            topics = None
        if topics is not None:
            names = sorted(topics)
            if n_tasks > len(names):
                raise ValueError(f"continual: n_tasks {n_tasks} is more than the "
                                 f"{len(names)} topics of the embedded corpus")
            texts = [topics[k].encode("utf-8") for k in names]
            tasks = []
            for a, b in _even_parts([len(t) for t in texts], n_tasks):
                label = names[a] if b - a == 1 else f"{names[a]}..{names[b - 1]}"
                tasks.append(_split3(b"".join(texts[a:b]), label))
            _check_task_sizes(tasks, min_bytes)
            return tasks
    corpus = load_corpus(data).data
    step = len(corpus) // n_tasks
    tasks = []
    for k in range(n_tasks):
        part = corpus[k * step:(k + 1) * step]
        if kind == "permuted" and k > 0:
            part = part.translate(_letter_permutation(rng("continual", "permuted", seed, k)))
            name = f"part {k + 1}/{n_tasks} (letters permuted)"
        else:
            name = f"part {k + 1}/{n_tasks}"
        tasks.append(_split3(part, name))
    _check_task_sizes(tasks, min_bytes)
    return tasks


def _check_task_sizes(tasks: List[ContinualTask], min_bytes: int) -> None:
    for t in tasks:
        small = min(len(t.train), len(t.val), len(t.test))
        if small < max(min_bytes, 1):
            raise ValueError(f"continual: n_tasks {len(tasks)} leaves task {t.name!r} with "
                             f"{small} bytes in a split, fewer than {max(min_bytes, 1)} "
                             f"(use fewer tasks, a shorter window or a larger corpus)")


def corpus_filler(data: Optional[str] = None) -> Tuple[bytes, bytes]:
    """NIAH filler text: (the corpus's train split, its validation split) as bytes — training
    sequences take their filler from the first, evaluation sequences from the second."""
    from ..train.data import load_corpus
    train, val = load_corpus(data).split()
    return bytes(train.numpy()), bytes(val.numpy())
