"""The registry of model families, keyed by Hugging Face ``model_type`` and by name.

Every module of this package that defines ``ADAPTER`` (a :class:`FamilyAdapter`) is found
and registered on import, so adding a family is one small file (docs/architecture.md).
Families are listed by their adapter's ``order``, then by name.
"""

from __future__ import annotations

import importlib
import pkgutil

from arrakis.models.adapters.base import FamilyAdapter, qkv_index

__all__ = ["ADAPTERS", "FamilyAdapter", "UnsupportedArchitectureError", "adapter_for", "qkv_index"]


def discover() -> dict[str, FamilyAdapter]:
    """Every ``ADAPTER`` defined by a module of this package, by family name, in registry order."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "base":
            continue
        adapter = getattr(importlib.import_module(f"{__name__}.{info.name}"), "ADAPTER", None)
        if isinstance(adapter, FamilyAdapter):
            found.append(adapter)
    found.sort(key=lambda a: (a.order, a.family))
    families = [a.family for a in found]
    if len(set(families)) != len(families):
        raise RuntimeError(f"two adapters declare the same family: {sorted(families)}")
    return {a.family: a for a in found}


ADAPTERS: dict[str, FamilyAdapter] = discover()
_BY_NAME: dict[str, FamilyAdapter] = {name: a for a in ADAPTERS.values() for name in a.names}


class UnsupportedArchitectureError(ValueError):
    """A model family arrakis has no adapter for."""


def _supported() -> str:
    return ", ".join(f"{a.family} (model_type {a.model_type!r})" for a in ADAPTERS.values())


def adapter_for(name_or_model_type: str) -> FamilyAdapter:
    """The adapter for a family name ("gpt-neox") or a Hugging Face model_type ("gpt_neox")."""
    key = name_or_model_type.lower()
    if key in _BY_NAME:
        return _BY_NAME[key]
    raise UnsupportedArchitectureError(
        f"unsupported model family {name_or_model_type!r}; arrakis supports: {_supported()}"
    )
