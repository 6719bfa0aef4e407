"""HookedAutoConfig: small defaults for every family, any field overridable, typos refused."""

from __future__ import annotations

import pytest

from arrakis import HookedAutoConfig, HookedAutoModel, UnsupportedArchitectureError, supported_families

ORIGINAL = ["gpt2", "gpt-neo", "gpt-neox", "llama", "gemma", "phi3", "qwen2", "mistral", "stable-lm"]
LATER = ["gemma2", "gemma3", "qwen3", "olmo2"]
FAMILIES = ORIGINAL + LATER
GQA_FAMILIES = {"llama", "gemma", "phi3", "qwen2", "mistral", "stable-lm", *LATER}


def test_the_nine_families_of_the_original_and_the_later_ones_are_supported():
    assert supported_families()[: len(FAMILIES)] == FAMILIES  # a new family file joins after them


@pytest.mark.parametrize("family", supported_families())  # every registered family, new ones too
def test_defaults_build_a_small_model_with_the_gpt2_vocabulary(family):
    model = HookedAutoModel(HookedAutoConfig(family))
    c = model.cfg
    assert c.family == family
    assert c.d_vocab == 50257  # ids below 50256, as the original example draws, are valid
    assert (c.n_layers, c.d_model, c.n_heads, c.d_head) == (4, 256, 8, 32)
    if family in FAMILIES:  # the known families' attention layout
        assert c.n_kv_heads == (2 if family in GQA_FAMILIES else 8)
    assert sum(p.numel() for p in model.parameters()) < 40_000_000
    assert not model.training


def test_residual_layout_and_norm_follow_the_family():
    shapes = {f: HookedAutoModel(HookedAutoConfig(f, n_layers=1)).cfg for f in FAMILIES}
    assert {f for f, c in shapes.items() if c.parallel_residual} == {"gpt-neox"}
    assert {f for f, c in shapes.items() if c.norm == "layernorm"} == {"gpt2", "gpt-neo", "gpt-neox", "stable-lm"}
    assert {f for f, c in shapes.items() if c.positional == "learned"} == {"gpt2", "gpt-neo"}


def test_hugging_face_fields_and_transformerlens_names_both_override():
    cfg = HookedAutoConfig("llama", num_hidden_layers=3, n_heads=4, n_kv_heads=1, rms_norm_eps=1e-3)
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (3, 4, 1)
    model = HookedAutoModel(cfg)
    assert (model.cfg.n_layers, model.cfg.n_heads, model.cfg.n_kv_heads, model.cfg.norm_eps) == (3, 4, 1, 1e-3)
    gpt2 = HookedAutoModel(HookedAutoConfig("gpt2", n_layers=1, d_model=32, n_heads=2))
    assert (gpt2.cfg.n_layers, gpt2.cfg.d_model, gpt2.cfg.d_head) == (1, 32, 16)


def test_gpt_neo_gets_one_attention_type_per_layer_for_any_depth():
    cfg = HookedAutoConfig("gpt-neo", n_layers=3)
    assert cfg.hf_config.attention_layers == ["global", "local", "global"]


def test_family_names_and_hugging_face_model_types_are_accepted():
    assert HookedAutoConfig("gpt_neox").family == "gpt-neox"
    assert HookedAutoConfig("stablelm").family == "stable-lm"
    assert HookedAutoConfig("LLAMA").family == "llama"


def test_an_unknown_family_lists_the_supported_ones():
    with pytest.raises(ValueError, match=r"unsupported model family 'bert'.*gpt2.*stable-lm") as info:
        HookedAutoConfig("bert")
    assert isinstance(info.value, UnsupportedArchitectureError)


def test_a_field_the_family_does_not_know_is_refused_with_a_suggestion():
    with pytest.raises(ValueError, match=r"'num_hiden_layers' is not a field of the llama config; did you mean"):
        HookedAutoConfig("llama", num_hiden_layers=2)
    with pytest.raises(ValueError, match="d_head cannot be set for gpt2: it is derived"):
        HookedAutoConfig("gpt2", d_head=16)


def test_special_token_ids_outside_a_small_vocabulary_are_dropped():
    cfg = HookedAutoConfig("phi3", d_vocab=100)  # Phi-3's default pad id is 32000
    assert cfg.pad_token_id is None
    assert HookedAutoConfig("phi3", d_vocab=100, pad_token_id=5).pad_token_id == 5
    HookedAutoModel(cfg)
