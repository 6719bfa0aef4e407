r"""Path patching of one writer -> reader edge (Wang et al. 2022; Goldowsky-Dill et al. 2023;
docs/mathematics.md#composition): the writer's output z[h1] W_O[h1] is replaced by its mean over the probe
data in the reader's channel input only, and what the reader does differently is measured.

For reader head h2 of layer l2 and channel c (q, k or v), the reader's input becomes

    x' = resid_pre[l2] - out[h1] + mean(out[h1])

for channel c only: x~' = ln1(x') (its own norm recomputed) goes through the channel's
projection, whose columns of h2's head (for K and V: h2's KV head) are spliced into the
projection's clean output. Everything else (the other channels, the other heads, the
layers before) stays clean; rotary, q/k norms, soft-capping and masks are the model's own.
The runs of one reader layer go as copies of the probe batch in one pass, which skips the
blocks before l2 (their output is the clean residual stream entering l2) and stops after l2.
``out[h1]`` is the writer's output as it enters the residual (with a post-norm: g * z W_O / s,
its scale frozen).

Effects: for Q and K, the mean over (real) query rows of KL(clean row || patched row) of
h2's attention pattern; for V, ||z' W_O - z W_O|| / ||z W_O|| of h2's output, averaged
over tokens.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from arrakis.models.activation_patching import skipped_blocks
from arrakis.models.adapters import qkv_index
from arrakis.models.adapters.base import module_at

if TYPE_CHECKING:
    from arrakis.models.hooked_model import HookedAutoModel


class _StopError(Exception):
    """Raised after the reader's layer: nothing later is needed."""


def writer_outputs(model: HookedAutoModel, cache: Any, layer: int) -> Tensor:
    """Every head's output of ``layer`` as it enters the residual: [batch, pos, head, d_model]."""
    post_in = cache[f"blocks.{layer}.ln1_post.hook_in"] if model.cfg.attn_post_norm else None
    return model.head_outputs(layer, cache[f"blocks.{layer}.attn.hook_z"], post_in)[0]


def patched_readers(
    model: HookedAutoModel,
    inputs: dict[str, Tensor],
    layer: int,
    channel: str,
    runs: list[tuple[int, Tensor]],
    state: Tensor,
) -> list[Tensor]:
    """The runs of one reader layer as copies of the probe batch in one pass: run c patches
    reader head ``runs[c][0]``'s channel input, computed from ``runs[c][1]`` [batch, pos,
    d_model]. The blocks before ``layer`` are not run (each returns ``state``, the clean
    residual stream entering ``layer``), and the pass stops after ``layer``. Returns, per run,
    the reader head's pattern [batch, q, k] (channel q or k) or its z [batch, pos, d_head] (v)."""
    a, cfg = model.adapter, model.cfg
    block = module_at(model.hf_model, a.layers)[layer]
    projection = module_at(block, getattr(a, channel))
    index = qkv_index(a.qkv_layout, channel, cfg.n_heads, cfg.n_kv_heads, cfg.d_head)
    kv_group = model.head_weights().kv_group
    norm = module_at(block, a.ln1) if a.ln1 is not None else None
    k, b = len(runs), state.shape[0]
    heads = [head for head, _ in runs]
    kept: dict[str, Tensor] = {}

    def splice(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        x = torch.cat([resid for _, resid in runs]).to(out.dtype)  # [copies * batch, pos, d_model]
        patched = module.forward(norm.forward(x) if norm is not None else x)  # forward(): no hooks run
        out = out.clone()
        for c, head in enumerate(heads):
            columns = index[head if channel == "q" else int(kv_group[head])].to(out.device)
            out[c * b : (c + 1) * b, ..., columns] = patched[c * b : (c + 1) * b, ..., columns]
        return out

    def keep_pattern(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        kept["pattern"] = out[1].detach()

    def keep_z(module: nn.Module, args: tuple) -> None:
        z = args[0]
        kept["z"] = z.view(*z.shape[:-1], cfg.n_heads, cfg.d_head).detach()

    def stop(*_: Any) -> None:
        raise _StopError

    repeated = {name: value.repeat(k, *[1] * (value.dim() - 1)) for name, value in inputs.items()}
    with ExitStack() as stack, torch.no_grad():
        stack.enter_context(skipped_blocks(model, layer, state.repeat(k, 1, 1), block_arity(model)))
        stack.callback(projection.register_forward_hook(splice).remove)
        if channel == "v":
            stack.callback(module_at(block, a.o).register_forward_pre_hook(keep_z).remove)
        else:
            stack.callback(module_at(block, a.attn).register_forward_hook(keep_pattern, with_kwargs=True).remove)
        stack.callback(block.register_forward_hook(stop).remove)
        try:
            model.hf_model(**repeated, use_cache=False)
        except _StopError:
            pass
    if channel == "v":
        return [kept["z"][c * b : (c + 1) * b, :, head].float() for c, head in enumerate(heads)]
    return [kept["pattern"][c * b : (c + 1) * b, head].float() for c, head in enumerate(heads)]


def block_arity(model: HookedAutoModel) -> int:
    """The form of a block's output: 0 for a tensor, else the length of the tuple it returns
    (from a one-token pass)."""
    found: list[int] = []
    block = module_at(model.hf_model, model.adapter.layers)[0]

    def form(module: nn.Module, args: tuple, out: object) -> None:
        found.append(len(out) if isinstance(out, tuple) else 0)
        raise _StopError

    with ExitStack() as stack, torch.no_grad():
        stack.callback(block.register_forward_hook(form).remove)
        try:
            model.hf_model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=model.device), use_cache=False)
        except _StopError:
            pass
    return found[0]


def attention_kl(clean: Tensor, patched: Tensor, rows: Tensor) -> float:
    """Mean over the real query rows of KL(clean || patched): patterns [batch, q, k], rows [batch, q]."""
    eps = 1e-12
    kl = (clean * ((clean + eps).log() - (patched + eps).log())).sum(-1)  # [batch, q]
    return float((kl * rows).sum() / rows.sum())


def output_change(clean_z: Tensor, patched_z: Tensor, W_O: Tensor, rows: Tensor) -> float:
    """||z' W_O - z W_O|| / ||z W_O||, the norms summed over the real tokens."""
    clean, patched = clean_z @ W_O, patched_z @ W_O  # [batch, pos, d_head] x [d_head, D]
    change = ((patched - clean).norm(dim=-1) * rows).sum()
    return float(change / ((clean.norm(dim=-1) * rows).sum()).clamp_min(1e-30))
