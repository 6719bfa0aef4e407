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

from collections.abc import Callable, Iterable
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
    # per-head q/k norms (None without them): gains [n_layers, n_heads, d_head] (Gemma 3: 1 + w;
    # K expanded to query heads); LayerNorm q/k norms also centre q and k over d_head
    q_norm_gain: Tensor | None = None
    k_norm_gain: Tensor | None = None
    qk_norm_centred: bool = False

    def tensors(self) -> dict[str, Tensor]:
        """The tensors by TransformerLens name (W_Q, ..., b_O, kv_group, and q/k norm gains)."""
        return {f.name: v for f in fields(self) if isinstance(v := getattr(self, f.name), Tensor)}

    def qk_circuit(self) -> tuple[Tensor, Tensor]:
        """W_Q and W_K as the attention logit sees them: QK[h] = W_Q[h] W_K[h]^T, with per-head
        q/k norms ``W_Q diag(gamma_q)`` and ``W_K diag(gamma_k)`` (centred over d_head first
        for LayerNorm q/k norms). The norms' per-token scales are positive scalars that cancel
        in every normalised score, so this is the QK circuit up to them (docs/mathematics.md#conventions)."""
        if self.q_norm_gain is None:
            return self.W_Q, self.W_K
        W_Q, W_K = self.W_Q, self.W_K
        if self.qk_norm_centred:  # (q - mean_d q): a projection of each head's features
            W_Q, W_K = W_Q - W_Q.mean(-1, keepdim=True), W_K - W_K.mean(-1, keepdim=True)
        return W_Q * self.q_norm_gain[..., None, :].to(W_Q), W_K * self.k_norm_gain[..., None, :].to(W_K)


def kv_groups(n_heads: int, n_kv_heads: int) -> Tensor:
    """Query head h reads KV head h // (n_heads / n_kv_heads), as Hugging Face's repeat_kv."""
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
    return torch.arange(n_heads) // (n_heads // n_kv_heads)


# A layer's tensors, whoever holds them: ``linear(path)`` -> (weight [out, in], bias or None)
# of the projection at a path relative to the layer; ``norm(path)`` -> (gain, bias or None).
Linear = Callable[[str], tuple[Tensor, Tensor | None]]
Norm = Callable[[str], tuple[Tensor, Tensor | None]]


def _layer_qkv(linear: Linear, adapter: FamilyAdapter, cfg: ModelShape, channel: str) -> tuple[Tensor, Tensor]:
    """One layer's W [n_heads_c, d_model, d_head] and b [n_heads_c, d_head] for a channel."""
    weight, bias = linear(getattr(adapter, channel))
    idx = qkv_index(adapter.qkv_layout, channel, cfg.n_heads, cfg.n_kv_heads, cfg.d_head).to(weight.device)
    W = weight[idx].transpose(-1, -2)  # [head_c, d_head, d_model] -> [head_c, d_model, d_head]
    b = bias[idx] if bias is not None else torch.zeros(idx.shape, dtype=weight.dtype, device=weight.device)
    return W.float(), b.float()


def _layer_o(linear: Linear, adapter: FamilyAdapter, cfg: ModelShape) -> tuple[Tensor, Tensor]:
    """One layer's W_O [n_heads, d_head, d_model] and b_O [d_model]."""
    weight, bias = linear(adapter.o)
    W_O = weight.T.reshape(cfg.n_heads, cfg.d_head, cfg.d_model)  # [head * d_head, d_model] -> per head
    b_O = bias if bias is not None else torch.zeros(cfg.d_model, dtype=weight.dtype, device=weight.device)
    return W_O.float(), b_O.float()


def _fold(W: Tensor, b: Tensor, gain: Tensor, beta: Tensor | None, adapter: FamilyAdapter) -> tuple[Tensor, Tensor]:
    """Fold ln1 into one channel of one layer: W [head, d_model, d_head], b [head, d_head]."""
    gain = gain.float() + adapter.norm_gain_offset  # [d_model]
    if beta is not None:
        b = b + torch.einsum("d,hdk->hk", beta.float(), W)  # beta W + b
    W = gain[None, :, None] * W  # diag(g) W
    if adapter.norm == "layernorm":
        W = W - W.mean(dim=-2, keepdim=True)  # centre over d_model: x^ has zero mean
    return W, b


