"""Compatibility path: ``from arrakis.src.core_arrakis.activation_cache import *``.

Re-exports the hooked model classes from :mod:`arrakis.models`, where they live.
"""

from arrakis.models import ActivationCache, HookedAutoConfig, HookedAutoModel

__all__ = ["ActivationCache", "HookedAutoConfig", "HookedAutoModel"]
