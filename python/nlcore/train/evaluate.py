"""Bits per byte on validation windows, and the `nlcore eval` / `nlcore generate` commands.

bits_per_byte = (Σ over windows and predicted positions of −ln p(byte)) / (number of
predictions) / ln 2, on the windows of `data.validation_windows` (each window scored from
empty memories; its first byte is context only). Lower is better; 8 is a uniform guess.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import TrainError
from . import checkpoint as ckpt_io
from .data import VAL_FRACTION, check_sizes, load_corpus, validation_windows

LN2 = math.log(2.0)


@torch.no_grad()
def cross_entropy_sum(model: nn.Module, windows: Tensor, batch_size: int,
                      device: torch.device, rank: int = 0, world: int = 1) -> Tensor:
    """[Σ nats, number of predictions] (float64, on `device`) over this rank's share of the
    windows (windows rank, rank + world, …); every rank runs the same number of forward
    calls (a rank short of windows runs one with weight 0), as FSDP needs."""
    mine = windows[rank::world]
    per_rank = -(-len(windows) // world)
    n_batches = -(-per_rank // batch_size)
    acc = torch.zeros(2, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    try:
        for i in range(n_batches):
            x = mine[i * batch_size:(i + 1) * batch_size]
            weight = 1.0
            if len(x) == 0:
                x, weight = windows[:1], 0.0
            x = x.to(device)
            logits = model(x).logits[:, :-1]
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                 x[:, 1:].reshape(-1), reduction="sum")
            acc[0] += weight * ce.double()
            acc[1] += weight * x[:, 1:].numel()
    finally:
        model.train(was_training)
    return acc


def metrics(acc: Tensor) -> dict:
    nats = float(acc[0]) / max(float(acc[1]), 1.0)
    return {"loss": nats, "bits_per_byte": nats / LN2, "perplexity": math.exp(min(nats, 700)),
            "predictions": int(acc[1])}


# ------------------------------------------------------------------ loading for eval/generate


@dataclass
class Loaded:
    model: nn.Module
    path: Path
    state: Optional[dict]   # trainer_state.json, None for a plain saved model


def load_model(path: str, device: torch.device) -> Loaded:
    from ..models import from_pretrained

    ckpt = ckpt_io.resolve(path)
    state = ckpt_io.read_state(ckpt) if (ckpt / ckpt_io.STATE_NAME).is_file() else None
    try:
        model = from_pretrained(ckpt)   # Hope or Transformer, by config.json's model_type
    except (FileNotFoundError, ValueError, ImportError, TypeError) as e:
        raise TrainError(f"cannot load the model in {ckpt}: {e}") from None
    return Loaded(model.to(device).eval(), ckpt, state)


def pick_device(name: Optional[str]) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise TrainError(f"--device {name}: not a device (cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"--device {name}: torch sees no CUDA device here")
    if dev.type not in ("cpu", "cuda"):
        raise TrainError(f"--device {name}: only cpu and cuda are supported")
    return dev


# ------------------------------------------------------------------ nlcore eval


def run_eval(checkpoint: str, data: Optional[str] = None, split: str = "val",
             seq_len: Optional[int] = None, batch_size: int = 16,
             max_windows: Optional[int] = None, device: Optional[str] = None,
             json_path: Optional[str] = None) -> dict:
    """`nlcore eval`: prints a table and writes the JSON record (default CHECKPOINT/eval.json
    next to the weights); returns the record."""
    dev = pick_device(device)
    loaded = load_model(checkpoint, dev)
    run = (loaded.state or {}).get("run", {})
    L = seq_len or run.get("seq_len") or 256
    if L < 2:
        raise TrainError(f"--seq-len must be >= 2, got {L}")
    if batch_size < 1:
        raise TrainError(f"--batch-size must be >= 1, got {batch_size}")
    if max_windows is not None and max_windows < 1:
        raise TrainError(f"--max-windows must be >= 1, got {max_windows}")
    corpus = load_corpus(data)
    train, val = corpus.split()
    if split == "val":
        check_sizes(train, val, L, f"--data {data}" if data else "the embedded corpus")
        tokens = val
    elif split == "train":
        tokens = train
    else:
        tokens = torch.cat([train, val])
    if len(tokens) < L:
        raise TrainError(f"the {split} split has {len(tokens)} bytes, fewer than one window of "
                         f"--seq-len {L}")
    windows = validation_windows(tokens, L, max_windows)
    t0 = time.perf_counter()
    acc = cross_entropy_sum(loaded.model, windows, batch_size, dev)
    m = metrics(acc)
    rec = {
        "checkpoint": str(loaded.path),
        "step": (loaded.state or {}).get("step"),
        "data": corpus.info(),
        "split": split,
        "val_fraction": VAL_FRACTION,
        "seq_len": L,
        "windows": len(windows),
        **m,
        "seconds": round(time.perf_counter() - t0, 3),
        "device": str(dev),
        "torch": torch.__version__,
    }
    if not math.isfinite(m["loss"]):
        print("warning: the loss is not finite (the model diverged on some window)",
              file=sys.stderr)
    out = Path(json_path) if json_path else loaded.path / "eval.json"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in rec.items()}                     # strict JSON: no NaN
        out.write_text(json.dumps(clean, indent=1) + "\n")
    except OSError as e:
        raise TrainError(f"cannot write {out}: {e.strerror or e}") from None
    rows = [("checkpoint", rec["checkpoint"]),
            ("step", str(rec["step"]) if rec["step"] is not None else "-"),
            ("data", f"{corpus.description}, {corpus.fingerprint}"),
            ("split", f"{split}" + (f" (last {VAL_FRACTION:.0%})" if split == "val" else "")),
            ("windows", f"{len(windows)} x {L} bytes ({m['predictions']} predictions)"),
            ("loss", f"{m['loss']:.4f} nats/byte"),
            ("bits_per_byte", f"{m['bits_per_byte']:.4f}"),
            ("perplexity", f"{m['perplexity']:.3f}"),
            ("json", str(out))]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    return rec


# ------------------------------------------------------------------ nlcore generate


@torch.no_grad()
def sample_windowed(model: nn.Module, ids: Tensor, max_new_tokens: int, window: int,
                    temperature: float, top_k: Optional[int],
                    generator: Optional[torch.Generator]) -> Tensor:
    """Like `HopeForCausalLM.generate`, but every new byte is predicted from the last
    `window` bytes only (the model run afresh on them), as a model trained on windows of
    that length saw its data."""
    out = ids
    for _ in range(max_new_tokens):
        logits = model(out[:, -window:]).logits[:, -1].float()
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.shape[-1]), -1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, -1)
            if not torch.isfinite(probs).all():
                raise RuntimeError("probability tensor contains either `inf`, `nan`")
            nxt = torch.multinomial(probs, 1, generator=generator)
        out = torch.cat([out, nxt.to(out.dtype)], 1)
    return out


def run_generate(checkpoint: str, prompt: str, max_new_tokens: int = 200,
                 temperature: float = 0.8, top_k: Optional[int] = None, seed: int = 0,
                 device: Optional[str] = None, window: Optional[int] = None) -> str:
    """`nlcore generate`: the prompt's bytes, continued by sampling; prints and returns the
    text (undecodable bytes shown as U+FFFD). `window`: None → the training windows'
    length (from the checkpoint; 0 if unknown), 0 → the whole text through the model's
    recurrent cache (`HopeForCausalLM.generate`), N → the last N bytes."""
    if max_new_tokens < 0:
        raise TrainError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise TrainError(f"--temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise TrainError(f"--top-k must be >= 1, got {top_k}")
    if window is not None and window < 0:
        raise TrainError(f"--window must be >= 0, got {window}")
    data = prompt.encode("utf-8")
    if not data:
        raise TrainError("--prompt must not be empty (the model needs at least one byte)")
    dev = pick_device(device)
    loaded = load_model(checkpoint, dev)
    if window is None:
        window = int((loaded.state or {}).get("run", {}).get("seq_len") or 0)
    ids = torch.tensor([list(data)], dtype=torch.long, device=dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    try:
        if window:
            out = sample_windowed(loaded.model, ids, max_new_tokens, window, temperature,
                                  top_k, gen)
        else:
            out = loaded.model.generate(ids, max_new_tokens, temperature=temperature,
                                        top_k=top_k, generator=gen)
    except RuntimeError as e:
        if "inf" not in str(e) and "nan" not in str(e):
            raise
        where = f"a window of {window} bytes" if window else "the whole text (--window 0)"
        raise TrainError(f"the model's probabilities became non-finite while sampling with "
                         f"{where}: it diverges on this input. Try a shorter --window or "
                         f"prompt", code=1) from None
    text = bytes(out[0].tolist()).decode("utf-8", errors="replace")
    print(text)
    return text