def _qk_norm_gain(norm: Norm, adapter: FamilyAdapter, cfg: ModelShape, channel: str) -> Tensor:
    """One layer's q (or k) norm gain per head, [n_heads_c, d_head] (float32)."""
    n_c = cfg.n_heads if channel == "q" else cfg.n_kv_heads
    path = adapter.q_norm if channel == "q" else adapter.k_norm
    if adapter.qk_norm_layout == "per_head_modules":
        parts = [norm(f"{path}.norms.{h}") for h in range(n_c)]
    else:
        parts = [norm(path)]
    if any(bias is not None and bool(bias.abs().max() > 0) for _, bias in parts):
        raise ValueError(
            f"the {channel} norm of this {cfg.family} model has a bias, which adds terms to the attention logit "
            "that a gain-folded QK circuit cannot hold; arrakis does not support q/k norm biases"
        )
    gain = torch.stack([g for g, _ in parts]).float() + adapter.qk_norm_gain_offset
    # one shared vector over d_head, one per head, or one over all heads concatenated
    return (
        gain.reshape(-1, cfg.d_head).expand(n_c, cfg.d_head)
        if gain.numel() == cfg.d_head
        else gain.reshape(n_c, cfg.d_head)
    )


def layer_head_weights(
    linear: Linear, norm: Norm, adapter: FamilyAdapter, cfg: ModelShape, *, folded: bool
) -> dict[str, Tensor]:
    """One layer's per-head weights (float32), K and V expanded to query heads."""
    group = kv_groups(cfg.n_heads, cfg.n_kv_heads)
    out = {}
    for channel in CHANNELS:
        W, b = _layer_qkv(linear, adapter, cfg, channel)
        if channel != "q":
            W, b = W[group.to(W.device)], b[group.to(W.device)]  # one slice per query head
        if folded and adapter.ln1 is not None:  # OLMo-2's attention reads the residual itself
            W, b = _fold(W, b, *norm(adapter.ln1), adapter)
        out[f"W_{channel.upper()}"], out[f"b_{channel.upper()}"] = W, b
    out["W_O"], out["b_O"] = _layer_o(linear, adapter, cfg)
    if cfg.qk_norm:
        out["q_norm_gain"] = _qk_norm_gain(norm, adapter, cfg, "q")
        out["k_norm_gain"] = _qk_norm_gain(norm, adapter, cfg, "k")[group.to(out["W_K"].device)]
    return out


def stack_head_weights(
    layers: Iterable[tuple[Linear, Norm]],
    adapter: FamilyAdapter,
    cfg: ModelShape,
    *,
    folded: bool,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> HeadWeights:
    """Stack per-head weights layer by layer into preallocated [n_layers, ...] tensors of
    ``dtype`` (each layer is computed in float32, then stored), so that at most one layer
    exists in float32 at a time."""
    L, H, D, K = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head
    shapes = {"W_Q": (L, H, D, K), "W_K": (L, H, D, K), "W_V": (L, H, D, K), "W_O": (L, H, K, D)}
    shapes |= {"b_Q": (L, H, K), "b_K": (L, H, K), "b_V": (L, H, K), "b_O": (L, D)}
    if cfg.qk_norm:
        shapes |= {"q_norm_gain": (L, H, K), "k_norm_gain": (L, H, K)}
    stacks = {name: torch.empty(shape, dtype=dtype, device=device) for name, shape in shapes.items()}
    for i, (linear, norm) in enumerate(layers):
        for name, tensor in layer_head_weights(linear, norm, adapter, cfg, folded=folded).items():
            stacks[name][i] = tensor
    centred = bool(cfg.qk_norm) and adapter.qk_norm_kind == "layernorm"
    return HeadWeights(**stacks, kv_group=kv_groups(H, cfg.n_kv_heads), folded=folded, qk_norm_centred=centred)


def module_tensors(layer: nn.Module, adapter: FamilyAdapter) -> tuple[Linear, Norm]:
    """The tensor getters of a Hugging Face decoder layer."""

    def linear(path: str) -> tuple[Tensor, Tensor | None]:
        return linear_params(module_at(layer, path), adapter.conv1d)

    def norm(path: str) -> tuple[Tensor, Tensor | None]:
        module = module_at(layer, path)
        return module.weight, getattr(module, "bias", None)

    return linear, norm


@torch.no_grad()
def extract_head_weights(
    hf_model: nn.Module, adapter: FamilyAdapter, cfg: ModelShape, *, folded: bool = True
) -> HeadWeights:
    """Stack every layer's per-head weights from a Hugging Face model (see module docstring)."""
    layers = (module_tensors(layer, adapter) for layer in module_at(hf_model, adapter.layers))
    device = next(hf_model.parameters()).device
    return stack_head_weights(layers, adapter, cfg, folded=folded, device=device)
