"""Qwen2: as llama, but q/k/v always have biases (o_proj has none)."""

from arrakis.models.adapters._common import DERIVED_HEAD_DIM_FIELDS, LLAMA_PATHS, SMALL
from arrakis.models.adapters.base import FamilyAdapter

ADAPTER = FamilyAdapter(
    order=7,  # registry place: the original nine families first, then the later ones
    family="qwen2",
    model_type="qwen2",
    **LLAMA_PATHS,
    fields=DERIVED_HEAD_DIM_FIELDS,
    eps_field="rms_norm_eps",
    defaults=SMALL,
)
