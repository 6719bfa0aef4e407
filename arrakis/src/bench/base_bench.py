"""Compatibility path: ``from arrakis.src.bench.base_bench import BaseInterpretabilityBench``."""

from arrakis.bench.base_bench import BaseInterpretabilityBench

__all__ = ["BaseInterpretabilityBench"]
