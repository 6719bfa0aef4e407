"""StableLM: as llama, but LayerNorm, partial rotary, optional q/k/v biases
(``use_qkv_bias``) and an optional parallel residual (``use_parallel_residual``), in which
the MLP reads the same ``input_layernorm`` output as attention and there is no second norm.
With ``qk_layernorm``, q and k are LayerNorm-ed per head over d_head, each head by its own
module (``self_attn.q_layernorm.norms.{h}``), on [batch, head, pos, d_head].
"""

from arrakis.models.adapters._common import DERIVED_HEAD_DIM_FIELDS, LLAMA_PATHS, SMALL
from arrakis.models.adapters.base import FamilyAdapter

ADAPTER = FamilyAdapter(
    order=9,  # registry place: the original nine families first, then the later ones
    family="stable-lm",
    model_type="stablelm",
    aliases=("stablelm", "stable_lm"),
    **LLAMA_PATHS,
    fields=DERIVED_HEAD_DIM_FIELDS,
    eps_field="layer_norm_eps",
    defaults=SMALL,
    norm="layernorm",
    parallel_residual_field="use_parallel_residual",
    q_norm="self_attn.q_layernorm",
    k_norm="self_attn.k_layernorm",
    qk_norm_layout="per_head_modules",
    qk_norm_kind="layernorm",
    qk_norm_field="qk_layernorm",
)
