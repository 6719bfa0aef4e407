"""GPT-2: LayerNorm, learned absolute positions, fused ``c_attn`` laid out [q | k | v].

Conv1D stores its weight as [in, out] (the transpose of nn.Linear), so x @ W + b.
"""

from arrakis.models.adapters.base import FamilyAdapter

ADAPTER = FamilyAdapter(
    order=1,  # registry place: the original nine families first, then the later ones
    family="gpt2",
    model_type="gpt2",
    layers="transformer.h",
    embed="transformer.wte",
    pos_embed="transformer.wpe",
    ln_final="transformer.ln_f",
    ln1="ln_1",
    ln2="ln_2",
    attn="attn",
    mlp="mlp",
    q="attn.c_attn",
    k="attn.c_attn",
    v="attn.c_attn",
    o="attn.c_proj",
    qkv_layout="concat",
    conv1d=True,
    fields={
        "n_layers": "n_layer",
        "n_heads": "n_head",
        "n_kv_heads": None,
        "d_model": "n_embd",
        "d_head": None,
        "d_mlp": "n_inner",
        "d_vocab": "vocab_size",
        "n_ctx": "n_positions",
    },
    eps_field="layer_norm_epsilon",
    defaults={"n_layer": 4, "n_embd": 256, "n_head": 8, "n_inner": 1024, "vocab_size": 50257, "n_positions": 1024},
    norm="layernorm",
    mlp_ratio_if_unset=4,
)
