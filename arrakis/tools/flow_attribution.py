"""``trace_information_flow(method="attribution" | "integrated")``: which heads carry
information from src to dst that dst's prediction needs, estimated for every attention edge
from one forward and one backward pass (the mathematics: ``arrakis.circuits.attribution``;
docs/mathematics.md#information-flow).

``method="integrated"`` then integrates the gradient along each knockout scaled by alpha,
A + alpha dA, at ``steps`` Gauss-Legendre nodes (``arrakis.models.scaled_knockouts``), with
one path per knockout the result prints: each head's dst <- src edge alone (its score), each
layer's edges together (the layer's value) and every analysed layer's at once (the
all-layers value). Each number therefore estimates the very knockout it names, never a sum
of other knockouts' estimates; as steps grow it converges to that knockout's exact drop. The
all-layers path also splits the joint drop into each head's share (``joint_share``): where
heads are redundant, a head's share of the joint knockout is large while its own knockout
is small.

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
from arrakis.models.scaled_knockouts import scaled_edge_gradients
from arrakis.tools.flow_question import FlowMetric, build_flow
from arrakis.tools.results.flow import FlowEdge, FlowPath, HeadFlow, Hop, InformationFlow, LayerFlow

logger = logging.getLogger(__name__)
MAX_EDGES = 400  # edges kept for the graph and the plot, strongest first
SATURATED = math.log(0.9)  # log p above this: the first order understates large drops (measured on SmolLM2)
NOTES = {
    "attribution": "head scores are first-order (attribution) estimates of the drop in the metric when the head's "
    "dst <- src edge is knocked out (the row renormalised); per-layer and all-layer values are first-order "
    "estimates (sums of the heads') unless verified: with verify=True they are the exact knockouts",
    "integrated": "integrated-gradient estimates ({steps} steps), each along its own scaled knockout: a head's "
    "score estimates its dst <- src edge knocked out alone, a layer's value that layer's edges knocked out "
    "together, the all-layers value every analysed layer's at once (not sums of the heads'); verify=True "
    "computes them exactly",
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
    """Replace ``layer_flows``' first-order scores by integrated ones (kept as ``first_order``):
    one path per head, per layer and for every layer at once; returns the all-layers estimate."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    layers = [lf.layer for lf in layer_flows]
    rows = torch.zeros(len(layers) * n_heads + len(layers) + 1, n_layers, n_heads, dtype=torch.bool)
    for index, layer in enumerate(layers):
        rows[index * n_heads + torch.arange(n_heads), layer, torch.arange(n_heads)] = True  # each head alone
        rows[len(layers) * n_heads + index, layer] = True  # the layer's heads together
    rows[-1, layers] = True  # every analysed layer at once
    _, shares = scaled_edge_gradients(model, ids, metric.of_clean, edge, clean, rows, steps, progress=True)
    drops = shares.sum((1, 2))  # each row's estimated drop
    for index, lf in enumerate(layer_flows):
        for head in lf.heads:
            head.first_order, head.score = head.score, float(drops[index * n_heads + head.head])
            head.joint_share = float(shares[-1, lf.layer, head.head])
        lf.estimate = lf.flow = float(drops[len(layers) * n_heads + index])
    return float(drops[-1])


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
