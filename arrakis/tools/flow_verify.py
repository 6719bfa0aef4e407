"""Exact knockouts beside the estimates of a flow trace (``verify=True``; docs/mathematics.md#information-flow).

Knocked out, exactly (the row renormalised, as the estimates assume), each in its own copy
of the prompt and all copies batched (``HookedAutoModel.knockout_logits``):
- the dst <- src edge of each top head and each top suppressor (``verify="all"``: of every
  head of every analysed layer);
- the dst <- src edge of all heads of each analysed layer;
- the dst <- src edge of all heads of all analysed layers at once.
Each gets the exact drop in the metric (clean minus knocked out) and the KL divergence of
dst's next-token distribution, beside its estimate; Spearman's rank correlation compares
estimates and exact drops over the heads and over the layers. The per-layer values and the
all-layers value of the result become these exact drops (the estimates stay beside them),
and a note says when the heads are redundant: the exact joint knockout is more than
REDUNDANT times (or less than 1/REDUNDANT of) the sum of the single-edge estimates.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from arrakis.circuits.attribution import spearman
from arrakis.models import HookedAutoModel
from arrakis.tools.flow_question import FlowMetric
from arrakis.tools.results.flow import CAUSAL, InformationFlow

REDUNDANT = 2.0  # exact joint / sum of single-edge estimates beyond this (either way): the note


def verify_flow(
    model: HookedAutoModel, ids: Tensor, flow: InformationFlow, metric: FlowMetric, *, every_head: bool
) -> dict[str, Any]:
    """Exact knockouts for ``flow`` (fills ``exact`` of its heads and layers); returns the record."""
    src, dst = flow.src_pos, flow.dst_pos
    layers = flow.layer_ids
    if every_head:
        heads = [(lf.layer, h.head) for lf in flow.layers for h in lf.heads]
    else:
        heads = list(dict.fromkeys([*flow.top_heads, *flow.suppressors]))
    knockouts: list[dict[int, list]] = [{layer: [(head, dst, src)]} for layer, head in heads]
    knockouts += [{layer: [(None, dst, src)]} for layer in layers]
    knockouts.append({layer: [(None, dst, src)] for layer in layers})
    logits = model.knockout_logits(ids[:, : dst + 1], [{}, *knockouts], dst)  # row 0: clean
    values = metric.rows(logits)
    drops = (values[0] - values[1:]).tolist()
    log_p = logits.float().log_softmax(-1)
    kls = (log_p[0].exp() * (log_p[0] - log_p[1:])).sum(-1).tolist()
    by_layer = {lf.layer: lf for lf in flow.layers}
    causal = flow.method in CAUSAL
    head_rows = []
    for (layer, head), drop, kl in zip(heads, drops, kls, strict=False):
        record = by_layer[layer].heads[head]
        record.exact = drop
        head_rows.append({"layer": layer, "head": head, "estimate": record.score, "exact": drop, "kl": kl})
    layer_rows = []
    for layer, drop, kl in zip(layers, drops[len(heads) :], kls[len(heads) :], strict=False):
        by_layer[layer].exact = drop
        estimate = by_layer[layer].estimate if causal else by_layer[layer].flow
        layer_rows.append({"layer": layer, "estimate": estimate, "exact": drop, "kl": kl})
    every = {"estimate": flow.all_layers.get("estimate") if causal else None, "exact": drops[-1], "kl": kls[-1]}
    if causal:
        flow.all_layers = {"estimate": every["estimate"], "exact": drops[-1]}
        flow.use_exact()
        note = redundancy_note(drops[-1], float(flow.head_scores.sum()))
        if note:
            flow.notes.append(note)
    record = {
        "metric": flow.metric,
        "heads": head_rows,
        "layers": layer_rows,
        "all_layers": every,
        "spearman_heads": _correlation(head_rows),
        "spearman_layers": _correlation(layer_rows),
        "every_head": every_head,
    }
    if every_head:
        record["top_overlap"] = top_overlap(head_rows, k=min(10, len(head_rows)))
    return record


def redundancy_note(joint: float, singles: float) -> str | None:
    """A note when the exact joint knockout and the sum of the single-edge estimates differ by
    more than REDUNDANT times (or in sign): the heads' single effects do not add up."""
    big, small = max(abs(joint), abs(singles)), min(abs(joint), abs(singles))
    if big < 1e-3 or (small * REDUNDANT >= big and joint * singles > 0):
        return None
    return (
        f"redundancy: knocking out dst <- src in every analysed layer at once drops the metric by {joint:+.3g} "
        f"(exact), but the single-edge estimates sum to {singles:+.3g}: the heads are redundant (or interact), "
        "so single-edge effects do not add up; read the exact per-layer and all-layer values"
    )


def _correlation(rows: list[dict[str, Any]]) -> float | None:
    if len(rows) < 2:
        return None
    value = spearman(torch.tensor([r["estimate"] for r in rows]), torch.tensor([r["exact"] for r in rows]))
    return None if value != value else value  # NaN (a constant column) -> None


def top_overlap(rows: list[dict[str, Any]], k: int) -> dict[str, Any]:
    """How many of the k heads with the largest estimates are among the k with the largest exact drops."""
    by_estimate = {(r["layer"], r["head"]) for r in sorted(rows, key=lambda r: -r["estimate"])[:k]}
    by_exact = {(r["layer"], r["head"]) for r in sorted(rows, key=lambda r: -r["exact"])[:k]}
    return {"k": k, "overlap": len(by_estimate & by_exact)}
