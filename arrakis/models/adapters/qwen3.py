"""Qwen3: as llama, but per-head RMSNorms of q and k over d_head (``self_attn.q_norm``,
``k_norm``, one gain vector shared by all heads, applied to [batch, pos, head, d_head])
before rotary; no q/k/v biases unless ``attention_bias``."""

from arrakis.models.adapters._common import LLAMA_FIELDS, LLAMA_PATHS, SMALL_WITH_HEAD_DIM
from arrakis.models.adapters.base import FamilyAdapter

ADAPTER = FamilyAdapter(
    order=12,  # registry place: the original nine families first, then the later ones
    family="qwen3",
    model_type="qwen3",
    **LLAMA_PATHS,
    fields=LLAMA_FIELDS,
    eps_field="rms_norm_eps",
    defaults=SMALL_WITH_HEAD_DIM,
    q_norm="self_attn.q_norm",
    k_norm="self_attn.k_norm",
    qk_norm_layout="pos_head",
)
