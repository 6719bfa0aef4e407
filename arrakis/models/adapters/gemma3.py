"""Gemma 3 (text): as gemma2 (post-norms, local and global layers with their own rotary
bases and windows), but per-head RMSNorms of q and k over d_head with (1 + w) gains
(``self_attn.q_norm``, ``k_norm``, applied to [batch, head, pos, d_head]) instead of logit
soft-capping. Hugging Face's ``model_type`` is ``gemma3_text``.
"""

from dataclasses import replace

from arrakis.models.adapters import gemma2

ADAPTER = replace(
    gemma2.ADAPTER,
    order=11,  # registry place: the original nine families first, then the later ones
    family="gemma3",
    model_type="gemma3_text",
    aliases=("gemma-3",),
    q_norm="self_attn.q_norm",
    k_norm="self_attn.k_norm",
    qk_norm_layout="head_pos",
    qk_norm_gain_offset=1.0,
)
