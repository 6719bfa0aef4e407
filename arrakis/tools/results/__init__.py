"""Results of the tools: small typed objects that also behave as what the original returned
(``heads``: selections, composition scores, head roles, circuits; ``flow``: an information-
flow trace). Each has ``to_dict()``/``from_dict()``, ``plot()`` and ``_repr_html_``."""

from arrakis.tools.results.attribution import LogitAttribution
from arrakis.tools.results.flow import FlowEdge, FlowPath, HeadFlow, Hop, InformationFlow, LayerFlow
from arrakis.tools.results.heads import Circuit, CircuitEdge, CompositionScores, Head, HeadRoles, HeadSelection
from arrakis.tools.results.patching import HeadPatching

__all__ = [
    "Circuit",
    "CircuitEdge",
    "CompositionScores",
    "FlowEdge",
    "FlowPath",
    "Head",
    "HeadFlow",
    "HeadPatching",
    "HeadRoles",
    "HeadSelection",
    "Hop",
    "InformationFlow",
    "LayerFlow",
    "LogitAttribution",
]
