r"""Gradient estimates of activation patching (docs/mathematics.md): the metric change when head
h's channel is patched (``activation_patching``), without one patched run per head.

With x_base the channel in the base run, x_src in the source run and m the metric, both
methods return, per example, layer and head, an estimated change of m:

- ``"attribution"`` (attribution patching, Nanda 2023): the first-order term at the base run,

      est[h] = sum over the chosen positions and h's features of (x_src - x_base) * dm/dx |x_base

  with dm/dx the gradient through the unmodified model (every later head responds), from one
  base forward and backward pass and one source forward pass;
- ``"integrated"`` (integrated gradients along the patch, as EAP-IG, Hanna et al. 2024): every
  head's channel, in every layer at once, is set to x_base + alpha (x_src - x_base) at
  ``steps`` Gauss-Legendre nodes alpha_k with weights w_k (summing to 1), and

      est[h] = (x_src - x_base) * sum_k w_k dm/dx |x(alpha_k)

  where dm/dx is taken with the other set channels held where they are set (they are
  inputs of the patched run, not functions of x). By completeness the estimates of all heads
  and positions add up to the change when every head's channel is patched at once (up to
  the quadrature's error); each head's estimate is its share of that joint change, which is
  not its own patch's effect where heads are redundant (docs/mathematics.md).

Under grouped-query attention a k or v estimate is that of the whole KV group (as the exact
patch). "pattern": x is the head's attention probabilities at the chosen query rows, written
through z = A v as in the exact patch. The gradients of all layers come from one backward pass
(per step); parameters never get gradients, and every hook is removed when the call ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor, nn

from arrakis.models.adapters.base import module_at
from arrakis.models.head_channels import (
    Site,
    call_metric,
    check_question,
    first_input,
    group_representatives,
    logits_at_rows,
    replace_input,
    rows_per_pass,
    site,
    source_activations,
)
from arrakis.models.hook_capture import read_pattern
from arrakis.models.interventions import DEFAULT_BUDGET, AttentionModel
from arrakis.models.pattern_gradients import frozen_parameters
from arrakis.models.scaled_knockouts import quadrature
from arrakis.progress import progress as progress_bar

METHODS = ("attribution", "integrated")


def patch_heads_estimate(
    model: AttentionModel,
    clean_ids: Tensor,
    corrupted_ids: Tensor,
    attention_mask: Tensor | None,
    dst: Tensor,
    metric: Callable[[Tensor, Tensor], Tensor],
    *,
    channel: str = "z",
    positions: str | Sequence[int] = "all",
    direction: str = "noising",
    method: str = "attribution",
    steps: int = 5,
    batch_size: int | None = None,
    progress: bool = False,
) -> Tensor:
    """Estimated metric change of every single-head patch: [n, n_layers, n_heads].

    Arguments as ``activation_patching.patch_heads_exact`` (``metric`` must be built from the
    logits with differentiable torch operations); ``method``: "attribution" or "integrated"
    (with ``steps`` points); ``batch_size``: examples per forward pass (None: what fits 1 GiB
    with the graph kept).
    """
    model.require_forward()
    if method not in METHODS:
        raise ValueError(f"method must be 'attribution' or 'integrated'; got {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int; got {steps!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int (examples per forward pass) or None; got {batch_size!r}")
    question = check_question(model, clean_ids, corrupted_ids, attention_mask, dst, channel, positions, direction)
    cfg, n = model.cfg, question.n
    per_batch = batch_size or rows_per_pass(cfg, question.base_ids.shape[1], DEFAULT_BUDGET, with_graph=True)
    out = torch.zeros(n, cfg.n_layers, cfg.n_heads)
    for start in progress_bar(range(0, n, per_batch), "patching estimates", "batch", enabled=progress):
        stop = min(n, start + per_batch)
        base, source_ids, mask, dst_b, where = question.rows(start, stop)
        examples = torch.arange(start, stop, device=base.device)
        source = source_activations(model, source_ids, mask, channel)
        run = Run(model, channel, base, mask, dst_b, where, metric, examples)
        if method == "attribution":
            out[start:stop] = run.attribution(source)
        else:
            base_values = source_activations(model, base, mask, channel)
            for alpha, weight in zip(*quadrature(steps), strict=True):
                out[start:stop] += weight * run.integrated_step(base_values, source, alpha)
    return out


class Run:
    """One example batch's base run: ``base`` ids [b, pos], ``where`` [b, pos] the patched positions."""

    def __init__(
        self,
        model: AttentionModel,
        channel: str,
        base: Tensor,
        mask: Tensor | None,
        dst: Tensor,
        where: Tensor,
        metric: Callable,
        examples: Tensor,
    ) -> None:
        self.model, self.channel, self.where, self.metric, self.examples = model, channel, where, metric, examples
        self.inputs = model.forward_inputs(base, mask)
        self.dst = dst
        self.sites = [site(model, layer, channel) for layer in range(model.cfg.n_layers)]

    def per_head(self, t: Tensor, s: Site) -> Tensor:
        """A site's tensor [b, pos, features] as [b, pos, head, d_head] (K, V: each query head's group)."""
        cols = s.columns[s.group].to(t.device)  # [head, d_head]
        return t[..., cols]

    def score(self, delta: Tensor, grad: Tensor) -> Tensor:
        """sum over the chosen positions and each head's features of delta * grad: [b, head]."""
        w = self.where.to(delta.dtype)
        if self.channel == "pattern":  # [b, head, query_pos, key_pos], rows at the chosen queries
            return (delta * grad * w[:, None, :, None]).sum((2, 3)).float().cpu()
        return (delta * grad * w[:, :, None, None]).sum((1, 3)).float().cpu()

    def value(self) -> Tensor:
        """The metric summed over the batch (each example's gradient stays in its own row)."""
        logits = self.model.hf_model(**self.inputs, use_cache=False).logits[:, 0]
        value = call_metric(self.metric, logits, self.examples)
        if value.grad_fn is None:
            raise ValueError(
                "metric's value does not depend on the logits through torch operations (no gradient); "
                "build it from the logits tensor without .item() or float()"
            )
        return value.sum()

    def attribution(self, source: list[Tensor]) -> Tensor:
        """First-order estimates at the base run: [b, n_layers, n_heads]."""
        model, n_layers = self.model, self.model.cfg.n_layers
        values: dict[int, Tensor] = {}
        grads: dict[int, Tensor] = {}
        leaf: list[Tensor] = []

        def start_graph(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            hidden = first_input(args, kwargs).detach().requires_grad_()
            leaf.append(hidden)
            return replace_input(args, kwargs, hidden)

        def watch(layer: int, t: Tensor) -> None:
            values[layer] = t.detach()
            t.register_hook(lambda g: grads.__setitem__(layer, g))

        def make(layer: int) -> tuple[nn.Module, Callable, bool]:
            if self.channel == "pattern":
                attn = module_at(module_at(model.hf_model, model.adapter.layers)[layer], model.adapter.attn)
                return attn, lambda m, a, k, out: watch(layer, read_pattern(a, k, out)), False
            s = self.sites[layer]
            if s.pre:
                return s.module, lambda m, a, k: watch(layer, first_input(a, k)), True
            return s.module, lambda m, a, k, out: watch(layer, out), False

        blocks = module_at(model.hf_model, model.adapter.layers)
        with ExitStack() as stack:
            stack.enter_context(frozen_parameters(model.hf_model))
            stack.enter_context(logits_at_rows(model.hf_model, self.dst))
            stack.callback(blocks[0].register_forward_pre_hook(start_graph, with_kwargs=True).remove)
            for layer in range(n_layers):
                module, hook, pre = make(layer)
                register = module.register_forward_pre_hook if pre else module.register_forward_hook
                stack.callback(register(hook, with_kwargs=True).remove)
            with torch.enable_grad():
                torch.autograd.backward(self.value(), inputs=leaf)
        out = torch.zeros(len(self.examples), n_layers, model.cfg.n_heads)
        for layer in range(n_layers):
            base = values[layer]
            grad = grads.get(layer, torch.zeros_like(base))
            if self.channel != "pattern":
                base, grad = self.per_head(base, self.sites[layer]), self.per_head(grad, self.sites[layer])
            out[:, layer] = self.score(source[layer].to(base) - base, grad)
        return out

    def integrated_step(self, base: list[Tensor], source: list[Tensor], alpha: float) -> Tensor:
        """dm/dx at x_base + alpha (x_src - x_base) in every head at once, times (x_src - x_base):
        [b, n_layers, n_heads]."""
        model, cfg = self.model, self.model.cfg
        reps = group_representatives(cfg, self.channel)
        set_to: list[Tensor] = []
        with ExitStack() as stack:
            stack.enter_context(frozen_parameters(model.hf_model))
            stack.enter_context(logits_at_rows(model.hf_model, self.dst))
            for layer in range(cfg.n_layers):
                target = base[layer] + alpha * (source[layer] - base[layer])
                if self.channel != "pattern":
                    target = target[:, :, reps.to(target.device)]  # one slice per KV head for k and v
                set_to.append(target.detach().requires_grad_())
                self.register_setter(stack, layer, set_to[-1])
            with torch.enable_grad():
                grads = torch.autograd.grad(self.value(), set_to, allow_unused=True)
        out = torch.zeros(len(self.examples), cfg.n_layers, cfg.n_heads)
        for layer, (x, grad) in enumerate(zip(set_to, grads, strict=True)):
            grad = torch.zeros_like(x) if grad is None else grad
            if self.channel != "pattern":
                grad = grad[:, :, self.sites[layer].group.to(grad.device)]  # KV groups -> query heads
            out[:, layer] = self.score((source[layer] - base[layer]).to(grad), grad)
        return out

    def register_setter(self, stack: ExitStack, layer: int, x: Tensor) -> None:
        """Hooks that set ``layer``'s channel of every head to ``x`` at the chosen positions."""
        s, where = self.sites[layer], self.where
        if self.channel == "pattern":
            v_site, seen = site(self.model, layer, "v"), {}

            def keep_v(module: nn.Module, args: tuple, out: Tensor) -> None:
                seen["v"] = out

            def write_z(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
                t = first_input(args, kwargs)  # [b, pos, head * d_head]
                v = self.per_head(seen.pop("v"), v_site).transpose(1, 2)  # [b, head, key_pos, d_head]
                z = (x.to(v.dtype) @ v).transpose(1, 2).flatten(2)  # [b, head, q, k] x [b, head, k, d] -> [b, q, h*d]
                return replace_input(args, kwargs, torch.where(where[..., None], z, t))

            stack.callback(v_site.module.register_forward_hook(keep_v).remove)
            stack.callback(s.module.register_forward_pre_hook(write_z, with_kwargs=True).remove)
            return
        cols = s.columns.flatten().to(x.device)

        def write(t: Tensor) -> Tensor:
            new = t.clone()
            new[..., cols] = torch.where(where[..., None], x.flatten(2).to(t.dtype), t[..., cols])
            return new

        if s.pre:
            hook: Any = lambda m, a, k: replace_input(a, k, write(first_input(a, k)))  # noqa: E731
            stack.callback(s.module.register_forward_pre_hook(hook, with_kwargs=True).remove)
        else:
            stack.callback(s.module.register_forward_hook(lambda m, a, out: write(out)).remove)
