"""Read heads: how strongly each head of a layer reads a direction of the residual stream, or
what an earlier head wrote (docs/mathematics.md#read-heads).

A head reads the residual stream through three channels: its queries, keys and values. For
a unit direction u, channel c of head h scores ||u W_c[h]||_2 / (||W_c[h]||_F / sqrt(D)):
how much more than an average direction the head reads u (1.0 is isotropic; W_c the folded
[d_model, d_head] input weight, q/k norm gains folded in where there are any). For a writer
head (l1, h1) of an earlier layer, channel c scores the composition of OV[h1] with the
reader's QK, QK^T or OV (Q-, K-, V-composition; baseline 1/sqrt(D)). ``channel="qkv"``
combines the three by root mean square.

This module parses what ``dim_idx`` names (a residual dimension, a direction, a token's
embedding or a writer head), scores every head of a layer, and says what a weight-based
score leaves out (the notes come from the model's config).
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor

from arrakis.circuits import heads as head_math
from arrakis.circuits.composition import composition_baseline, composition_scores
from arrakis.models import HookedAutoModel
from arrakis.tools.base import check_direction, check_index

CHANNELS = ("q", "k", "v", "qkv")


def read_scores(
    model: HookedAutoModel, layer: int, dim_idx: Any, channel: str
) -> tuple[Tensor, str, float, list[str], dict[str, Any]]:
    """Every head's reading of ``dim_idx`` in ``layer`` (checked) through ``channel`` (checked):
    (scores [head], method, baseline, notes, extra)."""
    cfg = model.cfg
    channels = ("q", "k", "v") if channel == "qkv" else (channel,)
    if isinstance(dim_idx, tuple):
        per_channel, baseline, what = read_writer(model, layer, dim_idx, channels)
        method = f"composition-{channel}"
    else:
        u, what = read_direction(model, dim_idx)
        weights = model.head_weights(folded=True)
        W_Q, W_K = weights.qk_circuit()  # q/k norm gains folded in, where there are any
        by_channel = {"q": W_Q, "k": W_K, "v": weights.W_V}
        per_channel = {c: head_math.read_scores(by_channel[c][layer].float(), u) for c in channels}
        baseline, method = 1.0, f"direction-{channel}"
    stacked = torch.stack([per_channel[c] for c in channels])  # [channel, head]
    scores = stacked.pow(2).mean(0).sqrt()  # root mean square over channels
    notes = qk_notes(model) if set(channels) & {"q", "k"} else []
    if cfg.n_kv_heads < cfg.n_heads and set(channels) & {"k", "v"} and method.startswith("direction"):
        notes.append(
            f"grouped-query attention: {cfg.group_size} query heads share each K/V head, "
            "so their K and V scores are equal"
        )
    extra = {"dim": what, "channel": channel, "per_channel": {c: per_channel[c].tolist() for c in channels}}
    return scores, method, baseline, notes, extra


def read_direction(model: HookedAutoModel, dim_idx: Any) -> tuple[Tensor, str]:
    """The unit direction ``dim_idx`` names (an int: the basis vector e_i; a tensor; a string:
    a token's embedding) and how to describe it."""
    d_model = model.cfg.d_model
    if isinstance(dim_idx, str):
        return token_direction(model, dim_idx), f"token {dim_idx!r}"
    if isinstance(dim_idx, Tensor) and dim_idx.dim() == 0 and not dim_idx.dtype.is_floating_point:
        dim_idx = int(dim_idx)
    if isinstance(dim_idx, Tensor):
        return check_direction(dim_idx, d_model, "dim_idx"), "direction"
    if not isinstance(dim_idx, numbers.Integral) or isinstance(dim_idx, bool):
        hint = ""
        if isinstance(dim_idx, (list, range)) and len(dim_idx) == 2:
            hint = f"; for the output of head L{dim_idx[0]}H{dim_idx[1]} pass the tuple {tuple(dim_idx)!r}"
        raise TypeError(
            f"dim_idx must be an int 0-{d_model - 1} (a residual dimension), a (layer, head) tuple "
            f"(a writer head's output), a direction tensor of size {d_model} or a one-token string; "
            f"got {type(dim_idx).__name__} {dim_idx!r}{hint}"
        )
    i = check_index(dim_idx, d_model, "dim_idx", "residual dimensions (d_model)")
    basis = torch.zeros(d_model)
    basis[i] = 1.0
    return basis, f"e_{i}"


def token_direction(model: HookedAutoModel, token: str) -> Tensor:
    """The input embedding [d_model] of a string that is one token."""
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError(
            f"dim_idx {token!r} is a token, but this model has no tokenizer; pass an int "
            "(a residual dimension), a direction tensor or a (layer, head) writer"
        )
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"dim_idx {token!r} is {len(ids)} tokens ({ids}); pass a string that is one token")
    return model.input_embeddings()[ids[0]].float()


def read_writer(
    model: HookedAutoModel, layer: int, writer: tuple, channels: tuple[str, ...]
) -> tuple[dict[str, Tensor], float, str]:
    """How much each head of ``layer`` reads writer head (l1, h1)'s output through each
    channel: composition scores, their baseline 1/sqrt(d_model), and a description."""
    if len(writer) != 2:
        raise ValueError(f"a writer head is a (layer, head) pair, got {writer!r}")
    if layer == 0:
        raise ValueError("layer 0 has no earlier layer to read a writer head from; use a direction instead")
    w_layer = check_index(writer[0], layer, "writer layer", f"layers before layer {layer}")
    w_head = check_index(writer[1], model.cfg.n_heads, "writer head", "heads per layer")
    w = model.head_weights(folded=True)
    W_Q, W_K = w.qk_circuit()
    pick = [w_layer, layer]  # a two-layer stack: the writer's layer, then the reader's
    scores = composition_scores(W_Q[pick], W_K[pick], w.W_V[pick], w.W_O[pick], tuple(c.upper() for c in channels))
    per_channel = {c: scores[c.upper()][0, w_head, 1] for c in channels}
    return per_channel, composition_baseline(model.cfg.d_model), f"writer L{w_layer}H{w_head}"


def qk_notes(model: HookedAutoModel) -> list[str]:
    """What a weight-based Q/K score leaves out, from the model's config (docs/mathematics.md#conventions)."""
    cfg, notes = model.cfg, []
    if cfg.positional == "rotary":
        notes.append("Q/K scores use the bilinear QK circuit: rotary's position-dependent rotation is left out")
    if cfg.qk_norm:
        notes.append(
            "per-head q/k norms: their gains are folded into QK = W_Q diag(g_q g_k) W_K^T (TransformerLens "
            "ignores them); their per-token scales are positive and cancel in these normalised scores"
        )
    config = model.hf_model.config if model.hf_model is not None else model.checkpoint.config
    if getattr(config, "attn_logit_softcapping", None):
        notes.append("attention logits are soft-capped (tanh) in the forward pass; weight scores leave it out")
    return notes
