"""The experiment bench: tools by name, handed to experiment functions; logged, profiled, tested, plotted runs."""

from arrakis.bench.base_bench import BaseInterpretabilityBench
from arrakis.bench.hypothesis import HypothesisTest, welch_t_test
from arrakis.bench.plotting import PLOTTING_LIBS, plot_data
from arrakis.bench.profile import LayerProfile, ProfiledRun, profile_run
from arrakis.bench.store import (
    AmbiguousVersionError,
    ExperimentLookupError,
    ExperimentStore,
    Run,
    VersionNotFoundError,
    to_json,
    version_hash,
)

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
