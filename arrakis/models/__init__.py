"""Models and their family adapters: hooked forward passes and per-head weights."""

from arrakis.models.adapters import ADAPTERS, FamilyAdapter, UnsupportedArchitectureError, adapter_for
from arrakis.models.cache import ActivationCache
from arrakis.models.config import HookedAutoConfig, ModelShape, supported_families
from arrakis.models.hook_points import HookNameError
from arrakis.models.hooked_model import HookedAutoModel, load_model
from arrakis.models.load_errors import ModelLoadError, ModelNotFoundError
from arrakis.models.weights import HeadWeights

__all__ = [
    "ADAPTERS",
    "ActivationCache",
    "FamilyAdapter",
    "HeadWeights",
    "HookNameError",
    "HookedAutoConfig",
    "HookedAutoModel",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelShape",
    "UnsupportedArchitectureError",
    "adapter_for",
    "load_model",
    "supported_families",
]
