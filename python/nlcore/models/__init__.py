"""Models assembled from the nlcore ops: Hope, and the same-size Transformer baseline."""
import os
from typing import Union

from ._pretrained import read_config
from .hope import HopeCache, HopeConfig, HopeForCausalLM, HopeModel, HopeOutput
from .transformer import (TransformerCache, TransformerConfig, TransformerForCausalLM,
                          TransformerModel, TransformerOutput)

# model_type (config.json's key, `nlcore train`'s model setting) -> the causal LM class
MODEL_TYPES = {"hope": HopeForCausalLM, "transformer": TransformerForCausalLM}


def model_class(model_type: str) -> type:
    """The causal LM class of a model type ("hope" or "transformer")."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model type must be one of {tuple(MODEL_TYPES)}, got {model_type!r}")
    return MODEL_TYPES[model_type]


def from_pretrained(directory: Union[str, os.PathLike], map_location="cpu",
                    **config_overrides):
    """The causal LM saved in `directory` by `save_pretrained`, of the class its config.json's
    "model_type" names (a folder without one holds a Hope model)."""
    model_type, _ = read_config(directory, "nlcore.models.from_pretrained")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"nlcore.models.from_pretrained: {directory}: unknown model_type "
                         f"{model_type!r} (known: {tuple(MODEL_TYPES)})")
    return MODEL_TYPES[model_type].from_pretrained(directory, map_location, **config_overrides)


def count_parameters(model_type: str, config_or_preset, **overrides) -> int:
    """Parameters of a model type's preset (or config), counted on the meta device (nothing
    allocated); e.g. count_parameters("transformer", "760m")."""
    return model_class(model_type).count_parameters(config_or_preset, **overrides)


__all__ = ["HopeCache", "HopeConfig", "HopeForCausalLM", "HopeModel", "HopeOutput",
           "TransformerCache", "TransformerConfig", "TransformerForCausalLM",
           "TransformerModel", "TransformerOutput", "MODEL_TYPES", "model_class",
           "from_pretrained", "count_parameters"]
