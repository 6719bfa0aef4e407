"""The results a tool keeps: computed once for the same question while the model's weights
stay the same.

An entry is keyed by (kind, key), e.g. ("composition", ("K", True)) or ("roles", the
prompts' fingerprint), and remembers the weights object it was computed from. The model
builds a new weights object whenever a parameter changes (in place or replaced), so an
entry whose weights are not the model's current ones is stale and is computed again. The
last ``size`` entries are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any


class ResultCache:
    """Results by (kind, key), valid while the weights object they came from is current."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self.entries: dict[tuple[str, Hashable], tuple[object, Any]] = {}

    def get(self, kind: str, key: Hashable, weights: object, compute: Callable[[], Any]) -> Any:
        """The result for (kind, key) computed from ``weights``: remembered, or computed now."""
        entry = self.entries.pop((kind, key), None)
        if entry is None or entry[0] is not weights:
            entry = (weights, compute())
        self.entries[(kind, key)] = entry  # most recently used last
        while len(self.entries) > self.size:
            self.entries.pop(next(iter(self.entries)))
        return entry[1]

    def clear(self) -> None:
        self.entries.clear()

    def __len__(self) -> int:
        return len(self.entries)
