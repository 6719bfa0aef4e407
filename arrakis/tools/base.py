"""The base of every tool, and the checks that turn bad input into errors that name the fix."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from arrakis.models import HookedAutoModel, ModelShape


class BaseInterpretabilityTool:
    """A tool works on one hooked model; the bench registers tools by ``name``."""

    name: str = ""

    def __init__(self, model: HookedAutoModel) -> None:
        if not isinstance(model, HookedAutoModel):
            raise TypeError(f"{type(self).__name__} needs a HookedAutoModel, got {type(model).__name__}")
        self.model = model

    @property
    def cfg(self) -> ModelShape:
        return self.model.cfg

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model!r})"


def check_index(value: object, size: int, what: str, unit: str) -> int:
    """An int in [0, size), or an error like "layer_idx 40 is out of range: this model has 30 layers (0-29)"."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    if not 0 <= value < size:
        raise ValueError(f"{what} {value} is out of range: this model has {size} {unit} (0-{size - 1})")
    return int(value)


def check_layer(layer: object, n_layers: int, what: str = "layer_idx") -> int:
    return check_index(layer, n_layers, what, "layers")


def check_threshold(threshold: object) -> float:
    """A share threshold in (0, 1]."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or math.isnan(threshold):
        raise TypeError(f"threshold must be a number in (0, 1], got {threshold!r}")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1] (a share of the layer's total), got {threshold}")
    return float(threshold)


def check_direction(direction: object, d_model: int, what: str = "direction") -> Tensor:
    """A finite, non-zero float vector of size d_model."""
    if not isinstance(direction, Tensor):
        raise TypeError(f"{what} must be a 1-D tensor of size d_model={d_model}, got {type(direction).__name__}")
    if not direction.dtype.is_floating_point:
        raise TypeError(f"{what} must be a float tensor, got dtype {direction.dtype}")
    if direction.shape != (d_model,):
        raise ValueError(f"{what} must have shape ({d_model},) (d_model), got {tuple(direction.shape)}")
    if not torch.isfinite(direction).all() or direction.abs().max() == 0:  # (||u||^2 underflows at 1e-23)
        raise ValueError(f"{what} must be finite and non-zero")
    return direction.float()


def check_positive_int(value: object, what: str) -> int:
    """An int >= 1, or an error like "seq_len must be a positive int, got 0"."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return int(value)


def check_choice(value: object, choices: tuple[str, ...], what: str) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(repr(c) for c in choices)}")
    return value.lower()
