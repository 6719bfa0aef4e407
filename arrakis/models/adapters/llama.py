"""Llama: pre-norm RMSNorm, rotary, grouped-query attention, SwiGLU MLP.

The reference layout the other Llama-style adapters are stated against. Optional biases on
q/k/v/o (``attention_bias=True``).
"""

from arrakis.models.adapters._common import LLAMA_FIELDS, LLAMA_PATHS, SMALL_WITH_HEAD_DIM
from arrakis.models.adapters.base import FamilyAdapter

ADAPTER = FamilyAdapter(
    order=4,  # registry place: the original nine families first, then the later ones
    family="llama",
    model_type="llama",
    **LLAMA_PATHS,
    fields=LLAMA_FIELDS,
    eps_field="rms_norm_eps",
    defaults=SMALL_WITH_HEAD_DIM,
)
