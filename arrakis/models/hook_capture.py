"""Where each hook point is read, and the hooks that read it for one forward pass.

A hook point is not a module of its own (as in TransformerLens): it is an input or output
of one of the Hugging Face model's modules, read by a forward hook (output) or pre-hook
(input) that only *reads*. ``capture_plan`` says, per family adapter, which module call
holds which activation and how to cut it into TransformerLens's shape; ``capturing_hooks``
registers those hooks for one call and removes them afterwards, also when it raises.
Hook names and shapes follow TransformerLens (docs/architecture.md):

- ``hook_embed``, ``hook_pos_embed``, ``blocks.{l}.hook_resid_pre/mid/post``,
  ``hook_attn_out``, ``hook_mlp_out``, ``ln1.hook_normalized``, ``ln_final.hook_normalized``:
  [batch, pos, d_model];
- ``blocks.{l}.attn.hook_q/k/v`` (and ``hook_q_normed``/``hook_k_normed`` after per-head q/k
  norms), ``attn.hook_z``: [batch, pos, head, d_head], K and V expanded to one slice per
  query head under grouped-query attention;
- ``blocks.{l}.attn.hook_pattern``: [batch, head, query_pos, key_pos];
- ``blocks.{l}.ln1_post.hook_in`` (families with an attention post-norm): what enters it,
  [batch, pos, d_model].
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from arrakis.models.adapters import qkv_index
from arrakis.models.adapters.base import FamilyAdapter, module_at
from arrakis.models.config import ModelShape

# A capture reads (args, kwargs, output) of a module call and returns the activation.
Capture = Callable[[tuple, dict, Any], Tensor]
# (module, is_pre_hook) -> the (hook name, capture) pairs read from that module's call
Plan = dict[tuple[nn.Module, bool], list[tuple[str, Capture]]]


def read_input(args: tuple, kwargs: dict, _: Any) -> Tensor:
    """A module's first input (hidden states), given positionally or by keyword."""
    return args[0] if args else kwargs["hidden_states"]


def read_output(args: tuple, kwargs: dict, out: Any) -> Tensor:
    """A module's output, or the first element of the tuple it returns."""
    return out[0] if isinstance(out, tuple) else out


def read_pattern(args: tuple, kwargs: dict, out: Any) -> Tensor:
    """The attention pattern an eager attention module returns beside its output."""
    if not isinstance(out, tuple) or len(out) < 2 or out[1] is None:
        raise RuntimeError("the attention module returned no pattern: attn_implementation must be 'eager'")
    return out[1]


