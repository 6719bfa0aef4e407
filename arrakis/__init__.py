"""arrakis: find the attention heads that write to and read from the residual stream.

>>> from arrakis import HookedAutoConfig, HookedAutoModel, WriteReadAnalyzer
>>> HookedAutoModel(HookedAutoConfig("gpt2", n_layers=2)).cfg.n_heads
8
"""

from typing import Any

from arrakis.models import (
    ActivationCache,
    HeadWeights,
    HookedAutoConfig,
    HookedAutoModel,
    HookNameError,
    ModelLoadError,
    ModelNotFoundError,
    ModelShape,
    UnsupportedArchitectureError,
    load_model,
    supported_families,
)

# What users import first, from the layers above the models: loaded on first use, so that
# ``import arrakis`` stays light and the import direction (DESIGN.md §10) is kept.
_LAZY = {"WriteReadAnalyzer": "arrakis.tools", "BaseInterpretabilityBench": "arrakis.bench"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'arrakis' has no attribute {name!r}")


__all__ = [
    "ActivationCache",
    "BaseInterpretabilityBench",
    "HeadWeights",
    "HookNameError",
    "HookedAutoConfig",
    "HookedAutoModel",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelShape",
    "UnsupportedArchitectureError",
    "WriteReadAnalyzer",
    "load_model",
    "supported_families",
]
__version__ = "0.1.0"
