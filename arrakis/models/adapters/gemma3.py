"""Gemma 3 (text): as gemma2 (post-norms, local and global layers with their own rotary
bases and windows), but per-head RMSNorms of q and k over d_head with (1 + w) gains
(``self_attn.q_norm``, ``k_norm``, applied to [batch, head, pos, d_head]) instead of logit
soft-capping. Hugging Face's ``model_type`` is ``gemma3_text``.
"""

from arrakis.models.adapters._common import LLAMA_FIELDS, LLAMA_PATHS, SMALL_WITH_HEAD_DIM
from arrakis.models.adapters.base import FamilyAdapter

ADAPTER = FamilyAdapter(
    family="gemma3",
    model_type="gemma3_text",
    aliases=("gemma-3",),
    **{**LLAMA_PATHS, "ln2": "pre_feedforward_layernorm"},
    fields=LLAMA_FIELDS,
    eps_field="rms_norm_eps",
    defaults={**SMALL_WITH_HEAD_DIM, "query_pre_attn_scalar": 32, "sliding_window": 64},
    norm_gain_offset=1.0,
    q_norm="self_attn.q_norm",
    k_norm="self_attn.k_norm",
    qk_norm_layout="head_pos",
    qk_norm_gain_offset=1.0,
    attn_post_norm="post_attention_layernorm",
    mlp_post_norm="post_feedforward_layernorm",
)
