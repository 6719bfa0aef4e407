"""Field names and defaults shared by the families that follow Llama's config layout."""

# Llama-style config fields (also Gemma, Mistral; Qwen2, Phi-3 and StableLM derive d_head).
LLAMA_FIELDS = {
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads",
    "d_model": "hidden_size",
    "d_head": "head_dim",
    "d_mlp": "intermediate_size",
    "d_vocab": "vocab_size",
    "n_ctx": "max_position_embeddings",
}
DERIVED_HEAD_DIM_FIELDS = {**LLAMA_FIELDS, "d_head": None}

# A model a laptop CPU runs in milliseconds, with grouped-query attention (8 query heads
# sharing 2 KV heads) and the GPT-2 vocabulary, so that ids below 50256 are valid.
SMALL = {
    "num_hidden_layers": 4,
    "hidden_size": 256,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "intermediate_size": 512,  # SwiGLU: two up-projections of this width
    "vocab_size": 50257,
    "max_position_embeddings": 1024,
}
SMALL_WITH_HEAD_DIM = {**SMALL, "head_dim": 32}  # set explicitly: Gemma's default is 256

# Module paths of a Llama-style decoder (model.layers[i].self_attn.q_proj, ...).
LLAMA_PATHS = {
    "layers": "model.layers",
    "embed": "model.embed_tokens",
    "ln_final": "model.norm",
    "ln1": "input_layernorm",
    "ln2": "post_attention_layernorm",
    "attn": "self_attn",
    "mlp": "mlp",
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
}
