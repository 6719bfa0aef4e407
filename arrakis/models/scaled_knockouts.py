r"""Integrated gradients along scaled attention knockouts (docs/mathematics.md#information-flow).

The knockout of the edge dst <- src in a set of heads (A -> A + dA: the edge's weight to 0,
the rest of its row renormalised) is scaled along alpha, A + alpha dA, and the metric's
rate of change is integrated over alpha in [0, 1] at ``steps`` Gauss-Legendre nodes. Each
*row* names its own set of heads and gets its own path, so a row of one head estimates that
head's knockout alone, a row of one layer that layer's, a row of every layer the joint one:
the estimate of a knockout never comes from other knockouts' paths, and it converges to the
exact knockout of its own row as the steps grow (the integral of a derivative along a path is
the difference of its ends).

The scaling is a bias b on the edge's pre-softmax score, added through the additive mask:
softmax then gives A'[src] = A[src] e^b / (1 - A[src] + A[src] e^b) with the rest of the row
renormalised, which is A + alpha dA when

    e^b = (1 - alpha) (1 - a) / (1 - (1 - alpha) a),        a = the clean A[h, dst, src]

(exact in the row's first scaled layer; in later ones the row is the one earlier edits left,
so a many-layer path bends but still ends at the exact knockout, alpha = 1). The bias is a
leaf of the graph, so one backward pass gives dm/db for every row and head at once, and

    dm/dalpha = sum over the row's heads of b'(alpha) dm/db,
    b'(alpha) = -1 / (1 - alpha) - a / (1 - (1 - alpha) a),

each term that head's share of the row's drop. Knocking out dst <- src changes dst's
residual only, so the rows run as copies of dst's token over the clean prefix's key/value
cache, the query tokens of one sequence, each masked from the others
(``arrakis.models.interventions``): one pass of a few hundred tokens per step. A family whose
attention masks by position itself (GPT-Neo) runs a batch row per copy instead.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import ExitStack

import numpy as np
import torch
from torch import Tensor, nn

from arrakis.models.adapters.base import module_at
from arrakis.models.interventions import (
    MAX_COPIES,
    AttentionModel,
    additive_mask,
    copies_mask,
    logits_at,
    prefix_cache,
)
from arrakis.models.pattern_gradients import frozen_parameters
from arrakis.progress import progress as progress_bar

EPS = 1e-6  # a and 1 - a are clamped here: an edge with none or all of its row's attention


def quadrature(steps: int) -> tuple[list[float], list[float]]:
    """Gauss-Legendre nodes in (0, 1) and their weights (summing to 1): exact for a rate that is
    a polynomial of degree < 2 steps in alpha; one step is the midpoint rule."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return [float(x) for x in (nodes + 1) / 2], [float(w) for w in weights / 2]


