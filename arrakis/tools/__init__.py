"""Tools: analyses that turn weights and activations into results. ``TOOLS`` is the
registry the bench starts from, keyed by the name ``use_tools`` passes."""

from arrakis.tools.base import BaseInterpretabilityTool
from arrakis.tools.results import (
    Circuit,
    CircuitEdge,
    CompositionScores,
    FlowEdge,
    FlowPath,
    HeadFlow,
    HeadRoles,
    HeadSelection,
    InformationFlow,
    LayerFlow,
)
from arrakis.tools.write_read import WriteReadAnalyzer

TOOLS: dict[str, type[BaseInterpretabilityTool]] = {WriteReadAnalyzer.name: WriteReadAnalyzer}

__all__ = [
    "TOOLS",
    "BaseInterpretabilityTool",
    "Circuit",
    "CircuitEdge",
    "CompositionScores",
    "FlowEdge",
    "FlowPath",
    "HeadFlow",
    "HeadRoles",
    "HeadSelection",
    "InformationFlow",
    "LayerFlow",
    "WriteReadAnalyzer",
]
