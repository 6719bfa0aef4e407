"""The gradient of a metric of the logits with respect to every attention pattern, in one
forward and one backward pass.

``pattern_gradients`` runs the prompt once with autograd on, from the first layer asked for
(nothing before it keeps a graph; parameters never get gradients), computes ``metric(logits
at position)`` and back-propagates once; each layer's gradient dm/dA [head, query_pos,
key_pos] is handed to ``reduce`` as it is computed, so a caller keeps only what it needs of
it. Every hook is removed when the call ends, also when it raises.

The integrated version, along scaled knockouts, is ``arrakis.models.scaled_knockouts``.
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
