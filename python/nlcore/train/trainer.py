"""The training loop of `nlcore train`: byte-level language modeling with Hope, or with the
same-size Transformer baseline (`model="transformer"`; the `model` setting is saved with the
run, so --resume, `nlcore eval` and `nlcore generate` rebuild the right class).

One process, or several under `torchrun` (torch.distributed's launcher; the environment it
sets — RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR — is all this reads): `--dist ddp`
(DistributedDataParallel, gradients averaged) or `--dist fsdp` (FSDP2 `fully_shard` per
block and at the root; M3 gathers each matrix for Newton–Schulz). The global batch
`--batch-size` is drawn identically on every rank and split by rows, so a run on W ranks
computes the same loss and steps as one process with the whole batch.

A step: draw the batch, loss = mean cross-entropy over its predicted bytes, backward,
clip the global gradient norm, set the learning rate of the schedule (linear warmup, then
cosine decay to 10% at --steps), optimizer step. Every --eval-every steps and at the end:
validation bits per byte; every --save-every steps and at the end: a checkpoint
(checkpoint.py). A resumed run restores the model, the optimizer, the step, the data
sampler's generator and torch's RNG, so its losses equal those of an uninterrupted run.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import TrainError
from . import checkpoint as ckpt_io
from .data import VAL_FRACTION, WindowSampler, check_sizes, load_corpus, validation_windows
from .evaluate import LN2, cross_entropy_sum, metrics, pick_device
from .progress import Progress

MODELS = ("hope", "transformer")
OPTIMIZERS = ("m3", "adamw")
DISTS = ("ddp", "fsdp")
PRECISIONS = ("fp32", "bf16")
MIN_LR_RATIO = 0.1
LOG_NAME = "log.jsonl"

# the settings a resumed run must share with its checkpoint (None on the command line: take
# the checkpoint's); everything else (steps, eval/save cadence, device, dist) may change
RUN_KEYS = ("model", "preset", "overrides", "optimizer", "seq_len", "batch_size", "lr",
            "adamw_lr", "weight_decay", "warmup", "grad_clip", "seed", "precision")
# Conservative on purpose: Hope's in-context memories currently diverge when the outer
# weights grow quickly or the windows are long (see README "Training"); these train the tiny
# preset stably on the embedded corpus.
DEFAULTS = dict(model="hope", preset="tiny", overrides={}, optimizer="m3", seq_len=32,
                batch_size=32, weight_decay=0.0, grad_clip=1.0, seed=0)
DEFAULT_LR = {"m3": 0.003, "adamw": 1e-3}
DEFAULT_ADAMW_LR = 1e-3


@dataclass
class TrainArgs:
    """`nlcore train`'s options (see `nlcore train --help`). None: the default, or on
    --resume the checkpoint's value."""
    out: str
    preset: Optional[str] = None
    model: Optional[str] = None          # "hope" (default) | "transformer"
    data: Optional[str] = None
    steps: int = 600
    resume: bool = False
    overwrite: bool = False
    optimizer: Optional[str] = None
    device: Optional[str] = None
    seq_len: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    adamw_lr: Optional[float] = None
    weight_decay: Optional[float] = None
    warmup: Optional[int] = None
    grad_clip: Optional[float] = None
    seed: Optional[int] = None
    overrides: Optional[Dict[str, Any]] = None
    precision: Optional[str] = None
    dist: str = "ddp"
    eval_every: Optional[int] = None
    eval_windows: Optional[int] = 256
    eval_batch_size: int = 32
    save_every: Optional[int] = None
    keep: Optional[int] = 3
    progress: bool = True
    plot: bool = True


# ------------------------------------------------------------------ small helpers


def lr_factor(step: int, warmup: int, total: int) -> float:
    """The schedule at (1-based) `step`: linear warmup over `warmup` steps, then cosine
    from 1 to MIN_LR_RATIO at `total`."""
    if warmup > 0 and step <= warmup:
        return step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))


