"""OLMo-2: as llama, but with post-norms only: attention reads the residual stream itself
(no input norm), and its output and the MLP's are normalised before they join the residual
(``post_attention_layernorm``, ``post_feedforward_layernorm``). q and k are RMS-normalised
over all heads at once (``self_attn.q_norm`` over n_heads * d_head, ``k_norm`` over
n_kv_heads * d_head), each head with its own slice of the gain.
"""

from arrakis.models.adapters._common import DERIVED_HEAD_DIM_FIELDS, LLAMA_PATHS, SMALL
from arrakis.models.adapters.base import FamilyAdapter

ADAPTER = FamilyAdapter(
    order=13,  # registry place: the original nine families first, then the later ones
    family="olmo2",
    model_type="olmo2",
    aliases=("olmo-2",),
    **{**LLAMA_PATHS, "ln1": None, "ln2": None},
    fields=DERIVED_HEAD_DIM_FIELDS,
    eps_field="rms_norm_eps",
    defaults=SMALL,
    q_norm="self_attn.q_norm",
    k_norm="self_attn.k_norm",
    qk_norm_layout="flat",
    attn_post_norm="post_attention_layernorm",
    mlp_post_norm="post_feedforward_layernorm",
)
