"""Gemma (1): as llama, but RMSNorm scales by (1 + w) and embeddings by sqrt(d_model).

The embedding scale lives inside Hugging Face's embedding module, so ``hook_embed`` is the
scaled embedding, which is what the residual stream starts from.
"""

from arrakis.models.adapters._common import LLAMA_FIELDS, LLAMA_PATHS, SMALL_WITH_HEAD_DIM
from arrakis.models.adapters.base import FamilyAdapter

ADAPTER = FamilyAdapter(
    order=5,  # registry place: the original nine families first, then the later ones
    family="gemma",
    model_type="gemma",
    **LLAMA_PATHS,
    fields=LLAMA_FIELDS,
    eps_field="rms_norm_eps",
    defaults=SMALL_WITH_HEAD_DIM,
    norm_gain_offset=1.0,
)
