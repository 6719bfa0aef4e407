"""Adapters: the q/k/v split agrees with Hugging Face's own split, and unknown
architectures are refused by name."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, BertConfig

from arrakis import HookedAutoModel
from arrakis.models.adapters import ADAPTERS, adapter_for, qkv_index


def test_concat_layout_matches_a_plain_split():
    # Phi-3 and GPT-2: the fused output is [q (n_heads * d_head) | k | v (n_kv_heads * d_head each)]
    out = torch.arange(8 * 4 + 2 * 4 * 2).float()
    q, k, v = out.split([8 * 4, 2 * 4, 2 * 4])
    assert torch.equal(out[qkv_index("concat", "q", 8, 2, 4)], q.view(8, 4))
    assert torch.equal(out[qkv_index("concat", "k", 8, 2, 4)], k.view(2, 4))
    assert torch.equal(out[qkv_index("concat", "v", 8, 2, 4)], v.view(2, 4))


def test_interleaved_layout_matches_gpt_neox_view_and_chunk():
    # GPT-NeoX: qkv.view(..., n_heads, 3 * d_head).chunk(3, dim=-1)
    out = torch.arange(4 * 3 * 5).float()
    q, k, v = out.view(4, 3 * 5).chunk(3, dim=-1)
    for channel, expected in zip("qkv", (q, k, v), strict=True):
        assert torch.equal(out[qkv_index("interleaved", channel, 4, 4, 5)], expected)
    with pytest.raises(ValueError, match="one K and V per query head"):
        qkv_index("interleaved", "k", 4, 2, 5)


def test_every_adapter_points_at_modules_that_exist():
    from arrakis import HookedAutoConfig

    for adapter in ADAPTERS.values():
        hf = HookedAutoModel(HookedAutoConfig(adapter.family, n_layers=1, d_vocab=64)).hf_model
        layer = hf.get_submodule(adapter.layers)[0]
        for path in (adapter.embed, adapter.ln_final, *([adapter.pos_embed] if adapter.pos_embed else [])):
            hf.get_submodule(path)
        paths = (adapter.ln1, adapter.ln2, adapter.attn, adapter.mlp, adapter.q, adapter.k, adapter.v, adapter.o)
        paths += (adapter.attn_post_norm, adapter.mlp_post_norm)
        for path in paths:
            if path is not None:
                layer.get_submodule(path)
    # q/k norms exist where the config switches them on
    for family, extra in (("qwen3", {}), ("gemma3", {}), ("olmo2", {}), ("stable-lm", {"qk_layernorm": True})):
        adapter = ADAPTERS[family]
        hf = HookedAutoModel(HookedAutoConfig(family, n_layers=1, d_vocab=64, **extra)).hf_model
        layer = hf.get_submodule(adapter.layers)[0]
        layer.get_submodule(adapter.q_norm), layer.get_submodule(adapter.k_norm)


def test_an_unsupported_architecture_is_refused_by_name():
    with pytest.raises(ValueError, match=r"unsupported model family 'bert'.*supports: gpt2 \(model_type 'gpt2'\)"):
        adapter_for("bert")
    bert = AutoModelForCausalLM.from_config(
        BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64, is_decoder=True)
    )
    with pytest.raises(ValueError, match="unsupported model family 'bert'"):
        HookedAutoModel.from_hf(bert)


def test_the_registry_finds_a_family_from_its_file_alone(tmp_path, monkeypatch):
    """A new module defining ADAPTER in the adapters package is registered with no list to
    edit, in the place its ``order`` gives; a module without one (a helper) is skipped."""
    import sys

    import arrakis.models.adapters as adapters

    (tmp_path / "toy_family.py").write_text(
        "from dataclasses import replace\n"
        "from arrakis.models.adapters import llama\n"
        "ADAPTER = replace(llama.ADAPTER, family='toy', model_type='toy', aliases=(), order=0)\n"
    )
    (tmp_path / "toy_helpers.py").write_text("SHARED = 1\n")
    monkeypatch.setattr(adapters, "__path__", [*adapters.__path__, str(tmp_path)])
    try:
        found = adapters.discover()
    finally:
        sys.modules.pop("arrakis.models.adapters.toy_family", None)
        sys.modules.pop("arrakis.models.adapters.toy_helpers", None)
    assert list(found) == ["toy", *ADAPTERS]  # first by its order; the others keep theirs
    assert found["toy"].model_type == "toy"


def test_the_original_nine_families_come_first_in_the_registry():
    original = ["gpt2", "gpt-neo", "gpt-neox", "llama", "gemma", "phi3", "qwen2", "mistral", "stable-lm"]
    assert list(ADAPTERS)[:9] == original
    assert [a.order for a in ADAPTERS.values()] == sorted(a.order for a in ADAPTERS.values())


def test_every_registered_family_has_a_tiny_test_variant():
    from tests.conftest import VARIANTS

    assert set(ADAPTERS) <= {family for family, _ in VARIANTS.values()}
