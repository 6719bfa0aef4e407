"""Loading offline: local folders and safetensors files of every family round-trip, errors say
what was looked for, and the cache of converted weights never serves a broken entry."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

from arrakis import HookedAutoModel, ModelNotFoundError, load_model
from arrakis.models import disk_cache
from tests.conftest import VARIANTS, prompt, shared


def word_tokenizer(n: int = 512) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over "w0 ... w{n-1}", made here (nothing downloaded)."""
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(n)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", bos_token="w1", eos_token="w2")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_saved_model_of_every_family_round_trips(variant, tmp_path):
    original = shared(variant)
    original.hf_model.save_pretrained(tmp_path)
    word_tokenizer(original.cfg.d_vocab).save_pretrained(tmp_path)
    loaded = HookedAutoModel.from_pretrained(tmp_path)
    assert loaded.cfg == original.cfg
    ids = prompt(original.cfg.d_vocab)
    assert torch.equal(loaded(ids)[0].logits, original(ids)[0].logits)
    for name, tensor in original.head_weights().tensors().items():
        assert torch.equal(getattr(loaded.head_weights(), name), tensor), name
    assert loaded.to_str_tokens(loaded.to_tokens("w5 w7 w9")) == ["w5", "w7", "w9"]


def test_a_safetensors_file_and_load_model_find_the_config_beside_it(tmp_path):
    original = shared("qwen2")
    original.hf_model.save_pretrained(tmp_path)
    ids = prompt(original.cfg.d_vocab)
    for path in (tmp_path / "model.safetensors", tmp_path):
        model = load_model(path)
        assert torch.equal(model(ids)[0].logits, original(ids)[0].logits)
        assert model.tokenizer is None  # none was saved; prompts are ids
    with pytest.raises(ValueError, match="no tokenizer"):
        model.to_tokens("hello")


def test_strings_become_tokens_with_an_optional_bos(tmp_path):
    model = HookedAutoModel.from_hf(shared("llama").hf_model, tokenizer=word_tokenizer())
    assert model.to_tokens("w3 w4").tolist() == [[3, 4]]
    assert model.to_tokens("w3 w4", prepend_bos=True).tolist() == [[1, 3, 4]]
    ids, mask = model.to_tokens(["w3 w4", "w5 w6"])
    assert ids.tolist() == [[3, 4], [5, 6]] and mask.tolist() == [[1, 1], [1, 1]]


def test_missing_models_say_what_was_looked_for(tmp_path):
    with pytest.raises(ModelNotFoundError, match="arrakis loads local files only"):
        load_model("meta-llama/Llama-3-8B")
    with pytest.raises(ModelNotFoundError, match=r"no config.json in .* \(found: notes.txt\)"):
        (tmp_path / "notes.txt").write_text("hi")
        HookedAutoModel.from_pretrained(tmp_path)
    with pytest.raises(ModelNotFoundError, match="no GGUF file at"):
        HookedAutoModel.from_gguf(tmp_path / "missing.gguf")


def test_an_unsupported_architecture_is_refused_before_loading_weights(tmp_path):
    BertForMaskedLM(
        BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unsupported model family 'bert'; arrakis supports: gpt2"):
        HookedAutoModel.from_pretrained(tmp_path)


# -- the cache of converted weights ------------------------------------------------------------


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv(disk_cache.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def counting_build(calls: list[int]):
    """A build that writes a real (tiny) converted model, counting its calls."""

    def build(folder):
        calls.append(1)
        disk_cache.save_converted(shared("llama").hf_model, word_tokenizer(), folder)

    return build


def test_a_cache_entry_is_built_once_and_reused(cache_root):
    calls: list[int] = []
    entry = disk_cache.cached_entry("abc", counting_build(calls))
    assert entry == cache_root / "gguf" / "abc" and disk_cache.entry_is_valid(entry)
    assert disk_cache.cached_entry("abc", counting_build(calls)) == entry
    assert len(calls) == 1
    model = HookedAutoModel.from_pretrained(entry)
    ids = prompt(512)
    assert torch.equal(model(ids)[0].logits, shared("llama")(ids)[0].logits)


@pytest.mark.parametrize("damage", ["truncate weights", "drop manifest", "edit config", "extra format"])
def test_a_corrupt_or_partial_cache_entry_is_rebuilt_never_used(cache_root, damage):
    calls: list[int] = []
    entry = disk_cache.cached_entry("abc", counting_build(calls))
    weights = entry / "model.safetensors"
    if damage == "truncate weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "drop manifest":
        (entry / disk_cache.MANIFEST).unlink()
    elif damage == "edit config":
        config = json.loads((entry / "config.json").read_text())
        (entry / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    else:
        manifest = json.loads((entry / disk_cache.MANIFEST).read_text())
        (entry / disk_cache.MANIFEST).write_text(json.dumps({**manifest, "format": 0}))
    assert not disk_cache.entry_is_valid(entry)
    assert disk_cache.cached_entry("abc", counting_build(calls)) == entry
    assert len(calls) == 2 and disk_cache.entry_is_valid(entry)


def test_a_build_that_fails_leaves_no_entry(cache_root):
    def broken(folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed"):
        disk_cache.cached_entry("abc", broken)
    assert not (cache_root / "gguf" / "abc").exists()
    assert list((cache_root / "gguf").iterdir()) == []  # the temporary folder is gone too


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(disk_cache.CACHE_ENV, str(tmp_path / "x"))
    assert disk_cache.cache_dir() == tmp_path / "x"
    monkeypatch.delenv(disk_cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert disk_cache.cache_dir() == tmp_path / "xdg" / "arrakis"


def test_a_gguf_is_parsed_once_per_conversion_and_reads_as_before():
    """The conversion shares one reader per file (transformers would parse it four times); the
    shared reader slices a plain ndarray, and every field and tensor reads as gguf's own reader
    reads it. gguf.GGUFReader is restored afterwards, also when the block raises."""
    import gguf
    import numpy as np

    from arrakis.models.loading import one_gguf_parse
    from arrakis.models.packaged import embedded_model_path

    path, original = embedded_model_path(), gguf.GGUFReader
    plain = original(path)
    with one_gguf_parse():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first  # one parse per file
        assert type(first.data) is np.ndarray and first.data.nbytes == plain.data.nbytes
    assert gguf.GGUFReader is original
    assert list(first.fields) == list(plain.fields)
    for name in plain.fields:
        for a, b in zip(first.fields[name].parts, plain.fields[name].parts, strict=True):
            assert np.array_equal(a, b), name
    assert len(plain.fields["tokenizer.ggml.tokens"].data) > 40_000  # the vocabulary was compared
    assert [t.name for t in first.tensors] == [t.name for t in plain.tensors]
    for a, b in zip(first.tensors[:5], plain.tensors[:5], strict=True):
        assert np.array_equal(a.data, b.data)
    with pytest.raises(RuntimeError), one_gguf_parse():
        raise RuntimeError("a failing conversion")
    assert gguf.GGUFReader is original