def capture_plan(
    hf_model: nn.Module, adapter: FamilyAdapter, cfg: ModelShape, kv_group: Tensor, names: set[str], batch: int
) -> Plan:
    """For each (module, is_pre_hook), the activations of ``names`` to read from its call.

    ``kv_group`` [n_heads]: the KV head each query head reads (``weights.kv_groups``);
    ``batch``: the batch size, to which the batch-free ``hook_pos_embed`` is expanded.
    """
    a = adapter
    layers = module_at(hf_model, a.layers)
    plan: Plan = {}

    def add(name: str, module: nn.Module, pre: bool, capture: Capture) -> None:
        if name in names:
            plan.setdefault((module, pre), []).append((name, capture))

    def heads(channel: str) -> Capture:
        idx = qkv_index(a.qkv_layout, channel, cfg.n_heads, cfg.n_kv_heads, cfg.d_head)
        n_c = idx.shape[0]
        base, head_stride = int(idx[0, 0]), int(idx[1, 0] - idx[0, 0]) if n_c > 1 else 0
        expand = channel != "q" and cfg.n_kv_heads < cfg.n_heads
        # Every layout puts head h's features at base + h * head_stride + i: a strided
        # view of the projection's output, so no copy is made (except to expand K, V).
        affine = torch.equal(idx, base + head_stride * torch.arange(n_c)[:, None] + torch.arange(cfg.d_head))

        def capture(args: tuple, kwargs: dict, out: Tensor) -> Tensor:
            if affine and out.is_contiguous():
                *lead, _ = out.shape  # [batch, pos, features] -> [batch, pos, head, d_head]
                heads = out.as_strided(
                    (*lead, n_c, cfg.d_head),
                    (*out.stride()[:-1], head_stride, 1),
                    out.storage_offset() + base,
                )
            else:
                heads = out[..., idx.to(out.device)]
            return heads[:, :, kv_group.to(out.device)] if expand else heads  # one slice per query head

        return capture

    def split_z(args: tuple, kwargs: dict, out: Any) -> Tensor:
        z = read_input(args, kwargs, out)
        return z.view(*z.shape[:-1], cfg.n_heads, cfg.d_head)  # [batch, pos, head * d_head] -> heads

    def normed(channel: str) -> Capture:
        # a q/k norm's output in its own layout -> [batch, pos, head, d_head]
        expand = channel == "k" and cfg.n_kv_heads < cfg.n_heads

        def capture(args: tuple, kwargs: dict, out: Any) -> Tensor:
            out = read_output(args, kwargs, out)
            if a.qk_norm_layout in ("head_pos", "per_head_modules"):
                out = out.transpose(1, 2)  # [batch, head, pos, d_head] -> [batch, pos, head, d_head]
            elif a.qk_norm_layout == "flat":
                out = out.view(*out.shape[:-1], -1, cfg.d_head)  # [batch, pos, head * d_head] -> heads
            return out[:, :, kv_group.to(out.device)] if expand else out

        return capture

    add("hook_embed", module_at(hf_model, a.embed), False, read_output)
    if a.pos_embed:
        pos_embed = module_at(hf_model, a.pos_embed)
        add("hook_pos_embed", pos_embed, False, lambda *c: read_output(*c).expand(batch, -1, -1))
    for i, layer in enumerate(layers):
        p = f"blocks.{i}."
        attn = module_at(layer, a.attn)
        add(p + "hook_resid_pre", layer, True, read_input)
        if a.ln1 is not None:
            add(p + "ln1.hook_normalized", module_at(layer, a.ln1), False, read_output)
        else:  # attention reads the residual stream itself
            add(p + "ln1.hook_normalized", attn, True, read_input)
        for channel in ("q", "k", "v"):
            add(p + f"attn.hook_{channel}", module_at(layer, getattr(a, channel)), False, heads(channel))
        if cfg.qk_norm:
            add(p + "attn.hook_q_normed", module_at(layer, a.q_norm), False, normed("q"))
            add(p + "attn.hook_k_normed", module_at(layer, a.k_norm), False, normed("k"))
        add(p + "attn.hook_pattern", attn, False, read_pattern)
        add(p + "attn.hook_z", module_at(layer, a.o), True, split_z)
        if a.attn_post_norm is not None:
            add(p + "ln1_post.hook_in", attn, False, read_output)
            add(p + "hook_attn_out", module_at(layer, a.attn_post_norm), False, read_output)
        else:
            add(p + "hook_attn_out", attn, False, read_output)
        if not cfg.parallel_residual:
            mid = module_at(layer, a.ln2) if a.ln2 is not None else module_at(layer, a.mlp)
            add(p + "hook_resid_mid", mid, True, read_input)
        mlp_out = module_at(layer, a.mlp_post_norm if a.mlp_post_norm is not None else a.mlp)
        add(p + "hook_mlp_out", mlp_out, False, read_output)
        add(p + "hook_resid_post", layer, False, read_output)
    add("ln_final.hook_normalized", module_at(hf_model, a.ln_final), False, read_output)
    return plan


@contextmanager
def capturing_hooks(
    plan: Plan, store: dict[str, Tensor], transform: Callable[[str, Tensor], Tensor] | None = None
) -> Iterator[None]:
    """Register the hooks of ``plan`` for one call, each writing its activations (detached,
    then ``transform(name, tensor)`` if given) into ``store``; always remove them afterwards."""

    def keep(name: str, tensor: Tensor) -> None:
        store[name] = transform(name, tensor.detach()) if transform else tensor.detach()

    def make(captures: list[tuple[str, Capture]], pre: bool) -> Callable:
        if pre:

            def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
                for name, capture in captures:
                    keep(name, capture(args, kwargs, None))

            return pre_hook

        def post_hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            for name, capture in captures:
                keep(name, capture(args, kwargs, out))

        return post_hook

    handles = []
    try:
        for (module, pre), captures in plan.items():
            if pre:
                handles.append(module.register_forward_pre_hook(make(captures, True), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(make(captures, False), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
