"""The experiment bench: tools by name, handed to experiment functions."""

from arrakis.bench.base_bench import BaseInterpretabilityBench

__all__ = ["BaseInterpretabilityBench"]
