"""The circuits mathematics: pure functions on stacked per-head weights and activations."""

from arrakis.circuits.composition import MODES, composition_baseline, composition_scores

__all__ = ["MODES", "composition_baseline", "composition_scores"]
