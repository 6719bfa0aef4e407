"""Mistral: as llama, with sliding-window attention (the window is in the mask only)."""

from arrakis.models.adapters._common import LLAMA_FIELDS, LLAMA_PATHS, SMALL_WITH_HEAD_DIM
from arrakis.models.adapters.base import FamilyAdapter

ADAPTER = FamilyAdapter(
    order=8,  # registry place: the original nine families first, then the later ones
    family="mistral",
    model_type="mistral",
    **LLAMA_PATHS,
    fields=LLAMA_FIELDS,
    eps_field="rms_norm_eps",
    defaults=SMALL_WITH_HEAD_DIM,
)