def scaled_edge_gradients(
    model: AttentionModel,
    input_ids: Tensor,
    metric: Callable[[Tensor], Tensor],
    edge: tuple[int, int],
    clean: dict[int, Tensor],
    rows: Tensor,
    steps: int,
    *,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Integrated gradients of ``metric(logits at dst)`` along the scaled knockout of the edge
    ``edge`` = (dst, src) of ``input_ids`` [1, pos], one path per row of ``rows`` (bool
    [n_rows, n_layers, n_heads]: the heads whose edge that row scales).

    ``clean[layer]`` [head] is the clean A[h, dst, src] of every layer some row scales.
    Returns (the metric of each row at each node [steps, n_rows], each head's integrated
    share of its row's drop, clean minus knocked out [n_rows, n_layers, n_heads], zero where
    a row does not scale that head). A row's shares add up to its knockout's drop.
    """
    model.require_forward()
    dst = edge[0]
    rows = rows.bool().cpu()
    shares = torch.zeros(rows.shape, dtype=torch.float32)
    values = torch.zeros(steps, rows.shape[0])
    one_sequence = dst > 0 and not model.adapter.masks_by_position
    cache, cache_arg = prefix_cache(model, input_ids, dst) if one_sequence else (None, "")
    chunks = range(0, rows.shape[0], MAX_COPIES)
    nodes, weights = quadrature(steps)
    passes = [(s, start) for s in range(steps) for start in chunks]
    shown = progress and rows.shape[0] * steps >= 1000
    for s, start in progress_bar(passes, "integrated knockouts", "pass", enabled=shown):
        chosen = rows[start : start + MAX_COPIES]
        if cache is not None:
            run = _copies_run(model, input_ids, dst, copy.deepcopy(cache), cache_arg)
        else:
            run = _rows_run(model, input_ids, dst)
        measured, rates = _scaled_pass(model, run, metric, edge, clean, chosen, nodes[s])
        values[s, start : start + len(chosen)] = measured
        shares[start : start + len(chosen)] -= weights[s] * rates
    return values, shares


Run = Callable[[int, Callable[[int, Tensor], Tensor]], Tensor]  # (n_rows, edit the layer's mask) -> logits


def _copies_run(model: AttentionModel, input_ids: Tensor, dst: int, cache: object, cache_arg: str) -> Run:
    """Rows as copies of dst's token, the query tokens of one sequence over the prefix's cache."""
    blocks = module_at(model.hf_model, model.adapter.layers)

    def run(n_rows: int, edit: Callable[[int, Tensor], Tensor]) -> Tensor:
        def masked(layer: int) -> Callable:
            def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
                mask = copies_mask(kwargs, model.cfg.n_heads, n_rows, dst)  # [1, head, copy, key]
                return args, {**kwargs, "attention_mask": edit(layer, mask[0].transpose(0, 1))[None].transpose(1, 2)}

            return hook

        ids = input_ids[:, dst : dst + 1].expand(1, n_rows)
        with ExitStack() as stack:
            for layer, block in enumerate(blocks):  # every layer: the copies must not see each other
                attn = module_at(block, model.adapter.attn)
                stack.callback(attn.register_forward_pre_hook(masked(layer), with_kwargs=True).remove)
            out = model.hf_model(
                input_ids=ids, use_cache=True, position_ids=torch.full_like(ids, dst), **{cache_arg: cache}
            )
        return out.logits[0]  # [copy, d_vocab]

    return run


def _rows_run(model: AttentionModel, input_ids: Tensor, dst: int) -> Run:
    """Rows as batch rows of the prompt up to dst (a family that masks by position itself)."""
    blocks = module_at(model.hf_model, model.adapter.layers)

    def run(n_rows: int, edit: Callable[[int, Tensor], Tensor]) -> Tensor:
        def masked(layer: int) -> Callable:
            def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
                mask = additive_mask(kwargs)
                mask = mask.expand(n_rows, model.cfg.n_heads, *mask.shape[2:])
                rows_at_dst = edit(layer, mask[:, :, dst])  # [row, head, key]
                mask = torch.cat([mask[:, :, :dst], rows_at_dst[:, :, None], mask[:, :, dst + 1 :]], 2)
                return args, {**kwargs, "attention_mask": mask}

            return hook

        with ExitStack() as stack:
            stack.enter_context(logits_at(model.hf_model, dst))
            for layer, block in enumerate(blocks):
                attn = module_at(block, model.adapter.attn)
                stack.callback(attn.register_forward_pre_hook(masked(layer), with_kwargs=True).remove)
            return model.hf_model(input_ids=input_ids[:, : dst + 1].expand(n_rows, -1), use_cache=False).logits[:, -1]

    return run


def _scaled_pass(
    model: AttentionModel,
    run: Run,
    metric: Callable[[Tensor], Tensor],
    edge: tuple[int, int],
    clean: dict[int, Tensor],
    chosen: Tensor,
    alpha: float,
) -> tuple[Tensor, Tensor]:
    """One forward and one backward pass at ``alpha``: the metric of each row [row] and each
    chosen head's rate dm/dalpha [row, layer, head] (zero where not chosen)."""
    src = edge[1]
    n_rows = chosen.shape[0]
    scaled = chosen.any(0).any(-1)  # [layer]: some row scales it
    leaves: dict[int, Tensor] = {}
    rates = torch.zeros(chosen.shape)
    slopes: dict[int, Tensor] = {}

    def edit(layer: int, dst_rows: Tensor) -> Tensor:
        """dst's mask rows [row, head, key] with the edge's bias added in the chosen heads."""
        if not scaled[layer]:
            return dst_rows
        a = clean[layer].float().cpu().clamp(EPS, 1 - EPS)  # [head]
        bias = torch.log((1 - alpha) * (1 - a) / (1 - (1 - alpha) * a))
        slopes[layer] = -1 / (1 - alpha) - a / (1 - (1 - alpha) * a)
        on = chosen[:, layer]  # [row, head]
        leaves[layer] = leaf = torch.zeros(on.shape, device=dst_rows.device, dtype=dst_rows.dtype, requires_grad=True)
        added = torch.where(on, bias, torch.zeros(())).to(dst_rows.device, dst_rows.dtype) + leaf
        return torch.cat([dst_rows[..., :src], (dst_rows[..., src] + added)[..., None], dst_rows[..., src + 1 :]], -1)

    with ExitStack() as stack:
        stack.enter_context(frozen_parameters(model.hf_model))
        with torch.enable_grad():
            logits = run(n_rows, edit)
            # unbind, not logits[b]: one gradient buffer for all rows, not one per row
            measured = torch.stack([metric(row).reshape(()) for row in logits.unbind(0)])
            # the rows are independent copies: the gradient of their sum is each row's own
            inputs = list(leaves.values())
            grads = torch.autograd.grad(measured.sum(), inputs, allow_unused=True) if inputs else []
    for layer, grad in zip(leaves, grads, strict=True):
        if grad is not None:
            rates[:, layer] = slopes[layer] * grad.float().cpu() * chosen[:, layer]
    return measured.detach().float().cpu(), rates
