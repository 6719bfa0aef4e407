"""The experiment bench: tools by name, handed to experiment functions; logged, profiled, tested, plotted runs.

Everything is loaded on first use: the experiment store needs only the standard library, so
that reading it (``arrakis experiments``) does not import torch.
"""

import importlib
from typing import Any

_LAZY = {
    "BaseInterpretabilityBench": "arrakis.bench.base_bench",
    "HypothesisTest": "arrakis.bench.hypothesis",
    "welch_t_test": "arrakis.bench.hypothesis",
    "PLOTTING_LIBS": "arrakis.bench.plotting",
    "plot_data": "arrakis.bench.plotting",
    "LayerProfile": "arrakis.bench.profile",
    "ProfiledRun": "arrakis.bench.profile",
    "profile_run": "arrakis.bench.profile",
    "AmbiguousVersionError": "arrakis.bench.store",
    "ExperimentLookupError": "arrakis.bench.store",
    "ExperimentStore": "arrakis.bench.store",
    "Run": "arrakis.bench.store",
    "VersionNotFoundError": "arrakis.bench.store",
    "to_json": "arrakis.bench.store",
    "version_hash": "arrakis.bench.store",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'arrakis.bench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "PLOTTING_LIBS",
    "AmbiguousVersionError",
    "BaseInterpretabilityBench",
    "ExperimentLookupError",
    "ExperimentStore",
    "HypothesisTest",
    "LayerProfile",
    "ProfiledRun",
    "Run",
    "VersionNotFoundError",
    "plot_data",
    "profile_run",
    "to_json",
    "version_hash",
    "welch_t_test",
]
