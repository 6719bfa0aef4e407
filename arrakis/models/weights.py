r"""Per-head weights, stacked ``[layer, head, ...]``, raw or with the norm folded in.

Raw weights act on the normalised input the attention block sees, x~ = ln1(x):

    q = x~ W_Q[h] + b_Q[h]    k = x~ W_K[h] + b_K[h]    v = x~ W_V[h] + b_V[h]
    attn_out = sum_h z[h] W_O[h] + b_O

Folded weights (TransformerLens's ``fold_ln``, what circuit analysis uses) act on the
*standardised* input x^ = (x - mean(x)) / std(x) for LayerNorm, x / rms(x) for RMSNorm.
With the norm's gain g (Gemma: 1 + w) and bias beta, x~ = x^ * g + beta, so

    x~ W + b = x^ (diag(g) W) + (beta W + b)

and for LayerNorm, whose x^ has zero mean over d_model, W' = diag(g) W may also be centred
over d_model (its mean row removed) without changing x^ W'. Folding therefore leaves q, k,
v unchanged while making W_Q, W_K, W_V comparable across heads and layers.

Grouped-query attention: K and V are expanded to one slice per query head
(``W_K[l, h] = W_K_kv[l, kv_group[h]]``), so every tensor is indexed by query head.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from arrakis.models.adapters import FamilyAdapter, qkv_index
from arrakis.models.adapters.base import CHANNELS, linear_params, module_at
from arrakis.models.config import ModelShape


@dataclass(frozen=True)
class HeadWeights:
    """Stacked per-head attention weights of every layer (float32)."""

    W_Q: Tensor  # [n_layers, n_heads, d_model, d_head]
    W_K: Tensor  # [n_layers, n_heads, d_model, d_head]  (expanded to query heads)
    W_V: Tensor  # [n_layers, n_heads, d_model, d_head]  (expanded to query heads)
    W_O: Tensor  # [n_layers, n_heads, d_head, d_model]
    b_Q: Tensor  # [n_layers, n_heads, d_head]
    b_K: Tensor  # [n_layers, n_heads, d_head]
    b_V: Tensor  # [n_layers, n_heads, d_head]
    b_O: Tensor  # [n_layers, d_model]
    kv_group: Tensor  # [n_heads] long: the KV head each query head reads
    folded: bool

    @property
    def n_layers(self) -> int:
        return self.W_Q.shape[0]

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[1]

    def tensors(self) -> dict[str, Tensor]:
        """The tensors by TransformerLens name (W_Q, ..., b_O, kv_group)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "folded"}


def kv_groups(n_heads: int, n_kv_heads: int) -> Tensor:
    """Query head h reads KV head h // (n_heads / n_kv_heads), as Hugging Face's repeat_kv."""
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
    return torch.arange(n_heads) // (n_heads // n_kv_heads)


def _layer_qkv(layer: nn.Module, adapter: FamilyAdapter, cfg: ModelShape, channel: str) -> tuple[Tensor, Tensor]:
    """One layer's W [n_heads_c, d_model, d_head] and b [n_heads_c, d_head] for a channel."""
    weight, bias = linear_params(module_at(layer, getattr(adapter, channel)), adapter.conv1d)
    idx = qkv_index(adapter.qkv_layout, channel, cfg.n_heads, cfg.n_kv_heads, cfg.d_head)
    W = weight[idx].transpose(-1, -2)  # [head_c, d_head, d_model] -> [head_c, d_model, d_head]
    b = bias[idx] if bias is not None else torch.zeros(idx.shape, dtype=weight.dtype, device=weight.device)
    return W.float(), b.float()


def _layer_o(layer: nn.Module, adapter: FamilyAdapter, cfg: ModelShape) -> tuple[Tensor, Tensor]:
    """One layer's W_O [n_heads, d_head, d_model] and b_O [d_model]."""
    weight, bias = linear_params(module_at(layer, adapter.o), adapter.conv1d)
    W_O = weight.T.reshape(cfg.n_heads, cfg.d_head, cfg.d_model)  # [head * d_head, d_model] -> per head
    b_O = bias if bias is not None else torch.zeros(cfg.d_model, dtype=weight.dtype, device=weight.device)
    return W_O.float(), b_O.float()


def _fold(W: Tensor, b: Tensor, norm: nn.Module, adapter: FamilyAdapter) -> tuple[Tensor, Tensor]:
    """Fold ln1 into one channel of one layer: W [head, d_model, d_head], b [head, d_head]."""
    gain = norm.weight.float() + adapter.norm_gain_offset  # [d_model]
    beta = getattr(norm, "bias", None)
    if beta is not None:
        b = b + torch.einsum("d,hdk->hk", beta.float(), W)  # beta W + b
    W = gain[None, :, None] * W  # diag(g) W
    if adapter.norm == "layernorm":
        W = W - W.mean(dim=-2, keepdim=True)  # centre over d_model: x^ has zero mean
    return W, b


@torch.no_grad()
def extract_head_weights(
    hf_model: nn.Module, adapter: FamilyAdapter, cfg: ModelShape, *, folded: bool = True
) -> HeadWeights:
    """Stack every layer's per-head weights from a Hugging Face model (see module docstring)."""
    group = kv_groups(cfg.n_heads, cfg.n_kv_heads)
    stacks: dict[str, list[Tensor]] = {k: [] for k in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")}
    for layer in module_at(hf_model, adapter.layers):
        for channel in CHANNELS:
            W, b = _layer_qkv(layer, adapter, cfg, channel)
            if channel != "q":
                W, b = W[group.to(W.device)], b[group.to(W.device)]  # one slice per query head
            if folded:
                W, b = _fold(W, b, module_at(layer, adapter.ln1), adapter)
            stacks[f"W_{channel.upper()}"].append(W)
            stacks[f"b_{channel.upper()}"].append(b)
        W_O, b_O = _layer_o(layer, adapter, cfg)
        stacks["W_O"].append(W_O)
        stacks["b_O"].append(b_O)
    return HeadWeights(**{k: torch.stack(v) for k, v in stacks.items()}, kv_group=group, folded=folded)
