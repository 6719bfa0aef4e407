"""Package attributes loaded on first use (PEP 562), so that importing a package is cheap.

``import arrakis`` and ``import arrakis.bench`` import neither torch nor transformers: the
command line's argument checks and its metadata commands answer in a fraction of a second,
and the heavy modules load when a name of theirs is first asked for.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, where: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, for names ``where`` maps to the
    module that defines them. A name is looked up once, then kept in the package."""

    def get(name: str) -> Any:
        if name in where:
            value = getattr(importlib.import_module(where[name]), name)
            setattr(sys.modules[package], name, value)  # looked up once
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def names() -> list[str]:
        return sorted([*vars(sys.modules[package]), *where])

    return get, names
