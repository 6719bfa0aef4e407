"""GPT-Neo: as gpt2 but separate q/k/v Linears without biases, no 1/sqrt(d_head) score
scaling, and layers alternating global and local (windowed) attention.
"""

from typing import Any

from arrakis.models.adapters.base import FamilyAdapter


def _attention_types(kwargs: dict[str, Any]) -> dict[str, Any]:
    # Hugging Face requires one attention type per layer; alternate global and local like
    # the released checkpoints, for whatever number of layers was asked for.
    if "attention_types" not in kwargs:
        kinds = ("global", "local")
        kwargs["attention_types"] = [[[kinds[i % 2]], 1] for i in range(kwargs["num_layers"])]
    return kwargs


ADAPTER = FamilyAdapter(
    order=2,  # registry place: the original nine families first, then the later ones
    family="gpt-neo",
    model_type="gpt_neo",
    aliases=("gptneo",),
    layers="transformer.h",
    embed="transformer.wte",
    pos_embed="transformer.wpe",
    ln_final="transformer.ln_f",
    ln1="ln_1",
    ln2="ln_2",
    attn="attn",
    mlp="mlp",
    q="attn.attention.q_proj",
    k="attn.attention.k_proj",
    v="attn.attention.v_proj",
    o="attn.attention.out_proj",
    fields={
        "n_layers": "num_layers",
        "n_heads": "num_heads",
        "n_kv_heads": None,
        "d_model": "hidden_size",
        "d_head": None,
        "d_mlp": "intermediate_size",
        "d_vocab": "vocab_size",
        "n_ctx": "max_position_embeddings",
    },
    eps_field="layer_norm_epsilon",
    defaults={
        "num_layers": 4,
        "hidden_size": 256,
        "num_heads": 8,
        "intermediate_size": 1024,
        "vocab_size": 50257,
        "max_position_embeddings": 1024,
        "window_size": 8,  # small, so that short test prompts exercise the local window
    },
    norm="layernorm",
    mlp_ratio_if_unset=4,
    masks_by_position=True,  # GPTNeoSelfAttention's own causal/local bias buffer
    derive=_attention_types,
)
