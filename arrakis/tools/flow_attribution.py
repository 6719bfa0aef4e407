"""``trace_information_flow(method="attribution" | "integrated")``: which heads carry
information from src to dst that dst's prediction needs, estimated for every attention edge
from one forward and one backward pass (the mathematics: ``arrakis.circuits.attribution``;
docs/mathematics.md#information-flow).

``method="integrated"`` then integrates the gradient along the knockout scaled by alpha,
A + alpha dA, at ``steps`` midpoints (``arrakis.models.pattern_gradients.scaled_edge_gradients``):
the dst <- src edge is scaled in every head of every analysed layer at once, so each head's
score is its share of that joint knockout and the shares add up to the joint effect (the
all-layers estimate). A layer's value is its heads' shares: its part of the joint knockout,
not that layer knocked out alone (one batch row per layer would give that, at n_layers
times the cost; verify=True gives it exactly).

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
from arrakis.models.pattern_gradients import pattern_gradients, scaled_edge_gradients
from arrakis.tools.flow_question import FlowMetric, build_flow
from arrakis.tools.results.flow import FlowEdge, FlowPath, HeadFlow, Hop, InformationFlow, LayerFlow

logger = logging.getLogger(__name__)
MAX_EDGES = 400  # edges kept for the graph and the plot, strongest first
SATURATED = math.log(0.9)  # log p above this: the first order understates large drops (measured on SmolLM2)
NOTES = {
    "attribution": "head scores are first-order (attribution) estimates of the drop in the metric when the head's "
    "dst <- src edge is knocked out (the row renormalised); per-layer and all-layer values are first-order "
    "estimates (sums of the heads') unless verified: with verify=True they are the exact knockouts",
    "integrated": "head scores are integrated-gradient estimates (the knockout scaled along alpha, {steps} steps): "
    "each head's share of the drop when the dst <- src edge is knocked out in every head of every analysed "
    "layer at once; a layer's estimate is its part of that joint drop, not the layer knocked out alone; "
    "verify=True computes each layer's knockout exactly",
}


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
    method: str = "attribution",
    steps: int = 5,
) -> InformationFlow:
    """Edge attribution of every head's edges between src and dst in ``layers`` of ``ids`` [1, pos]
    (``method="integrated"``: the dst <- src scores integrated over ``steps`` scaled knockouts)."""

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
        total = float(scores.sum())  # first order is linear: the layer's joint estimate is the heads' sum
        layer_flows.append(LayerFlow(layer=layer, flow=total, heads=heads, estimate=total))
    joint = sum(lf.flow for lf in layer_flows)
    if method == "integrated":
        clean = {layer: results[layer][1] for layer in layers}
        joint = integrate(model, ids, metric, (dst, src), clean, layer_flows, steps)
    edge_tensors = [results[layer][0] for layer in layers]
    routes = strongest_routes(edge_tensors, n_paths)
    paths = [
        FlowPath(strength, [Hop(layers[index], head, src + j, src + i) for index, head, j, i in hops])
        for strength, hops in routes
    ]
    notes = [NOTES[method].format(steps=steps)]
    if method == "attribution" and metric.kind == "log_prob" and value > SATURATED:
        notes.append(
            f"the prediction is saturated (p = {math.exp(value):.2f}): log p is flat near 1, so first-order "
            "estimates understate large drops and may misrank heads; use method='integrated', verify=True for the "
            "exact drops, or a logit difference (foil=)"
        )
    if method == "integrated":
        notes.append("routes and edges other than dst <- src are first-order estimates")
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
        method=method,
        metric=metric,
        value=value,
        notes=notes,
        all_layers={"estimate": joint, "exact": None},
    )


def integrate(
    model: HookedAutoModel,
    ids: Tensor,
    metric: FlowMetric,
    edge: tuple[int, int],
    clean: dict[int, Tensor],
    layer_flows: list[LayerFlow],
    steps: int,
) -> float:
    """Replace ``layer_flows``' first-order scores by integrated ones (kept as ``first_order``);
    returns the integrated estimate of knocking out dst <- src in every analysed layer at once."""
    rows = [[lf.layer for lf in layer_flows]]  # one row: every analysed layer's edge scaled together
    _, shares = scaled_edge_gradients(model, ids, metric, edge, clean, rows, steps)  # [row, layer, head]
    for lf in layer_flows:
        for head in lf.heads:
            head.first_order, head.score = head.score, float(shares[0, lf.layer, head.head])
        lf.estimate = lf.flow = float(shares[0, lf.layer].sum())
    return float(shares[0].sum())


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
