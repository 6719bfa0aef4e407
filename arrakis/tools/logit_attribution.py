"""``write_read.logit_attribution``: the signed direct logit attribution of every head and
every other component at one position (the mathematics: ``arrakis.circuits.logit_attribution``).

One forward pass keeps, at that position only, each layer's z (and, with post-norms, what
enters the attention post-norm), each MLP's output, the embeddings and the final residual.
Where attention's output is normalised before the residual add, each head's part is taken
as it enters the residual, g * z[h] W_O[h] / s with the post-norm's per-token scale s frozen
(docs/mathematics.md#conventions), so the parts still add up.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor

from arrakis.circuits.logit_attribution import contributions, final_scale
from arrakis.models import HookedAutoModel
from arrakis.models.batching import check_position
from arrakis.tools.flow_question import one_prompt, token_id
from arrakis.tools.results.attribution import LogitAttribution


def logit_attribution(model: HookedAutoModel, ids: Tensor, token: int, pos: int, foil: int | None) -> LogitAttribution:
    """Direct logit attribution of ``token`` (minus ``foil``) at ``pos`` of one prompt ``ids`` [1, pos]."""
    cfg = model.cfg
    last = cfg.n_layers - 1
    names = ["hook_embed", f"blocks.{last}.hook_resid_post", "ln_final.hook_normalized"]
    names += ["hook_pos_embed"] if cfg.positional == "learned" else []
    for layer in range(cfg.n_layers):
        names += [f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_mlp_out"]
        names += [f"blocks.{layer}.ln1_post.hook_in"] if cfg.attn_post_norm else []
    _, cache = model.run_with_cache(ids, names=names, transform=lambda name, t: t[0, pos].float())
    W_U, b_U = model.unembedding([token] if foil is None else [token, foil])  # only these columns
    direction = W_U[:, 0] - (W_U[:, 1] if foil is not None else 0)
    bias = float(b_U[0] - (b_U[1] if foil is not None else 0))
    scale = final_scale(cache[f"blocks.{last}.hook_resid_post"], cfg.norm, cfg.norm_eps)

    def direct(parts: Tensor) -> Tensor:
        return contributions(parts, scale, direction.to(parts.device), cfg.norm)

    heads = torch.zeros(cfg.n_layers, cfg.n_heads)
    components: dict[str, float] = {"embed": float(direct(cache["hook_embed"]))}
    if "hook_pos_embed" in cache:
        components["pos_embed"] = float(direct(cache["hook_pos_embed"]))
    for layer in range(cfg.n_layers):
        post_in = cache[f"blocks.{layer}.ln1_post.hook_in"] if cfg.attn_post_norm else None
        parts, b_O = model.head_outputs(layer, cache[f"blocks.{layer}.attn.hook_z"], post_in)  # [head, D], [D]
        heads[layer] = direct(parts).cpu()
        components[f"L{layer} attn bias"] = float(direct(b_O))
        components[f"L{layer} mlp"] = float(direct(cache[f"blocks.{layer}.hook_mlp_out"]))
    components["bias"] = bias
    # the model's own logit (difference), from the final norm's output through the unembedding:
    # before any final soft-capping, which is not linear in the components
    head = model.hf_model.get_output_embeddings()
    with torch.no_grad():
        logits = head(cache["ln_final.hook_normalized"].to(head.weight.dtype)).float()
    logit = float(logits[token] - (logits[foil] if foil is not None else 0))
    notes = []
    cap = getattr(model.hf_model.config, "final_logit_softcapping", None)
    if cap:
        notes.append(f"logits are soft-capped (cap * tanh(x / cap), cap {cap}); this attributes x, before capping")
    tokenizer = model.tokenizer
    return LogitAttribution(
        heads,
        components,
        logit=logit,
        token=token,
        pos=pos,
        foil=foil,
        token_str=tokenizer.decode([token]) if tokenizer is not None else None,
        foil_str=tokenizer.decode([foil]) if tokenizer is not None and foil is not None else None,
        notes=notes,
    )


def prompt_attribution(
    model: HookedAutoModel,
    input_ids: Any,
    token: Any,
    pos: Any,
    foil: Any,
    attention_mask: Tensor | None,
    batch_index: int | None,
) -> LogitAttribution:
    """The checked question of ``write_read.logit_attribution`` on one prompt, answered."""
    ids = one_prompt(model, input_ids, attention_mask, batch_index)
    target = token_id(model, token, "token")
    other = None if foil is None else token_id(model, foil, "foil")
    if other == target:
        raise ValueError(f"foil {foil!r} is the same token as {token!r} (id {target}); pick another foil")
    return logit_attribution(model, ids, target, resolve_pos(pos, ids.shape[1]), other)


def resolve_pos(pos: Any, n_pos: int) -> int:
    """A position of a prompt of ``n_pos`` tokens (negative: from the end), checked."""
    if isinstance(pos, bool) or not isinstance(pos, numbers.Integral):
        raise TypeError(f"pos must be an int (a position, -{n_pos} to {n_pos - 1}), got {type(pos).__name__} {pos!r}")
    return check_position(pos, n_pos, "pos")
