"""The experiment bench: tools by name, handed to experiment functions; logged, profiled, tested, plotted runs.

Everything is loaded on first use: the experiment store needs only the standard library, so
that reading it (``arrakis experiments``) does not import torch.
"""

from arrakis.lazy import lazy_exports

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

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

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
