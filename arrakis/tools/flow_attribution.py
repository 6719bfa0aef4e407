"""``trace_information_flow(method="attribution")``: which heads carry information from src
to dst that dst's prediction needs, estimated for every attention edge from one forward and
one backward pass (the mathematics: ``arrakis.circuits.attribution``; docs/mathematics.md#information-flow).

The gradient pass runs on the prompt up to dst (later positions cannot change dst's logits)
and keeps, per layer, only the edge estimates between src and dst: [head, rows, rows] with
rows = dst - src + 1, never a T^2 x H x D tensor.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from arrakis.circuits.attribution import edge_attributions, strongest_routes
from arrakis.models import HookedAutoModel
from arrakis.models.pattern_gradients import pattern_gradients
from arrakis.tools.flow_question import FlowMetric, build_flow
from arrakis.tools.results.flow import FlowEdge, FlowPath, HeadFlow, Hop, InformationFlow, LayerFlow

logger = logging.getLogger(__name__)
MAX_EDGES = 400  # edges kept for the graph and the plot, strongest first
SATURATED = math.log(0.9)  # log p above this: the first order understates large drops (measured on SmolLM2)
NOTES = [
    "head scores are first-order (attribution) estimates of the drop in the metric when the head's "
    "dst <- src edge is knocked out (the row renormalised); verify=True computes them exactly",
]


def trace_attribution(
    model: HookedAutoModel,
    ids: Tensor,
    src: int,
    dst: int,
    layers: list[int],
    metric: FlowMetric,
    *,
    top_k: int,
    n_paths: int,
    min_edge_flow: float,
) -> InformationFlow:
    """Edge attribution of every head's edges between src and dst in ``layers`` of ``ids`` [1, pos]."""

    def reduce(layer: int, pattern: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
        # rows src..dst with every key (the renormalisation needs the whole row), then keys src..dst
        edges = edge_attributions(pattern[:, src : dst + 1], grad[:, src : dst + 1])[:, :, src:]
        return edges.cpu(), pattern[:, dst, src].cpu()  # [head, rows, rows], A[h, dst, src]; small, on the CPU

    _, value, results = pattern_gradients(model, ids, metric.of_clean, layers, dst, reduce)
    layer_flows = []
    for layer in layers:
        edges, attention = results[layer]
        scores = edges[:, -1, 0]  # dst's row, src's column
        heads = [HeadFlow(head=h, attention=float(attention[h]), score=float(scores[h])) for h in range(len(scores))]
        layer_flows.append(LayerFlow(layer=layer, flow=float(scores.sum()), heads=heads))
    edge_tensors = [results[layer][0] for layer in layers]
    routes = strongest_routes(edge_tensors, n_paths)
    paths = [
        FlowPath(strength, [Hop(layers[index], head, src + j, src + i) for index, head, j, i in hops])
        for strength, hops in routes
    ]
    notes = list(NOTES)
    if metric.kind == "log_prob" and value > SATURATED:
        notes.append(
            f"the prediction is saturated (p = {math.exp(value):.2f}): log p is flat near 1, so first-order "
            "estimates understate large drops; verify=True gives the exact ones, or measure a logit difference (foil=)"
        )
    edges = strongest_edges(edge_tensors, layers, src, min_edge_flow)
    return build_flow(
        model,
        ids,
        layer_flows,
        src=src,
        dst=dst,
        top_k=top_k,
        paths=paths,
        edges=edges,
        method="attribution",
        metric=metric,
        value=value,
        notes=notes,
    )


def strongest_edges(edges: list[Tensor], layers: list[int], src: int, min_share: float) -> list[FlowEdge]:
    """Edges i <- j (src <= j < i <= dst) whose |estimate| is at least ``min_share`` of the
    strongest one's, at most MAX_EDGES of them, strongest first."""
    below = torch.ones(edges[0].shape[-1], edges[0].shape[-1], dtype=torch.bool).tril(-1)
    strongest = max(float(e.abs().amax()) for e in edges)
    if strongest == 0:
        return []
    found: list[tuple[float, int, int, int, int]] = []
    for index, layer_edges in enumerate(edges):
        size = layer_edges.abs() * below
        keep = (size >= max(min_share * strongest, torch.finfo(torch.float32).tiny)).nonzero().tolist()
        found += [(float(layer_edges[h, i, j]), index, h, i, j) for h, i, j in keep]
        if len(found) > 4 * MAX_EDGES:
            found = sorted(found, key=lambda e: -abs(e[0]))[:MAX_EDGES]
    found = sorted(found, key=lambda e: -abs(e[0]))[:MAX_EDGES]
    return [FlowEdge.at(layers[index], h, src + j, src + i, score) for score, index, h, i, j in found]
