"""Phi-3: as llama, but q/k/v are one fused ``qkv_proj`` laid out [q | k | v]."""

from arrakis.models.adapters._common import DERIVED_HEAD_DIM_FIELDS, LLAMA_PATHS, SMALL
from arrakis.models.adapters.base import FamilyAdapter

ADAPTER = FamilyAdapter(
    order=6,  # registry place: the original nine families first, then the later ones
    family="phi3",
    model_type="phi3",
    **{**LLAMA_PATHS, "q": "self_attn.qkv_proj", "k": "self_attn.qkv_proj", "v": "self_attn.qkv_proj"},
    qkv_layout="concat",
    fields=DERIVED_HEAD_DIM_FIELDS,
    eps_field="rms_norm_eps",
    defaults=SMALL,
)
