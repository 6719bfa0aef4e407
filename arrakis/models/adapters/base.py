"""What a family adapter declares, and the one piece of logic all adapters share.

An adapter is a table: where a Hugging Face architecture keeps its embeddings, norms,
attention projections and MLP, how its fused q/k/v projection splits into heads, and which
config fields carry the shape of the model. Everything that hooks activations or stacks
per-head weights reads these tables; nothing else in the library branches on the family.

The split of a q/k/v projection is given as an *index map*: for channel c (q, k or v) a
LongTensor ``[n_heads_c, d_head]`` of positions in the projection's output features. The
same map slices activations (``out[..., idx]``) and weight rows (``W[idx]``), so the
activations in the cache and the stacked weights can never disagree about which head is
which.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

QKVLayout = Literal["separate", "concat", "interleaved"]
NormKind = Literal["layernorm", "rmsnorm"]
# How a per-head q/k norm module sees q (or k): [batch, pos, head, d_head] ("pos_head", Qwen3),
# [batch, head, pos, d_head] ("head_pos", Gemma 3), [batch, pos, head * d_head] normalised over
# all heads at once ("flat", OLMo-2), or one norm module per head ("per_head_modules", StableLM's
# ``norms.{h}``, inputs [batch, head, pos, d_head]).
QKNormLayout = Literal["pos_head", "head_pos", "flat", "per_head_modules"]
CHANNELS = ("q", "k", "v")

# Names of the shape fields every adapter maps onto its Hugging Face config.
SHAPE_FIELDS = ("n_layers", "n_heads", "n_kv_heads", "d_model", "d_head", "d_mlp", "d_vocab", "n_ctx")


@dataclass(frozen=True)
class FamilyAdapter:
    """A declarative description of one model family (module paths are dotted attributes).

    Paths under "root" start at the ``*ForCausalLM`` module; paths under "layer" start at
    one decoder layer.
    """

    family: str  # the name users pass to HookedAutoConfig
    model_type: str  # Hugging Face's config.model_type
    # root paths
    layers: str
    embed: str
    ln_final: str
    # layer paths
    ln1: str | None  # the norm before attention; None where attention reads the residual itself (OLMo-2)
    ln2: str | None  # the norm before the MLP; None where the family has none
    attn: str  # the module returning (attn_out, pattern)
    mlp: str
    q: str
    k: str
    v: str
    o: str
    # our shape names -> the Hugging Face config field (None: derived, see ModelShape)
    fields: Mapping[str, str | None]
    eps_field: str
    defaults: Mapping[str, Any]  # a small CPU-friendly model, in Hugging Face field names
    pos_embed: str | None = None  # learned absolute positions (root path)
    qkv_layout: QKVLayout = "separate"
    conv1d: bool = False  # GPT-2's Conv1D stores the weight as [in, out]
    norm: NormKind = "rmsnorm"
    norm_gain_offset: float = 0.0  # Gemma's RMSNorm scales by (1 + w)
    parallel_residual_field: str | None = None  # config flag: attn and MLP both read resid_pre
    mlp_ratio_if_unset: int | None = None  # d_mlp = ratio * d_model when the config leaves it None
    aliases: tuple[str, ...] = ()
    # per-head q/k norms (layer paths); qk_norm_field names a config flag that switches them on
    q_norm: str | None = None
    k_norm: str | None = None
    qk_norm_layout: QKNormLayout = "pos_head"
    qk_norm_kind: NormKind = "rmsnorm"
    qk_norm_gain_offset: float = 0.0  # Gemma 3's q/k norms scale by (1 + w) too
    qk_norm_field: str | None = None
    # post-norms: the attention (MLP) output normalised before it is added to the residual
    attn_post_norm: str | None = None
    mlp_post_norm: str | None = None
    # the attention module masks by position itself (a causal/local bias indexed by the number of
    # queries and keys, as GPT-Neo's), not only through the mask it is given: knocked-out copies
    # must then run at their own positions, not as extra query tokens of one sequence
    masks_by_position: bool = False
    # fills config fields that depend on others (e.g. GPT-Neo's per-layer attention types)
    derive: Callable[[dict[str, Any]], dict[str, Any]] | None = field(default=None, compare=False)
    # where the family is listed among the supported ones (ties: by family name)
    order: int = field(default=1000, compare=False)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.family, self.model_type, *self.aliases)


def qkv_index(layout: QKVLayout, channel: str, n_heads: int, n_kv_heads: int, d_head: int) -> torch.Tensor:
    """Positions of each head's features in the output of the q/k/v projection.

    Returns a LongTensor [n_heads_c, d_head] where n_heads_c is n_heads for q and
    n_kv_heads for k and v.

    - "separate": one projection per channel, heads concatenated (llama and most others).
    - "concat": one fused projection [q | k | v], heads concatenated inside each part
      (GPT-2's c_attn, Phi-3's qkv_proj).
    - "interleaved": one fused projection laid out per head as [h0: q k v | h1: q k v | ...]
      (GPT-NeoX's query_key_value, viewed as [n_heads, 3 * d_head] then chunked).
    """
    c = CHANNELS.index(channel)
    n_c = n_heads if channel == "q" else n_kv_heads
    within = torch.arange(n_c * d_head).view(n_c, d_head)  # [head, d_head]
    if layout == "separate":
        return within
    if layout == "concat":
        offset = (0, n_heads * d_head, (n_heads + n_kv_heads) * d_head)[c]
        return offset + within
    if layout == "interleaved":
        if n_kv_heads != n_heads:
            raise ValueError("an interleaved q/k/v projection has one K and V per query head")
        heads = torch.arange(n_heads).view(n_heads, 1)
        return heads * 3 * d_head + c * d_head + torch.arange(d_head).view(1, d_head)
    raise ValueError(f"unknown q/k/v layout {layout!r}; expected 'separate', 'concat' or 'interleaved'")


def module_at(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """``module_at(model, "model.layers")``: the submodule at a dotted path (index-aware)."""
    return root.get_submodule(path)


def linear_params(module: torch.nn.Module, conv1d: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A projection's weight as [out_features, in_features] and its bias (or None).

    nn.Linear already stores [out, in]; GPT-2's Conv1D stores [in, out], hence the transpose.
    """
    weight = module.weight.T if conv1d else module.weight
    return weight, getattr(module, "bias", None)
