"""The weights at both ends of the residual stream: token embeddings in, the final norm and
the unembedding out, and attention's post-norm (the one norm between a head and the stream).

Functions of the Hugging Face module and its family adapter; ``HookedAutoModel`` exposes
them as ``W_E``, ``W_U``, ``b_U``, ``final_norm()``, ``unembedding()`` and
``attn_post_norm()``. The folding conventions are those of docs/mathematics.md#conventions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from arrakis.models.adapters.base import FamilyAdapter, module_at
from arrakis.models.config import ModelShape


def input_embeddings(hf_model: nn.Module) -> Tensor:
    """The token embedding matrix W_E [d_vocab, d_model], as stored (no embedding scale)."""
    return hf_model.get_input_embeddings().weight.detach()


def embedding_scale(hf_model: nn.Module) -> Tensor | None:
    """The factor the embedding module multiplies its rows by (Gemma: sqrt(d_model)), or None."""
    scale = getattr(hf_model.get_input_embeddings(), "embed_scale", None)
    return scale if isinstance(scale, Tensor) else None


def final_norm(hf_model: nn.Module, adapter: FamilyAdapter) -> tuple[Tensor, Tensor | None]:
    """The final norm's gain (Gemma: 1 + w) [d_model] and bias (LayerNorm) or None."""
    norm = module_at(hf_model, adapter.ln_final)
    bias = getattr(norm, "bias", None)
    return (
        norm.weight.detach().float() + adapter.norm_gain_offset,
        None if bias is None else bias.detach().float(),
    )


def unembedding(
    hf_model: nn.Module, adapter: FamilyAdapter, cfg: ModelShape, tokens: Sequence[int] | None = None
) -> tuple[Tensor, Tensor]:
    """The folded unembedding of ``tokens`` (None: the whole vocabulary): (W_U [d_model, k],
    b_U [k]), so that logits = standardised(resid_final) @ W_U + b_U. The final norm's gain is
    folded in (LayerNorm: rows centred over d_model, as the standardised input has zero mean)
    and its bias into b_U. Only the columns asked for are formed."""
    gain, beta = final_norm(hf_model, adapter)
    head = hf_model.get_output_embeddings()
    rows = head.weight.detach().float()  # [d_vocab, d_model]
    if tokens is not None:
        rows = rows[torch.as_tensor(list(tokens), device=rows.device)]
    W = gain[:, None] * rows.T  # [k, d_model] -> [d_model, k]
    if cfg.norm == "layernorm":
        W = W - W.mean(0, keepdim=True)
    bias = torch.zeros(rows.shape[0], device=rows.device)
    if getattr(head, "bias", None) is not None:
        bias = bias + (head.bias.detach().float() if tokens is None else head.bias.detach().float()[list(tokens)])
    if beta is not None:
        bias = bias + beta @ rows.T
    return W, bias


def attn_post_norm(
    hf_model: nn.Module, adapter: FamilyAdapter, cfg: ModelShape, layer: int, into: Tensor
) -> tuple[Tensor, Tensor]:
    """Attention's post-norm of ``layer`` (RMSNorm) as a gain [d_model] and the per-token scale
    of what enters it (``into`` [..., d_model] -> [...]): post_norm(x) = gain * x / scale."""
    if not cfg.attn_post_norm:
        raise ValueError(f"this {cfg.family} model has no attention post-norm")
    norm = module_at(module_at(hf_model, adapter.layers)[layer], adapter.attn_post_norm)
    gain = norm.weight.detach().float().to(into.device) + adapter.norm_gain_offset
    return gain, (into.float().pow(2).mean(-1) + cfg.norm_eps).sqrt()
