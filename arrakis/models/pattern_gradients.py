"""The gradient of a metric of the logits with respect to every attention pattern, in one
forward and one backward pass.

``pattern_gradients`` runs the prompt once with autograd on, from the first layer asked for
(nothing before it keeps a graph; parameters never get gradients), computes ``metric(logits
at position)`` and back-propagates once; each layer's gradient dm/dA [head, query_pos,
key_pos] is handed to ``reduce`` as it is computed, so a caller keeps only what it needs of
it. Every hook is removed when the call ends, also when it raises.

``scaled_edge_gradients`` is the integrated version (docs/mathematics.md#information-flow):
the knockout of edge dst <- src, A -> A + dA, is scaled along alpha, A + alpha dA, in the
layers each batch row names, and the gradient is taken at a few alphas. The scaling is
injected through the additive attention mask: a bias b on the edge's pre-softmax score
gives A'[j] = A[j] e^b / (1 - A[j] + A[j] e^b) with the rest of the row renormalised, which
is A + alpha dA when

    e^b = (1 - alpha) (1 - a) / (1 - (1 - alpha) a),        a = the clean A[h, dst, src]

(exact in the first scaled layer; in later ones the row is the one earlier edits left, so
the path bends but still ends at the exact knockout, alpha = 1). Along it the metric moves
by dm/dalpha = sum_heads b'(alpha) A'[j] (g[j] - S'), S' = sum_k g[k] A'[k]: each head's
share, which the midpoint rule integrates (completeness: the shares add up to the exact
effect of the joint knockout as the steps grow).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from arrakis.models.adapters.base import module_at
from arrakis.models.hook_capture import read_input, read_pattern
from arrakis.models.interventions import AttentionModel, logits_at

EPS = 1e-6  # a and 1 - a are clamped here: an edge with none or all of its row's attention


@contextmanager
def frozen_parameters(hf_model: nn.Module) -> Iterator[None]:
    """No parameter keeps a graph or gets a gradient inside; their flags restored after."""
    flags = [(p, p.requires_grad) for p in hf_model.parameters()]
    try:
        for param, _ in flags:
            param.requires_grad_(False)
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


def graph_starter(leaf: list[Tensor]) -> Callable:
    """A forward pre-hook for the first analysed layer: its input becomes a new leaf of the
    graph (appended to ``leaf``), so nothing before that layer is kept for the backward pass."""

    def start_graph(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hidden = read_input(args, kwargs, None).detach().requires_grad_()
        leaf.append(hidden)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    return start_graph


def pattern_gradients(
    model: AttentionModel,
    input_ids: Tensor,
    metric: Callable[[Tensor], Tensor],
    layers: Sequence[int],
    position: int,
    reduce: Callable[[int, Tensor, Tensor], Any] | None = None,
) -> tuple[Tensor, float, dict[int, Any]]:
    """One forward and one backward pass: the gradient of ``metric(logits at position)``
    with respect to the attention pattern of each layer in ``layers``.

    ``metric`` takes the logits [d_vocab] and returns a scalar tensor built from them with
    differentiable torch operations. ``reduce(layer, pattern, grad)`` (both [head,
    query_pos, key_pos], detached, float32) is called once per layer during the backward
    pass; its results are returned per layer (by default the gradient itself). A layer
    the metric does not depend on gets a zero gradient.

    Returns (the clean logits at ``position`` [d_vocab], the metric's value, {layer: result}).
    """
    model.require_forward()
    reduce = reduce or (lambda layer, pattern, grad: grad)
    blocks = module_at(model.hf_model, model.adapter.layers)
    patterns: dict[int, Tensor] = {}
    results: dict[int, Any] = {}
    first = min(layers)

    leaf: list[Tensor] = []

    start_graph = graph_starter(leaf)

    def keep_pattern(layer: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            pattern = read_pattern(args, kwargs, out)
            patterns[layer] = pattern

            def on_grad(grad: Tensor) -> None:
                results[layer] = reduce(layer, pattern[0].detach().float(), grad[0].float())

            pattern.register_hook(on_grad)

        return hook

    with ExitStack() as stack:
        stack.enter_context(frozen_parameters(model.hf_model))
        stack.enter_context(logits_at(model.hf_model, position))
        handle = blocks[first].register_forward_pre_hook(start_graph, with_kwargs=True)
        stack.callback(handle.remove)
        for layer in layers:
            attn = module_at(blocks[layer], model.adapter.attn)
            handle = attn.register_forward_hook(keep_pattern(layer), with_kwargs=True)
            stack.callback(handle.remove)
        with torch.enable_grad():
            logits = model.hf_model(input_ids=input_ids[:, : position + 1], use_cache=False).logits[0, -1]
            value = metric(logits)
            if not isinstance(value, Tensor) or value.numel() != 1:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"metric must return a scalar tensor (one number), got {shape}")
            if value.grad_fn is None:
                raise ValueError(
                    "metric's value does not depend on the logits through torch operations "
                    "(no gradient); build it from the logits tensor without .item() or float()"
                )
            # back to the graph's start only: each pattern's gradient passes through its hook
            # and is dropped, never stored for all layers at once
            torch.autograd.backward(value.reshape(()), inputs=leaf)
    for layer in layers:
        if layer not in results:  # the metric does not depend on this layer's pattern
            pattern = patterns[layer][0].detach().float()
            results[layer] = reduce(layer, pattern, torch.zeros_like(pattern))
    return logits.detach().float(), float(value.detach()), results


def scaled_edge_gradients(
    model: AttentionModel,
    input_ids: Tensor,
    metric: Callable[[Tensor], Tensor],
    edge: tuple[int, int],
    clean: dict[int, Tensor],
    rows: Sequence[Sequence[int]],
    steps: int,
) -> tuple[Tensor, Tensor]:
    """Integrated gradients of ``metric(logits at dst)`` along the scaled knockout of edge
    ``(dst, src)`` (see the module doc): one forward and one backward pass per step, every
    row of ``rows`` a batch row that scales the edge in every head of its layers.

    ``clean[layer]`` [head] is the clean A[h, dst, src] of each layer some row scales.
    Returns (the metric of each row at each midpoint alpha [steps, len(rows)], each head's
    integrated share of the drop (clean minus knocked out) [len(rows), n_layers, n_heads],
    zero where a row does not scale that layer).
    """
    model.require_forward()
    dst = edge[0]
    n_rows, n_heads = len(rows), model.cfg.n_heads
    chosen = torch.zeros(n_rows, model.cfg.n_layers, dtype=torch.bool)  # [row, layer]: is it scaled
    for b, row in enumerate(rows):
        chosen[b, list(row)] = True
    shares = torch.zeros(n_rows, model.cfg.n_layers, n_heads)
    values = torch.zeros(steps, n_rows)  # the metric of each row at each alpha
    ids = input_ids[:, : dst + 1].expand(n_rows, -1)
    for step in range(steps):
        alpha = (step + 0.5) / steps
        values[step] = _scaled_pass(model, ids, metric, edge, clean, chosen, alpha, shares, 1 / steps)
    return values, shares


def _scaled_pass(
    model: AttentionModel,
    ids: Tensor,
    metric: Callable[[Tensor], Tensor],
    edge: tuple[int, int],
    clean: dict[int, Tensor],
    chosen: Tensor,
    alpha: float,
    shares: Tensor,
    weight: float,
) -> Tensor:
    """One forward and one backward pass at ``alpha``: adds ``weight`` x each head's rate of
    drop to ``shares`` [row, layer, head]; returns the metric of each row [row]."""
    dst, src = edge
    n_rows, n_heads = chosen.shape[0], model.cfg.n_heads
    layers = chosen.any(0).nonzero().flatten().tolist()
    blocks = module_at(model.hf_model, model.adapter.layers)
    leaf: list[Tensor] = []
    rates: dict[int, Tensor] = {}

    def bias_edge(layer: int) -> Callable:
        a = clean[layer].float().clamp(EPS, 1 - EPS)  # [head]
        # b(alpha) puts the first scaled layer's row at A + alpha dA; its rate db/dalpha
        bias = torch.log((1 - alpha) * (1 - a) / (1 - (1 - alpha) * a))
        rates[layer] = -1 / (1 - alpha) - a / (1 - (1 - alpha) * a)

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            mask = kwargs.get("attention_mask")
            if mask is None or mask.dim() != 4 or not mask.dtype.is_floating_point:
                raise RuntimeError(f"scaling an edge needs an additive 4-D float mask, got {type(mask).__name__}")
            # [batch or 1, 1, query_pos, key_pos] -> one mask per row and head
            mask = mask.expand(n_rows, n_heads, *mask.shape[2:]).clone()
            on = chosen[:, layer].to(mask.device)  # [row]
            mask[on, :, dst, src] += bias.to(mask.device, mask.dtype)
            return args, {**kwargs, "attention_mask": mask}

        return hook

    def keep_share(layer: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            pattern = read_pattern(args, kwargs, out)  # [row, head, query_pos, key_pos]

            def on_grad(grad: Tensor) -> None:
                row, g = pattern[:, :, dst].detach().float(), grad[:, :, dst].float()  # [row, head, key_pos]
                total = (row * g).sum(-1)  # S' [row, head]
                moved = rates[layer] * row[..., src] * (g[..., src] - total)  # dm/dalpha [row, head]
                shares[:, layer] -= moved.cpu() * chosen[:, layer, None] * weight

            pattern.register_hook(on_grad)

        return hook

    start_graph = graph_starter(leaf)

    with ExitStack() as stack:
        stack.enter_context(frozen_parameters(model.hf_model))
        stack.enter_context(logits_at(model.hf_model, dst))
        stack.callback(blocks[layers[0]].register_forward_pre_hook(start_graph, with_kwargs=True).remove)
        for layer in layers:
            attn = module_at(blocks[layer], model.adapter.attn)
            stack.callback(attn.register_forward_pre_hook(bias_edge(layer), with_kwargs=True).remove)
            stack.callback(attn.register_forward_hook(keep_share(layer), with_kwargs=True).remove)
        with torch.enable_grad():
            logits = model.hf_model(input_ids=ids, use_cache=False).logits[:, -1]  # [row, d_vocab]
            measured = torch.stack([metric(logits[b]).reshape(()) for b in range(n_rows)])
            # rows are independent copies: the gradient of their sum is each row's own
            torch.autograd.backward(measured.sum(), inputs=leaf)
    return measured.detach().float().cpu()
