"""The hook names of the activation cache, with their shapes (TransformerLens's vocabulary).

hook_embed                       [batch, pos, d_model]   token embedding (Gemma: scaled)
hook_pos_embed                   [batch, pos, d_model]   learned positions (gpt2, gpt-neo)
blocks.{l}.hook_resid_pre        [batch, pos, d_model]   the residual stream entering layer l
blocks.{l}.ln1.hook_normalized   [batch, pos, d_model]   ln1(resid_pre): what attention reads
blocks.{l}.attn.hook_q           [batch, pos, head, d_head]  before rotary / q-k norms
blocks.{l}.attn.hook_k           [batch, pos, head, d_head]  expanded to query heads
blocks.{l}.attn.hook_v           [batch, pos, head, d_head]  expanded to query heads
blocks.{l}.attn.hook_q_normed    [batch, pos, head, d_head]  after the q norm (q/k-norm families)
blocks.{l}.attn.hook_k_normed    [batch, pos, head, d_head]  after the k norm, expanded to query heads
blocks.{l}.attn.hook_pattern     [batch, head, query_pos, key_pos]
blocks.{l}.attn.hook_z           [batch, pos, head, d_head]  sum_j pattern[i, j] v_j
blocks.{l}.ln1_post.hook_in      [batch, pos, d_model]   sum_h z[h] W_O[h] + b_O (post-norm families)
blocks.{l}.hook_attn_out         [batch, pos, d_model]   what attention adds to the residual:
                                                          sum_h z[h] W_O[h] + b_O, or its post-norm
blocks.{l}.hook_resid_mid        [batch, pos, d_model]   resid_pre + attn_out (sequential only)
blocks.{l}.hook_mlp_out          [batch, pos, d_model]
blocks.{l}.hook_resid_post       [batch, pos, d_model]
ln_final.hook_normalized         [batch, pos, d_model]
logits                           [batch, pos, d_vocab]
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable

from arrakis.models.config import ModelShape

LAYER_HOOKS: dict[str, str] = {
    "hook_resid_pre": "batch pos d_model",
    "ln1.hook_normalized": "batch pos d_model",
    "attn.hook_q": "batch pos head d_head",
    "attn.hook_k": "batch pos head d_head",
    "attn.hook_v": "batch pos head d_head",
    "attn.hook_q_normed": "batch pos head d_head",
    "attn.hook_k_normed": "batch pos head d_head",
    "attn.hook_pattern": "batch head query_pos key_pos",
    "attn.hook_z": "batch pos head d_head",
    "ln1_post.hook_in": "batch pos d_model",
    "hook_attn_out": "batch pos d_model",
    "hook_resid_mid": "batch pos d_model",
    "hook_mlp_out": "batch pos d_model",
    "hook_resid_post": "batch pos d_model",
}
# TransformerLens-style short names, for cache["pattern", 3].
SHORT_NAMES = {name.rsplit(".", 1)[-1].removeprefix("hook_"): name for name in LAYER_HOOKS}
SHORT_NAMES["normalized"] = "ln1.hook_normalized"

NamesFilter = Iterable[str] | Callable[[str], bool] | None


class HookNameError(KeyError):
    """A hook name this model does not have (a KeyError whose message reads plainly)."""

    def __str__(self) -> str:
        return str(self.args[0])


def hook_names(cfg: ModelShape) -> list[str]:
    """Every hook name this model caches, in forward order."""
    names = ["hook_embed"] + (["hook_pos_embed"] if cfg.positional == "learned" else [])
    for layer in range(cfg.n_layers):
        for suffix in LAYER_HOOKS:
            if suffix == "hook_resid_mid" and cfg.parallel_residual:
                continue
            if suffix.endswith("_normed") and not cfg.qk_norm:
                continue
            if suffix == "ln1_post.hook_in" and not cfg.attn_post_norm:
                continue
            names.append(f"blocks.{layer}.{suffix}")
    return [*names, "ln_final.hook_normalized", "logits"]


def explain_unknown(name: object, cfg: ModelShape, valid: list[str]) -> str:
    """Why ``name`` is not a hook of this model, and the nearest valid names."""
    if isinstance(name, str) and name.endswith("hook_resid_mid") and cfg.parallel_residual:
        return (
            f"{name!r} does not exist: this {cfg.family} model has a parallel residual "
            "(attention and MLP both read resid_pre), so there is no resid_mid; "
            "resid_post = resid_pre + attn_out + mlp_out"
        )
    if isinstance(name, str) and name.startswith("blocks."):
        layer = name.split(".")[1]
        if layer.isdigit() and int(layer) >= cfg.n_layers:
            n = cfg.n_layers
            return f"{name!r}: layer {layer} is out of range: this model has {n} layers (0-{n - 1})"
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown hook name {name!r}{hint} (model.hook_names() lists all {len(valid)})"


def select(names: NamesFilter, valid: list[str], cfg: ModelShape) -> list[str]:
    """Resolve a ``names`` argument (None, an iterable of names or a predicate) to names."""
    if names is None:
        return list(valid)
    if callable(names):
        return [n for n in valid if names(n)]
    if isinstance(names, str):
        names = [names]
    chosen = list(dict.fromkeys(names))
    valid_set = set(valid)
    for name in chosen:
        if name not in valid_set:
            raise HookNameError(explain_unknown(name, cfg, valid))
    return chosen


def resolve_key(key: object) -> object:
    """``("pattern", 3)`` -> ``"blocks.3.attn.hook_pattern"``; other keys pass through."""
    if isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], str) and isinstance(key[1], int):
        short, layer = key
        suffix = SHORT_NAMES.get(short.removeprefix("hook_"), short)
        return f"blocks.{layer}.{suffix}"
    return key