def _b64(t: Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def _is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except Exception:  # pragma: no cover
        return False
    return isinstance(t, DTensor)


def _full_cpu(obj: Any) -> Any:
    """obj with every tensor whole (DTensor shards gathered: a collective, the same order on
    every rank) and on the CPU (CPU tensors are not copied: the caller saves them at once)."""
    if isinstance(obj, dict):
        return {k: _full_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_full_cpu(v) for v in obj]
    if isinstance(obj, Tensor):
        t = obj.full_tensor() if _is_dtensor(obj) else obj
        return t.detach().cpu()
    return obj


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def all_sum(self, t: Tensor) -> Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t


def _dist_from_env() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    return Dist(rank=int(os.environ.get("RANK", "0")), world=world,
                local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def _parse_number(name: str, v: Any, kind=float, low: float = 0.0, strict: bool = False):
    if v is None:
        return None
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
        and (v > low if strict else v >= low)
    if not ok or (kind is int and int(v) != v):
        what = "an int" if kind is int else "a number"
        rel = ">" if strict else ">="
        raise TrainError(f"--{name.replace('_', '-')} must be {what} {rel} {low:g}, got {v!r}")
    return kind(v)


# ------------------------------------------------------------------ settings


def _resolve_settings(a: TrainArgs, saved: Optional[dict]) -> Dict[str, Any]:
    """The run's settings: the command line, else the checkpoint's (on resume), else the
    defaults; a conflict with the checkpoint is a TrainError."""
    given = {k: getattr(a, k) for k in RUN_KEYS}
    if given["model"] is not None and given["model"] not in MODELS:
        raise TrainError(f"--model must be one of {MODELS}, got {given['model']!r}")
    if saved is not None:
        saved = {"model": "hope", **saved}   # checkpoints from before the model setting
        conflicts = [f"--{k.replace('_', '-')} {given[k]!r} (the checkpoint has {saved[k]!r})"
                     for k in RUN_KEYS if given[k] is not None and k in saved
                     and given[k] != saved[k]]
        if conflicts:
            raise TrainError("cannot resume: the checkpoint was trained with other settings: "
                             + "; ".join(conflicts) + ". Leave them out to keep the "
                             "checkpoint's, or train into a new --out")
        s = {k: saved.get(k) for k in RUN_KEYS}
        return s
    s = {k: (given[k] if given[k] is not None else DEFAULTS.get(k)) for k in RUN_KEYS}
    if s["optimizer"] not in OPTIMIZERS:
        raise TrainError(f"--optimizer must be one of {OPTIMIZERS}, got {s['optimizer']!r}")
    if s["lr"] is None:
        s["lr"] = DEFAULT_LR[s["optimizer"]]
    if s["adamw_lr"] is None and s["optimizer"] == "m3":
        s["adamw_lr"] = DEFAULT_ADAMW_LR
    if s["warmup"] is None:
        s["warmup"] = max(1, min(100, a.steps // 10))
    return s


def _check_settings(s: Dict[str, Any], a: TrainArgs, dist: Dist) -> None:
    for name, kind, low, strict in (("seq_len", int, 2, False), ("batch_size", int, 1, False),
                                    ("lr", float, 0, True), ("adamw_lr", float, 0, True),
                                    ("weight_decay", float, 0, False),
                                    ("warmup", int, 0, False), ("grad_clip", float, 0, False),
                                    ("seed", int, 0, False)):
        s[name] = _parse_number(name, s[name], kind, low, strict)
    _parse_number("steps", a.steps, int, 1)
    for name in ("eval_every", "save_every", "eval_windows", "keep"):
        _parse_number(name, getattr(a, name), int, 1)
    _parse_number("eval_batch_size", a.eval_batch_size, int, 1)
    if s["precision"] is not None and s["precision"] not in PRECISIONS:
        raise TrainError(f"--precision must be one of {PRECISIONS}, got {s['precision']!r}")
    if a.dist not in DISTS:
        raise TrainError(f"--dist must be one of {DISTS}, got {a.dist!r}")
    if s["batch_size"] % dist.world:
        raise TrainError(f"--batch-size {s['batch_size']} must be divisible by the number of "
                         f"processes ({dist.world}): each takes an equal share of the batch")


def _model_class(s: Dict[str, Any]):
    from ..models import MODEL_TYPES
    if s["model"] not in MODEL_TYPES:
        raise TrainError(f"--model must be one of {MODELS}, got {s['model']!r}")
    return MODEL_TYPES[s["model"]]


def _model_config(s: Dict[str, Any]):
    config_class = _model_class(s).config_class
    name = config_class.__name__
    overrides = dict(s["overrides"] or {})
    fields = [f.name for f in dataclasses.fields(config_class)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise TrainError(f"--set {unknown[0]}: not a {name} field (the fields: "
                         f"{', '.join(fields)})")
    overrides.setdefault("vocab_size", 256)   # bytes
    v = overrides["vocab_size"]
    if isinstance(v, bool) or not isinstance(v, int) or v < 256:
        raise TrainError(f"--set vocab_size={overrides['vocab_size']}: byte-level training "
                         f"needs vocab_size >= 256")
    try:
        return config_class.from_preset(s["preset"], **overrides)
    except ValueError as e:
        raise TrainError(str(e)) from None
    except TypeError as e:   # e.g. --set cms_chunk_sizes=8 (not a list)
        raise TrainError(f"{name} (--preset / --set): {e}") from None


# ------------------------------------------------------------------ the run folder


def _prepare_out(a: TrainArgs, dist: Dist) -> Tuple[Path, Optional[Path]]:
    """The run folder (created, checked writable) and the checkpoint to resume from."""
    out = Path(a.out)
    if dist.main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise TrainError(f"--out {a.out}: cannot write there ({e.strerror or e})") from None
    dist.barrier()
    resume_from = None
    existing = ckpt_io.checkpoints(out) or (out / ckpt_io.LATEST).exists()
    if a.resume:
        resume_from = ckpt_io.latest(out)
    elif existing:
        if not a.overwrite:
            raise TrainError(f"--out {a.out} already holds a run (checkpoints); pass --resume to "
                             f"continue it, --overwrite to start it over, or another --out")
        dist.barrier()
        if dist.main:
            for p in ckpt_io.checkpoints(out):
                shutil.rmtree(p)
            for name in (ckpt_io.LATEST, LOG_NAME, "loss.png", "loss.svg"):
                (out / name).unlink(missing_ok=True)
        dist.barrier()
    return out, resume_from


class _Log:
    """DIR/log.jsonl, one JSON record a line (rank 0 only). On resume, records past the
    checkpoint's step (from the interrupted part of the run) are dropped."""

    def __init__(self, path: Path, enabled: bool, keep_until: Optional[int]):
        self.path, self.enabled = path, enabled
        self.records: List[dict] = []
        if not enabled:
            return
        if keep_until is not None and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue   # a line cut by the interruption
                if r.get("step", 0) <= keep_until and r.get("event") != "end":
                    self.records.append(r)
        ckpt_io.write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in self.records))
        self._f = open(path, "a")

    def __call__(self, **rec) -> None:
        if not self.enabled:
            return
        self.records.append(rec)
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self.enabled and not self._f.closed:
            self._f.close()


# ------------------------------------------------------------------ model and optimizer


def build_optimizer(model: nn.Module, optimizer: str, lr: float, adamw_lr: float,
                    weight_decay: float, device: torch.device):
    """The training optimizer: "adamw" (everything) or "m3" (M3 for the matrices, AdamW at
    adamw_lr for the rest, as m3_param_groups splits them). Shared by nlcore train and the
    evals' runs."""
    if optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95),
                                 weight_decay=weight_decay)
    from ..optim import M3, m3_param_groups
    # Newton–Schulz in bf16 is the GPU default; on the CPU fp32 matmuls are much faster
    ns_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return M3(m3_param_groups(model, lr=lr, adamw_lr=adamw_lr), weight_decay=weight_decay,
              ns_dtype=ns_dtype)


def _param_names(model: nn.Module, opt) -> List[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [names.get(id(p), "?") for g in opt.param_groups for p in g["params"]]


def _load_optimizer(opt, saved: dict, names: List[str], path: Path) -> None:
    if saved.get("param_names") != names:
        raise TrainError(f"{path}: the optimizer state does not match this model's parameters "
                         f"(an incompatible checkpoint)")
    sd = saved["state_dict"]
    params = [p for g in opt.param_groups for p in g["params"]]
    for pid, st in sd["state"].items():
        p = params[int(pid)]
        if _is_dtensor(p):  # FSDP2: every rank keeps its shard of the whole tensor
            from torch.distributed.tensor import distribute_tensor
            for k, v in st.items():
                if isinstance(v, Tensor) and v.shape == p.shape:
                    st[k] = distribute_tensor(v.to(p.device), p.device_mesh, p.placements,
                                              src_data_rank=None)
    try:
        opt.load_state_dict(sd)
    except (ValueError, KeyError, RuntimeError) as e:
        raise TrainError(f"{path}: cannot load the optimizer state ({e})") from None


def _wrap(model: nn.Module, dist: Dist, kind: str, device: torch.device) -> nn.Module:
    """The model under DDP or FSDP2 (a no-op for one process)."""
    if dist.world == 1:
        return model
    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, device_ids=[device.index]
                                       if device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh(device.type, (dist.world,))
    for block in model.model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


# ------------------------------------------------------------------ train


def train(a: TrainArgs) -> dict:
    """Runs `nlcore train`; returns a summary dict (also the last record of the log)."""
    dist = _dist_from_env()
    if dist.world > 1 and not torch.distributed.is_initialized():
        dev = pick_device(a.device)
        if dev.type == "cuda":
            dev = torch.device("cuda", dist.local_rank)
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend)
        dist.initialized = True
    try:
        run = _Run(a, dist)
        run.loop()
        return run.finish()
    finally:
        if dist.initialized:
            torch.distributed.destroy_process_group()


class _Run:
    """One `nlcore train` after its setup: the run folder, settings, data, model (wrapped),
    optimizer, sampler and log, restored from the checkpoint on --resume."""

    def __init__(self, a: TrainArgs, dist: Dist):
        self.a, self.dist = a, dist
        device = pick_device(a.device)
        if device.type == "cuda" and dist.world > 1:
            device = torch.device("cuda", dist.local_rank)
        self.device = device
        self.out, resume_from = _prepare_out(a, dist)
        saved = ckpt_io.read_state(resume_from) if resume_from is not None else None
        s = _resolve_settings(a, saved["run"] if saved else None)
        _check_settings(s, a, dist)
        if s["precision"] is None:
            s["precision"] = "bf16" if device.type == "cuda" else "fp32"
        self.s, self.cfg = s, _model_config(s)

        self.corpus = corpus = load_corpus(a.data)
        if saved and saved["data"]["fingerprint"] != corpus.fingerprint:
            raise TrainError(f"cannot resume: the checkpoint was trained on "
                             f"{saved['data']['description']} (fingerprint "
                             f"{saved['data']['fingerprint']}), this command gives "
                             f"{corpus.description} ({corpus.fingerprint})")
        train_ids, val_ids = corpus.split(VAL_FRACTION)
        check_sizes(train_ids, val_ids, s["seq_len"],
                    f"--data {a.data}" if a.data else "the embedded corpus")
        self.start = saved["step"] if saved else 0
        if self.start > a.steps:
            raise TrainError(f"the checkpoint is at step {self.start}, past --steps {a.steps}")

        self.core = self._model(resume_from)
        self.model = _wrap(self.core, dist, a.dist, device)
        self.opt = build_optimizer(self.core, s["optimizer"], s["lr"], s["adamw_lr"],
                                   s["weight_decay"], device)
        self.names = _param_names(self.core, self.opt)
        self.bases = [(g["lr"], g.get("adamw_lr")) for g in self.opt.param_groups]
        self.sampler = WindowSampler(train_ids, s["seq_len"], s["batch_size"], s["seed"])
        if resume_from is not None:
            self._restore(resume_from, saved)
        self.windows = validation_windows(val_ids, s["seq_len"], a.eval_windows)
        self.eval_every = a.eval_every or max(1, a.steps // 10)
        self.save_every = a.save_every or self.eval_every
        self.amp = torch.autocast(device.type, dtype=torch.bfloat16,
                                  enabled=s["precision"] == "bf16")
        self.rows = s["batch_size"] // dist.world
        self.tokens_per_step = s["batch_size"] * s["seq_len"]
        self.step, self.last_ckpt, self.val = self.start, resume_from, None
        self.loss = saved.get("loss", math.nan) if saved else math.nan
        self.elapsed0 = saved.get("elapsed", 0.0) if saved else 0.0
        self.t0 = time.perf_counter()
        self.say = print if dist.main else (lambda *x, **k: None)
        self.data_info = {**corpus.info(), "val_fraction": VAL_FRACTION,
                          "train_bytes": len(train_ids), "val_bytes": len(val_ids)}
        n_params = sum(p.numel() for p in self.core.parameters())
        self.log = _Log(self.out / LOG_NAME, dist.main,
                        self.start if resume_from is not None else None)
        self.log(event="start", step=self.start, steps=a.steps,
                 resumed_from=str(resume_from) if resume_from else None, settings=s,
                 model_config=self.cfg.to_dict(), params=n_params, data=self.data_info,
                 eval_windows=len(self.windows), world_size=dist.world, dist=a.dist,
                 device=str(device), torch=torch.__version__)
        self._announce(resume_from, saved, n_params)

    def _model(self, resume_from: Optional[Path]) -> nn.Module:
        cls = _model_class(self.s)
        if resume_from is None:
            torch.manual_seed(self.s["seed"])
            return cls(self.cfg).to(self.device)
        try:
            model = cls.from_pretrained(resume_from)
        except (FileNotFoundError, ValueError, ImportError) as e:
            raise TrainError(f"cannot resume from {resume_from}: {e}") from None
        if model.config != self.cfg:
            raise TrainError(f"cannot resume: {resume_from} holds a different model than "
                             f"--model {self.s['model']} --preset {self.s['preset']} with the "
                             f"given --set (an incompatible checkpoint)")
        return model.to(self.device)

    def _restore(self, ckpt: Path, saved: dict) -> None:
        try:
            opt_saved = torch.load(ckpt / ckpt_io.OPTIM_NAME, map_location="cpu",
                                   weights_only=True)
        except Exception as e:
            raise TrainError(f"{ckpt}: cannot read {ckpt_io.OPTIM_NAME} ({e})") from None
        _load_optimizer(self.opt, opt_saved, self.names, ckpt)
        self.sampler.load_state_dict({"generator": _unb64(saved["sampler"]["generator"]),
                                      "drawn": saved["sampler"]["drawn"]})
        torch.set_rng_state(_unb64(saved["rng"]["torch"]))
        if self.device.type == "cuda" and saved["rng"].get("cuda"):
            torch.cuda.set_rng_state(_unb64(saved["rng"]["cuda"]), self.device)

    def _announce(self, resume_from: Optional[Path], saved: Optional[dict],
                  n_params: int) -> None:
        a, s = self.a, self.s
        if resume_from is not None:
            what = f"resuming {resume_from} at step {self.start}"
            if saved.get("steps") not in (None, a.steps):
                what += (f" (--steps {a.steps}, was {saved['steps']}: the learning-rate "
                         f"schedule now ends at step {a.steps})")
        elif a.resume:
            what = f"no checkpoint in {self.out} yet: training from scratch"
        else:
            what = "training from scratch"
        sets = ", ".join(f"{k}={v}" for k, v in (s["overrides"] or {}).items())
        lrs = f"lr {s['lr']:g}" + (f", adamw_lr {s['adamw_lr']:g}"
                                   if s["optimizer"] == "m3" else "")
        model = f"{_model_class(s).model_name} {s['preset']}" + (f" ({sets})" if sets else "")
        procs = f" over {self.dist.world} processes ({a.dist})" if self.dist.world > 1 else ""
        self.say(f"nlcore train: {what}\n"
                 f"  model   {model}: {n_params / 1e6:.2f}M parameters\n"
                 f"  data    {self.corpus.description}: {self.data_info['train_bytes']:,} "
                 f"train / {self.data_info['val_bytes']:,} validation bytes\n"
                 f"  batch   {s['batch_size']} x {s['seq_len']} bytes{procs}; "
                 f"{s['optimizer']} ({lrs}); {s['precision']} on {self.device}\n"
                 f"  steps   {self.start} -> {a.steps}; validation every {self.eval_every} "
                 f"steps on {len(self.windows)} windows; output {self.out}", flush=True)

    def elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.t0

    # -------------------------------------------------------------- pieces of the loop

    def evaluate(self, step: int) -> dict:
        with self.amp:
            acc = cross_entropy_sum(self.core, self.windows, self.a.eval_batch_size,
                                    self.device, self.dist.rank, self.dist.world)
        m = self.val = metrics(self.dist.all_sum(acc).cpu())
        self.log(event="eval", step=step, val_loss=m["loss"], val_bpb=m["bits_per_byte"],
                 windows=len(self.windows))
        return m

    def save(self, step: int) -> None:
        """A checkpoint (every rank takes part: FSDP shards are gathered; rank 0 writes)."""
        sharded = self.a.dist == "fsdp" and self.dist.world > 1
        model_sd = _full_cpu(self.core.state_dict()) if sharded else None
        opt_sd = _full_cpu(self.opt.state_dict())
        if self.dist.main:
            def write(tmp: Path) -> dict:
                plain = self.core
                if model_sd is not None:
                    plain = _model_class(self.s)(self.cfg)
                    plain.load_state_dict(model_sd)
                plain.save_pretrained(tmp)
                torch.save({"state_dict": opt_sd, "param_names": self.names,
                            "optimizer": self.s["optimizer"]}, tmp / ckpt_io.OPTIM_NAME)
                rng = {"torch": _b64(torch.get_rng_state())}
                if self.device.type == "cuda":
                    rng["cuda"] = _b64(torch.cuda.get_rng_state(self.device))
                return {"step": step, "steps": self.a.steps, "run": self.s,
                        "model_config": self.cfg.to_dict(), "data": self.data_info,
                        "sampler": {"generator": _b64(self.sampler.generator.get_state()),
                                    "drawn": self.sampler.drawn},
                        "rng": rng, "elapsed": self.elapsed(), "loss": self.loss,
                        "val": self.val, "world_size": self.dist.world, "dist": self.a.dist,
                        "torch": torch.__version__}
            self.last_ckpt = ckpt_io.save(self.out, step, write, self.a.keep)
            self.log(event="checkpoint", step=step, path=str(self.last_ckpt))
        self.dist.barrier()

    def train_step(self, step: int) -> float:
        """One optimizer step; returns the loss averaged over the ranks."""
        f = lr_factor(step, self.s["warmup"], self.a.steps)
        for g, (lr, alr) in zip(self.opt.param_groups, self.bases):
            g["lr"] = lr * f
            if alr is not None:
                g["adamw_lr"] = alr * f
        r = self.dist.rank
        x = self.sampler.next()[r * self.rows:(r + 1) * self.rows].to(self.device)
        with self.amp:
            loss = self.model(x, labels=x).loss
        loss.backward()
        if self.s["grad_clip"]:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.s["grad_clip"])
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        total = self.dist.all_sum(loss.detach().double().reshape(1)) / self.dist.world
        return float(total)

    # -------------------------------------------------------------- the loop

    def loop(self) -> None:
        a = self.a
        if self.start == 0:
            m = self.evaluate(0)
            self.say(f"step 0: validation {m['bits_per_byte']:.4f} bits/byte (loss "
                     f"{m['loss']:.4f})", flush=True)
        bar = Progress(a.steps, self.start, enabled=a.progress and self.dist.main)
        try:
            for step in range(self.start + 1, a.steps + 1):
                t0 = time.perf_counter()
                self.loss = self.train_step(step)
                self.step = step
                if not math.isfinite(self.loss):
                    raise TrainError(
                        f"the loss became {self.loss} at step {step}: training diverged. "
                        f"The last checkpoint is {self.last_ckpt or '(none)'}. Try a lower "
                        f"--lr / --adamw-lr, or other --set values for the model", code=1)
                tok_s = self.tokens_per_step / max(time.perf_counter() - t0, 1e-9)
                self.log(event="train", step=step, loss=self.loss,
                         lr=self.bases[0][0] * lr_factor(step, self.s["warmup"], a.steps),
                         tokens=step * self.tokens_per_step, tok_per_s=round(tok_s, 1),
                         elapsed=round(self.elapsed(), 3))
                bar.update(step, loss=f"{self.loss:.3f}", bpb=f"{self.loss / LN2:.3f}",
                           tok_s=f"{tok_s:,.0f}")
                if step % self.eval_every == 0 or step == a.steps:
                    m = self.evaluate(step)
                    if self.dist.main:
                        bar.write(f"step {step}: validation {m['bits_per_byte']:.4f} "
                                  f"bits/byte (loss {m['loss']:.4f}), train loss "
                                  f"{self.loss:.4f}")
                if step % self.save_every == 0 or step == a.steps:
                    self.save(step)
        except KeyboardInterrupt:
            bar.close()
            self.log.close()
            last = self.last_ckpt
            raise TrainError(f"interrupted at step {self.step}; "
                             + (f"the last checkpoint is {last}: run again with --resume to "
                                f"continue from it" if last else "no checkpoint was written"),
                             code=130) from None
        except BaseException:
            bar.close()
            self.log.close()
            raise
        bar.close()
        if self.start == a.steps:  # resumed a finished run: evaluate it again
            self.evaluate(self.step)

    def finish(self) -> dict:
        """The last log record, the loss curve and the closing lines; returns the summary."""
        a, s, val = self.a, self.s, self.val
        summary = {"event": "end", "step": a.steps, "loss": self.loss,
                   "val_loss": val["loss"] if val else None,
                   "val_bpb": val["bits_per_byte"] if val else None,
                   "elapsed": round(self.elapsed(), 3), "checkpoint": str(self.last_ckpt),
                   "out": str(self.out)}
        if not self.dist.main:
            return summary
        self.log(**summary)
        plot_line = None
        if a.plot:
            from .plot import plot_losses
            path, plot_line = plot_losses(self.log.records, self.out,
                                          f"{_model_class(s).model_name} {s['preset']}: "
                                          f"{self.corpus.description}")
            summary["plot"] = str(path) if path else None
        self.log.close()
        trained, secs = a.steps - self.start, time.perf_counter() - self.t0
        rate = f", {trained * self.tokens_per_step / secs:,.0f} bytes/s overall" \
            if trained else ""
        self.say(f"done: {trained} steps ({trained * self.tokens_per_step:,} bytes) in "
                 f"{secs:.1f}s{rate}")
        if val:
            self.say(f"validation: {val['bits_per_byte']:.4f} bits per byte (loss "
                     f"{val['loss']:.4f} nats/byte, {len(self.windows)} windows of "
                     f"{s['seq_len']} bytes)")
        self.say(f"checkpoint: {self.last_ckpt}\nlog: {self.out / LOG_NAME}")
        if plot_line:
            self.say(plot_line)
        return summary
