"""``trace_information_flow``: which heads carry information from a source position to a
destination position, in which layers, along which routes, and how much it matters to what
the model predicts at dst (docs/mathematics.md#information-flow).

The work is split by concern: ``flow_question`` resolves the positions, layers and metric;
``flow_attribution`` estimates every edge's knockout effect from one forward and one
backward pass (the default; ``method="integrated"`` adds ``steps`` passes along the
scaled knockout); ``flow_routes`` computes Information Flow Routes (proximity,
for comparison); ``flow_verify`` runs the exact knockouts. The result classes live in
``arrakis.tools.results.flow``.
"""

from __future__ import annotations

import logging

from torch import Tensor

from arrakis.circuits.flow import RESIDUAL
from arrakis.models import HookedAutoModel
from arrakis.tasks import Task
from arrakis.tools.flow_attribution import trace_attribution
from arrakis.tools.flow_question import FlowMetric, resolve_layers, resolve_metric, resolve_positions
from arrakis.tools.flow_routes import trace_routes
from arrakis.tools.flow_verify import verify_flow
from arrakis.tools.results.flow import METHODS, FlowPath, HeadFlow, Hop, InformationFlow, LayerFlow
from arrakis.tools.task_means import task_flow

logger = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "RESIDUAL",
    "FlowMetric",
    "FlowPath",
    "HeadFlow",
    "Hop",
    "InformationFlow",
    "LayerFlow",
    "resolve_layers",
    "resolve_metric",
    "resolve_positions",
    "trace",
]


def trace(
    model: HookedAutoModel,
    ids: Tensor | Task,
    src: int | Tensor,
    dst: int | Tensor,
    layers: list[int],
    metric: FlowMetric,
    *,
    method: str = "attribution",
    top_k: int = 5,
    n_paths: int = 5,
    min_edge_flow: float = 0.01,
    verify: bool | str = False,
    steps: int = 5,
) -> InformationFlow:
    """Trace src -> dst through ``layers`` of one sequence ``ids`` [1, pos] (checked input); of a
    task (``ids``), each example at its own src and dst, averaged (``src``, ``dst``, ``metric``
    are the task's)."""
    if isinstance(ids, Task):
        options = {"top_k": top_k, "n_paths": n_paths, "min_edge_flow": min_edge_flow, "verify": verify}
        return task_flow(model, ids, layers, method=method, **options, steps=steps)
    logger.info("tracing %s -> %s through %d layers (%s)", src, dst, len(layers), method)
    options = {"top_k": top_k, "n_paths": n_paths, "min_edge_flow": min_edge_flow}
    if method == "routes":
        flow = trace_routes(model, ids, src, dst, layers, metric, **options)
    else:
        flow = trace_attribution(model, ids, src, dst, layers, metric, **options, method=method, steps=steps)
    if verify:
        flow.verification = verify_flow(model, ids, flow, metric, every_head=verify == "all")
    return flow
