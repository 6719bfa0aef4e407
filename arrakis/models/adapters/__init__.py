"""The registry of model families, keyed by Hugging Face ``model_type`` and by name.

Adding a family is one small file declaring a :class:`FamilyAdapter` and one line here.
"""

from __future__ import annotations

from arrakis.models.adapters import (
    gemma,
    gemma2,
    gemma3,
    gpt2,
    gpt_neo,
    gpt_neox,
    llama,
    mistral,
    olmo2,
    phi3,
    qwen2,
    qwen3,
    stablelm,
)
from arrakis.models.adapters.base import FamilyAdapter, qkv_index

__all__ = ["ADAPTERS", "FamilyAdapter", "UnsupportedArchitectureError", "adapter_for", "qkv_index"]

ADAPTERS: dict[str, FamilyAdapter] = {
    m.ADAPTER.family: m.ADAPTER
    for m in (gpt2, gpt_neo, gpt_neox, llama, gemma, phi3, qwen2, mistral, stablelm, gemma2, gemma3, qwen3, olmo2)
}
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
