"""GPT-NeoX (Pythia): LayerNorm, partial rotary, a parallel residual by default, and one
``query_key_value`` Linear laid out per head as [h: q k v] (interleaved).
"""

from arrakis.models.adapters.base import FamilyAdapter

ADAPTER = FamilyAdapter(
    order=3,  # registry place: the original nine families first, then the later ones
    family="gpt-neox",
    model_type="gpt_neox",
    aliases=("gptneox", "pythia"),
    layers="gpt_neox.layers",
    embed="gpt_neox.embed_in",
    ln_final="gpt_neox.final_layer_norm",
    ln1="input_layernorm",
    ln2="post_attention_layernorm",
    attn="attention",
    mlp="mlp",
    q="attention.query_key_value",
    k="attention.query_key_value",
    v="attention.query_key_value",
    o="attention.dense",
    qkv_layout="interleaved",
    fields={
        "n_layers": "num_hidden_layers",
        "n_heads": "num_attention_heads",
        "n_kv_heads": None,
        "d_model": "hidden_size",
        "d_head": None,
        "d_mlp": "intermediate_size",
        "d_vocab": "vocab_size",
        "n_ctx": "max_position_embeddings",
    },
    eps_field="layer_norm_eps",
    defaults={
        "num_hidden_layers": 4,
        "hidden_size": 256,
        "num_attention_heads": 8,
        "intermediate_size": 1024,
        "vocab_size": 50257,
        "max_position_embeddings": 1024,
    },
    norm="layernorm",
    parallel_residual_field="use_parallel_residual",
)
