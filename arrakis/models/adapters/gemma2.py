"""Gemma 2: as gemma ((1 + w) RMSNorm gains, embeddings scaled by sqrt(d_model)), but the
attention and MLP outputs are normalised again before they join the residual (post-norms:
``post_attention_layernorm``, ``post_feedforward_layernorm``; the pre-MLP norm is
``pre_feedforward_layernorm``), attention logits are soft-capped (tanh), and layers
alternate between a sliding window and global attention. The hooked forward pass is Hugging
Face's own, so capping and windows are exact there; weight-based scores use the bilinear QK
part and say so.
"""

from arrakis.models.adapters._common import LLAMA_FIELDS, LLAMA_PATHS, SMALL_WITH_HEAD_DIM
from arrakis.models.adapters.base import FamilyAdapter

ADAPTER = FamilyAdapter(
    order=10,  # registry place: the original nine families first, then the later ones
    family="gemma2",
    model_type="gemma2",
    aliases=("gemma-2",),
    **{**LLAMA_PATHS, "ln2": "pre_feedforward_layernorm"},
    fields=LLAMA_FIELDS,
    eps_field="rms_norm_eps",
    defaults={**SMALL_WITH_HEAD_DIM, "query_pre_attn_scalar": 32, "sliding_window": 64},
    norm_gain_offset=1.0,
    attn_post_norm="post_attention_layernorm",
    mlp_post_norm="post_feedforward_layernorm",
)
