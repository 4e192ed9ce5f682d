"""Models and a small training loop for the evaluations.

Models are built by name: "hope" (`nlcore.models.HopeForCausalLM`) and "transformer"
(`nlcore.models.TransformerForCausalLM`, imported only when asked for), from a preset of the
same name for both (`from_preset(preset, vocab_size=256)`: byte-level), initialized from the
run's seed (the same initial weights for every learning rate of the sweep).
`register_model(name, factory)` adds another (a factory `(preset) -> nn.Module` whose
`forward(input_ids, labels=None)` returns an object with `.logits` and `.loss`, labels
shifted inside as in Hope).

`fit` is the loop every model gets, identically: `steps` optimizer steps on the batches a
callback draws (the same batches for every model and learning rate), AdamW (betas 0.9, 0.95,
no weight decay) or M3 (nlcore.optim; its AdamW part at lr / 3, the ratio of
`nlcore train`'s defaults), the learning rate warmed up linearly over steps/10 (at most 100)
steps then cosine-decayed to 10% (`nlcore.train.trainer.lr_factor`), gradient norm clipped
at 1. A non-finite loss stops the run (it counts as diverged).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..train import TrainError

OPTIMIZERS = ("adamw", "m3")
BUILTIN_MODELS = ("hope", "transformer")
_FACTORIES: Dict[str, Callable[[str], nn.Module]] = {}


class EvalError(TrainError):
    """A problem the user can act on (a bad option, a model that is not available); the CLI
    prints it without a traceback and exits with `code` (2)."""


def register_model(name: str, factory: Optional[Callable[[str], nn.Module]]) -> None:
    """Make `name` usable in `models=` / --models (None removes it)."""
    if factory is None:
        _FACTORIES.pop(name, None)
    else:
        _FACTORIES[name] = factory


def model_names() -> Tuple[str, ...]:
    return BUILTIN_MODELS + tuple(n for n in _FACTORIES if n not in BUILTIN_MODELS)


def _byte_config(config_cls, preset: str):
    try:
        return config_cls.from_preset(preset, vocab_size=256)
    except ValueError as e:
        raise EvalError(f"--preset {preset}: {e}") from None


def _construct(name: str, preset: str) -> nn.Module:
    if name in _FACTORIES:
        return _FACTORIES[name](preset)
    from .. import models
    if name == "hope":
        return models.HopeForCausalLM(_byte_config(models.HopeConfig, preset))
    if name == "transformer":
        cls = getattr(models, "TransformerForCausalLM", None)
        cfg = getattr(models, "TransformerConfig", None)
        if cls is None or cfg is None:
            raise EvalError("--models transformer: this nlcore has no "
                            "nlcore.models.TransformerForCausalLM yet; run with --models hope")
        return cls(_byte_config(cfg, preset))
    raise EvalError(f"--models {name}: unknown model; choose from {', '.join(model_names())}")


def check_preset(name: str, preset: str) -> None:
    """A clear error now, before any training, when model `name` has no such preset."""
    from .. import models
    cfg = {"hope": getattr(models, "HopeConfig", None),
           "transformer": getattr(models, "TransformerConfig", None)}.get(name)
    if name in _FACTORIES:
        return
    if name == "transformer" and cfg is None:
        _construct(name, preset)           # raises: no Transformer in this nlcore yet
    if cfg is not None:
        _byte_config(cfg, preset)


def check_models(names) -> List[str]:
    """The model names of --models, checked (a list, or a comma-separated string)."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = [n for n in names if n]
    if not names:
        raise EvalError("--models: give at least one model (e.g. hope,transformer)")
    known = model_names()
    bad = [n for n in names if n not in known]
    if bad:
        raise EvalError(f"--models {','.join(names)}: unknown model {bad[0]!r}; choose from "
                        f"{', '.join(known)}")
    if len(set(names)) != len(names):
        raise EvalError(f"--models {','.join(names)}: a model is named twice")
    return names


def build_model(name: str, preset: str, seed: int, device: torch.device) -> nn.Module:
    """Model `name` of `preset`, its weights drawn from `seed` (the caller's torch RNG is left
    as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _construct(name, preset)
    return model.to(device)


def load_checkpoint(path: str, device: torch.device) -> Tuple[nn.Module, str]:
    """(model, its model type) of a run folder, checkpoint-STEP folder or saved model folder
    (Hope, or any type `nlcore.models.from_pretrained` knows)."""
    from ..train.evaluate import load_model
    loaded = load_model(path, device)
    kind = getattr(loaded.model, "model_type", None) or "hope"
    return loaded.model, str(kind)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())     # tied tensors once


def make_optimizer(model: nn.Module, name: str, lr: float, device: torch.device):
    """nlcore train's optimizer, no weight decay; m3's AdamW part at lr / 3."""
    if name not in OPTIMIZERS:
        raise EvalError(f"--optimizer must be one of {OPTIMIZERS}, got {name!r}")
    from ..train.trainer import build_optimizer
    return build_optimizer(model, name, lr, lr / 3, 0.0, device)


@dataclass
class FitResult:
    steps: int = 0
    losses: List[float] = field(default_factory=list)
    diverged: bool = False
    seconds: float = 0.0

    @property
    def final_loss(self) -> Optional[float]:
        """Mean of the last 10% of the losses (at least one)."""
        if not self.losses or self.diverged:
            return None
        k = max(1, len(self.losses) // 10)
        return sum(self.losses[-k:]) / k


def fit(model: nn.Module, opt, next_batch: Callable[[int], Tuple[Tensor, Tensor]],
        steps: int, device: torch.device, grad_clip: float = 1.0,
        on_step: Optional[Callable[[int, float], None]] = None) -> FitResult:
    """`steps` optimizer steps; `next_batch(step)` (1-based) returns (input_ids, labels)."""
    from ..train.trainer import lr_factor
    warmup = max(1, min(100, steps // 10))
    bases = [(g["lr"], g.get("adamw_lr")) for g in opt.param_groups]
    res = FitResult()
    t0 = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        f = lr_factor(step, warmup, steps)
        for g, (lr, alr) in zip(opt.param_groups, bases):
            g["lr"] = lr * f
            if alr is not None:
                g["adamw_lr"] = alr * f
        ids, labels = next_batch(step)
        loss = model(ids.to(device), labels=labels.to(device)).loss
        value = float(loss.detach())
        res.steps = step
        res.losses.append(value)
        if not math.isfinite(value):
            res.diverged = True
            opt.zero_grad(set_to_none=True)
            break
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if on_step is not None:
            on_step(step, value)
    for g, (lr, alr) in zip(opt.param_groups, bases):     # leave the base rates in place
        g["lr"] = lr
        if alr is not None:
            g["adamw_lr"] = alr
    model.eval()
    res.seconds = time.perf_counter() - t0
    return res
