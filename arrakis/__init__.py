"""arrakis: find the attention heads that write to and read from the residual stream.

>>> from arrakis import HookedAutoConfig, HookedAutoModel
>>> HookedAutoModel(HookedAutoConfig("gpt2", n_layers=2)).cfg.n_heads
8
"""

from arrakis.models import (
    ActivationCache,
    HeadWeights,
    HookedAutoConfig,
    HookedAutoModel,
    HookNameError,
    ModelNotFoundError,
    ModelShape,
    UnsupportedArchitectureError,
    load_model,
    supported_families,
)

__all__ = [
    "ActivationCache",
    "HeadWeights",
    "HookNameError",
    "HookedAutoConfig",
    "HookedAutoModel",
    "ModelNotFoundError",
    "ModelShape",
    "UnsupportedArchitectureError",
    "load_model",
    "supported_families",
]
__version__ = "0.1.0"
