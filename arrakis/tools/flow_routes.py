"""``trace_information_flow(method="routes")``: Information Flow Routes (Ferrando & Voita
2024; proximity importances after ALTI), kept for comparison. Where attention's output is
normalised before the residual add (post-norms), each part is taken as it enters the
residual, g * part / s_i with the norm's per-token scale s_i frozen at its clean value, so
the parts still add up to ``hook_attn_out`` (docs/mathematics.md#conventions). It measures how much of dst's
residual stream comes from src, not whether it matters to dst's prediction (the
attribution method does that). The mathematics is in ``arrakis.circuits.flow``.

One forward pass keeps only the rows between src and dst; the importances are streamed
layer by layer, propagating influence, following the strongest paths (a beam search), and
building the graph as it goes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from arrakis.circuits.flow import RESIDUAL, chunked_importances
from arrakis.models import HookedAutoModel
from arrakis.tools.flow_question import FlowMetric, build_flow
from arrakis.tools.results.flow import FlowEdge, FlowPath, HeadFlow, Hop, InformationFlow, LayerFlow

ROUTE_HOOKS = ("hook_resid_pre", "hook_attn_out", "attn.hook_pattern", "attn.hook_v")
NOTES = [
    "routes: importances measure how much of dst's residual stream comes from src (proximity), "
    "not whether it matters to the prediction; use method='attribution' for that",
]


def trace_routes(
    model: HookedAutoModel,
    ids: Tensor,
    src: int,
    dst: int,
    layers: list[int],
    metric: FlowMetric,
    *,
    top_k: int = 5,
    n_paths: int = 5,
    min_edge_flow: float = 0.01,
) -> InformationFlow:
    """The routes from src to dst through ``layers`` of one sequence ``ids`` [1, pos]."""
    post_norm = model.cfg.attn_post_norm
    hooks = (*ROUTE_HOOKS, "ln1_post.hook_in") if post_norm else ROUTE_HOOKS
    names = {f"blocks.{layer}.{hook}" for layer in layers for hook in hooks}

    def rows_only(name: str, tensor: Tensor) -> Tensor:
        # keep only what the routes read: rows src..dst, keys ..dst (never T^2 x H x D)
        if name.endswith("hook_pattern"):  # [batch, head, query_pos, key_pos]
            return tensor[0, :, src : dst + 1, : dst + 1].float()
        if name.endswith("hook_v"):  # [batch, pos, head, d_head]
            return tensor[0, : dst + 1].float()
        return tensor[0, src : dst + 1].float()  # [batch, pos, d_model]

    output, cache = model.run_with_cache(ids, names=names, transform=rows_only)
    value = float(metric.of_clean(output.logits[0, dst]).detach())  # a bad custom metric stops here
    n_rows, n_keys = dst - src + 1, dst + 1
    f_prev = torch.zeros(n_keys)
    f_prev[src] = 1.0
    beam = torch.zeros(n_rows, n_paths)  # best path scores ending at each row
    beam[0, 0] = 1.0
    pointers: list[Tensor] = []  # per layer [rows, n_paths, 3]: (head or RESIDUAL, source row, slot)
    layer_flows: list[LayerFlow] = []
    edges: list[FlowEdge] = []
    for layer in layers:
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [head, rows, keys]
        v = cache[f"blocks.{layer}.attn.hook_v"]  # [keys, head, d_head]
        residual = cache[f"blocks.{layer}.hook_resid_pre"]
        y = residual + cache[f"blocks.{layer}.hook_attn_out"]  # [rows, D]
        # the parts as they enter the residual (model.head_outputs): v_j W_O[h] for every key j
        # and b_O; with a post-norm, g * part / s_i with each row's scale s_i frozen at its clean
        # value: the values are taken at dst's scale, each row's pattern carries s_dst / s_i
        into = cache[f"blocks.{layer}.ln1_post.hook_in"] if post_norm else None  # [rows, D]
        at_dst = None if into is None else into[-1].expand(n_keys, -1)
        value_out, b_O = model.head_outputs(layer, v, at_dst)  # [keys, head, D], [D] (post-norm: unused)
        parts_pattern = pattern
        if into is not None:
            scale = model.attn_post_norm(layer, into)[1]  # [rows]
            parts_pattern = pattern * (scale[-1] / scale)[None, :, None]
            b_O = model.head_outputs(layer, v[src:], into)[1]  # one per row: [rows, D]
        f_new = torch.zeros(n_keys)
        layer_pointers = torch.zeros(n_rows, n_paths, 3, dtype=torch.long)
        new_beam = torch.zeros(n_rows, n_paths)
        chunks = chunked_importances(y, residual, parts_pattern, value_out, b_O, first_key_row=src)
        for rows, *parts in chunks:
            # the importances are computed where the layer ran; the bookkeeping is small, on the CPU
            imp_res, imp_heads, imp_bias = (part.cpu() for part in parts)
            positions = torch.arange(rows.start, rows.stop) + src
            f_keys = f_prev[: imp_heads.shape[-1]]  # this chunk's keys
            carried = imp_heads @ f_keys  # [head, rows, keys] x [keys] -> [head, rows]
            f_new[positions] = imp_res * f_prev[positions] + carried.sum(0)
            _follow_paths(beam, imp_res, imp_heads[:, :, src:], rows, new_beam, layer_pointers)
            edges += _edges(layer, positions, imp_res, imp_heads, f_keys, min_edge_flow)
            if rows.stop == n_rows:  # the chunk holding dst: record its detail
                layer_flows.append(
                    _layer_detail(layer, f_new[dst], imp_res, imp_heads, imp_bias, carried, pattern, value_out, src)
                )
        f_prev, beam = f_new, new_beam
        pointers.append(layer_pointers)
    paths = _backtrack(beam, pointers, layers, src)
    return build_flow(
        model,
        ids,
        layer_flows,
        src=src,
        dst=dst,
        top_k=top_k,
        paths=paths,
        edges=edges,
        method="routes",
        metric=metric,
        value=value,
        notes=NOTES,
    )


def _layer_detail(layer, flow, imp_res, imp_heads, imp_bias, carried, pattern, value_out, src) -> LayerFlow:
    """Per-head numbers at dst (the last row of the last chunk)."""
    heads = []
    for h in range(pattern.shape[0]):
        attention = float(pattern[h, -1, src])
        heads.append(
            HeadFlow(
                head=h,
                attention=attention,
                score=float(carried[h, -1]),
                contribution_norm=float((attention * value_out[src, h]).norm()),
                importance=float(imp_heads[h, -1, src]),
                importance_total=float(imp_heads[h, -1].sum()),
                carried=float(carried[h, -1]),
            )
        )
    return LayerFlow(layer, float(flow), heads, residual_share=float(imp_res[-1]), bias_share=float(imp_bias[-1]))


def _edges(layer, positions, imp_res, imp_heads, f_prev, min_flow) -> list[FlowEdge]:
    """Graph edges of one chunk of rows that carry at least ``min_flow``."""
    out = []
    flow_heads = imp_heads * f_prev  # [head, rows, keys]
    for h, r, j in (flow_heads >= min_flow).nonzero().tolist():
        source, target = int(j), int(positions[r])
        out.append(
            FlowEdge.at(layer, h, source, target, float(flow_heads[h, r, j]), importance=float(imp_heads[h, r, j]))
        )
    flow_res = imp_res * f_prev[positions]
    for r in (flow_res >= min_flow).nonzero().flatten().tolist():
        position = int(positions[r])
        out.append(FlowEdge.at(layer, RESIDUAL, position, position, float(flow_res[r]), importance=float(imp_res[r])))
    return out


def _follow_paths(beam, imp_res, imp_heads, rows, new_beam, pointers) -> None:
    """One layer of a beam search for the strongest paths ending at each row.

    beam [rows, k]: best path scores ending at each row before the layer; imp_heads
    [head, chunk_rows, rows]: importances from each source row. Candidates are extended by
    a head hop (any earlier row) or a residual hop (same row)."""
    n_heads, chunk, n_sources = imp_heads.shape
    n_rows, k = beam.shape
    weights = torch.zeros(chunk, n_heads + 1, n_rows)
    weights[:, :n_heads, :n_sources] = imp_heads.transpose(0, 1)
    rows_here = torch.arange(rows.start, rows.stop)
    weights[torch.arange(chunk), n_heads, rows_here] = imp_res  # residual: stay in place
    # [chunk, head + 1, rows, 1] * [1, 1, rows, k] -> candidate scores
    candidates = (weights[..., None] * beam[None, None]).flatten(1)
    scores, flat = candidates.topk(k, dim=1)
    new_beam[rows] = scores
    head, rest = flat // (n_rows * k), flat % (n_rows * k)
    head = torch.where(head == n_heads, RESIDUAL, head)
    pointers[rows] = torch.stack([head, rest // k, rest % k], dim=-1)


def _backtrack(beam: Tensor, pointers: list[Tensor], layers: list[int], src: int) -> list[FlowPath]:
    paths = []
    last = beam.shape[0] - 1  # dst's row
    for slot in range(beam.shape[1]):
        score = float(beam[last, slot])
        if score <= 0:
            break
        hops, row, s = [], last, slot
        for layer, layer_pointers in zip(reversed(layers), reversed(pointers), strict=True):
            head, source, s = (int(x) for x in layer_pointers[row, s])
            hops.append(Hop(layer, head, source + src, row + src))
            row = source
        paths.append(FlowPath(score, hops[::-1]))
    return paths
