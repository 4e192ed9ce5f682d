"""What the language models of `nlcore.models` share: `save_pretrained` / `from_pretrained`
folders, sampling (`generate`) and parameter counts without allocating the weights.

A saved folder holds config.json — `{"model_type": "hope" | "transformer", **config}` — and
the weights, model.safetensors (when safetensors is installed; tied tensors stored once) or
pytorch_model.bin. A config.json without "model_type" (none was ever written without it, but
hand-made folders may lack it) is read as "hope".
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
TORCH_NAME = "pytorch_model.bin"
DEFAULT_MODEL_TYPE = "hope"


def read_config(directory: Union[str, os.PathLike], where: str) -> Tuple[str, Dict[str, Any]]:
    """(model_type, the remaining config fields) of a saved folder's config.json; errors
    (FileNotFoundError, ValueError) start with `where`."""
    d = Path(directory)
    cfg_path = d / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{where}: no {CONFIG_NAME} in {str(d)!r}")
    try:
        raw = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: {cfg_path} is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: {cfg_path} is not a model config (not a JSON object)")
    model_type = raw.pop("model_type", DEFAULT_MODEL_TYPE)
    return model_type, raw


class _Pretrained:
    """save_pretrained / from_pretrained for a module with `.config` (a dataclass config
    with to_dict / from_dict). Subclasses set `config_class`, `model_type` (the key written
    to config.json) and `model_name` (for messages)."""
    config: Any
    config_class: type
    model_type: str
    model_name: str

    def save_pretrained(self, directory: Union[str, os.PathLike]) -> Path:
        """Writes config.json and the weights (model.safetensors when safetensors is installed,
        else pytorch_model.bin) into `directory` (created)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / CONFIG_NAME).write_text(json.dumps({"model_type": self.model_type,
                                                 **self.config.to_dict()}, indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        try:
            from safetensors.torch import save_file
        except ImportError:
            (d / SAFETENSORS_NAME).unlink(missing_ok=True)
            torch.save(state, d / TORCH_NAME)
        else:
            (d / TORCH_NAME).unlink(missing_ok=True)
            # tied weights appear once
            seen, uniq = {}, {}
            for k, v in state.items():
                key = (v.data_ptr(), v.shape, v.dtype)
                if key not in seen:
                    seen[key] = k
                    uniq[k] = v
            save_file(uniq, str(d / SAFETENSORS_NAME), metadata={"format": "pt"})
        return d

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike], map_location="cpu",
                        **config_overrides):
        """The model saved by `save_pretrained` (bit-identical parameters). The folder's
        model_type must be this class's (`nlcore.models.from_pretrained` picks the class)."""
        d = Path(directory)
        where = f"{cls.__name__}.from_pretrained"
        model_type, raw = read_config(d, where)
        if model_type != cls.model_type:
            raise ValueError(f"{where}: {d / CONFIG_NAME} is not a {cls.model_name} config "
                             f"(model_type != {cls.model_type!r}: it has {model_type!r}; "
                             f"nlcore.models.from_pretrained loads any nlcore model)")
        cfg = cls.config_class.from_dict({**raw, **config_overrides})
        model = cls(cfg)
        if (d / SAFETENSORS_NAME).is_file():
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise ImportError(f"{where}: {d / SAFETENSORS_NAME} needs the safetensors "
                                  f"package (pip install safetensors)") from None
            try:
                state = load_file(str(d / SAFETENSORS_NAME), device=str(map_location))
            except Exception as e:
                raise ValueError(f"{where}: cannot read {d / SAFETENSORS_NAME}: {e}") from None
        elif (d / TORCH_NAME).is_file():
            try:
                state = torch.load(d / TORCH_NAME, map_location=map_location, weights_only=True)
            except Exception as e:
                raise ValueError(f"{where}: cannot read {d / TORCH_NAME}: {e}") from None
        else:
            raise FileNotFoundError(f"{where}: no {SAFETENSORS_NAME} or {TORCH_NAME} in "
                                    f"{str(d)!r}")
        own = model.state_dict()
        # tied parameters are saved once: fill in their aliases
        for k in own:
            if k not in state:
                alias = [j for j in own if j in state and own[j].data_ptr() == own[k].data_ptr()]
                if alias:
                    state[k] = state[alias[0]]
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        bad = [k for k in own if k in state and state[k].shape != own[k].shape]
        if missing or unexpected or bad:
            raise ValueError(f"{where}: checkpoint does not match the config: missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]}, wrong shape "
                             f"{bad[:5]}")
        model.load_state_dict(state)
        return model

    @classmethod
    def count_parameters(cls, config_or_preset: Union[str, Any], **overrides) -> int:
        """The number of parameters (tied tensors once) of this class built on `config` or on
        the named preset (with config overrides), without allocating them: the model is
        instantiated on the meta device."""
        if isinstance(config_or_preset, str):
            config = cls.config_class.from_preset(config_or_preset, **overrides)
        else:
            if overrides:
                raise TypeError(f"{cls.__name__}.count_parameters: overrides only go with a "
                                f"preset name")
            config = config_or_preset
        with torch.device("meta"):
            model = cls(config)
        return sum(p.numel() for p in model.parameters())


class _Generate:
    """`generate` for a causal LM whose forward takes (input_ids, cache=, use_cache=) and
    returns .logits and .cache."""

    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, generator: Optional[torch.Generator] = None
                 ) -> Tensor:
        """Sampled continuation `[B, T + max_new_tokens]` (temperature 0: greedy), one token at
        a time through the model's cache."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
                or max_new_tokens < 0:
            raise ValueError(f"generate: max_new_tokens must be an int >= 0, got "
                             f"{max_new_tokens!r}")
        if not (isinstance(temperature, (int, float)) and temperature >= 0):
            raise ValueError(f"generate: temperature must be >= 0, got {temperature!r}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"generate: top_k must be an int >= 1 or None, got {top_k!r}")
        if input_ids.shape[1] == 0:
            raise ValueError("generate: input_ids needs at least one token")
        out = self(input_ids, use_cache=True)
        cache, logits = out.cache, out.logits[:, -1]
        toks = [input_ids]
        for _ in range(max_new_tokens):
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                lg = logits.float() / temperature
                if top_k is not None:
                    kth = torch.topk(lg, min(top_k, lg.shape[-1]), -1).values[:, -1:]
                    lg = lg.masked_fill(lg < kth, float("-inf"))
                nxt = torch.multinomial(torch.softmax(lg, -1), 1, generator=generator)
            toks.append(nxt.to(input_ids.dtype))
            out = self(toks[-1], cache=cache, use_cache=True)
            cache, logits = out.cache, out.logits[:, -1]
        return torch.cat(toks, 1)
