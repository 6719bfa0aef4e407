"""Bad input at load time: one clear line naming the argument (or the file) and what is valid,
raised before any weights are read; and loads that print nothing unless asked."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from transformers.utils import logging as hf_logging

from arrakis import HookedAutoConfig, HookedAutoModel, ModelLoadError, load_model
from arrakis.models import loading
from tests.conftest import shared


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A tiny saved llama: config.json and model.safetensors."""
    path = tmp_path_factory.mktemp("llama")
    shared("llama").hf_model.save_pretrained(path)
    return path


@pytest.fixture
def no_weights_read(monkeypatch):
    """Reading any weights fails the test: the argument must be refused before."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights were read before the bad argument was refused")

    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", refuse)


def test_a_truncated_safetensors_file_read_weights_only_is_named(folder, tmp_path):
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # the header's length says more than there is
    with pytest.raises(ModelLoadError, match=rf"cannot read model file {weights}: it is truncated or corrupt"):
        HookedAutoModel.from_pretrained(tmp_path, weights_only=True)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
def test_a_device_this_machine_lacks_is_refused_with_the_ones_it_has(device, folder, monkeypatch, no_weights_read):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU build, whatever runs the test
    with pytest.raises(ValueError, match=r"device 'cuda(:0)?' is not available on this machine; it has: cpu"):
        HookedAutoModel.from_pretrained(folder, device=device)
    with pytest.raises(ValueError, match="it has: cpu"):
        load_model(folder, device=device)


def test_an_unknown_device_name_is_refused_with_the_devices_there_are(folder, no_weights_read):
    with pytest.raises(ValueError, match=r"device 'gpu' is not a device name; this machine has: cpu"):
        HookedAutoModel.from_pretrained(folder, device="gpu")
    with pytest.raises(TypeError, match=r"device must be a str or torch.device"):
        HookedAutoModel.from_pretrained(folder, device=["cpu"])


def test_a_path_of_the_wrong_kind_names_the_kinds_accepted():
    with pytest.raises(TypeError, match=r"path must be a str or os.PathLike \(a folder .*\), got NoneType"):
        HookedAutoModel.from_pretrained(None)
    with pytest.raises(TypeError, match=r"path must be a str or os.PathLike .* got int"):
        HookedAutoModel.from_gguf(3)
    with pytest.raises(TypeError, match=r"name_or_path must be None .*smollm2.*gemma3-270m.* got int"):
        load_model(123)


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.complex64])
def test_a_dtype_that_cannot_hold_weights_lists_the_valid_ones(dtype, folder, no_weights_read):
    with pytest.raises(ValueError, match=rf"dtype {dtype} .*: use one of torch.float32, torch.float16, torch.bfloat16"):
        HookedAutoModel.from_pretrained(folder, dtype=dtype)
    with pytest.raises(ValueError, match=r"use one of torch.float32"):
        HookedAutoModel.from_pretrained(folder, dtype=dtype, weights_only=True)


@pytest.mark.parametrize("dtype", ["int8", 16, None])
def test_a_dtype_that_is_not_a_dtype_lists_the_valid_ones(dtype, folder, no_weights_read):
    with pytest.raises(TypeError, match=r"dtype must be a torch dtype, one of torch.float32, torch.float16"):
        load_model(folder, dtype=dtype)


def test_a_dtype_named_by_a_string_is_read_as_that_dtype(folder):
    model = HookedAutoModel.from_pretrained(folder, dtype="bfloat16")
    assert next(model.hf_model.parameters()).dtype is torch.bfloat16


def test_heads_that_do_not_split_d_model_are_refused_by_arrakis():
    with pytest.raises(
        ValueError, match=r"d_model 256 is not divisible by n_heads 7: n_heads must be one of 1, 2, 4, 8,"
    ):
        HookedAutoConfig("llama", n_heads=7)
    with pytest.raises(ValueError, match=r"d_model 256 is not divisible by n_heads 7") as info:
        HookedAutoConfig("llama", n_heads=7, n_kv_heads=7, d_head=32)  # llama's config wants it even so
    assert type(info.value) is ValueError  # not huggingface_hub's validator error
    with pytest.raises(ValueError, match=r"d_model 256 is not divisible by n_heads 6"):
        HookedAutoConfig("gpt2", n_heads=6)  # gpt2's config would accept it, its attention not
    with pytest.raises(
        ValueError, match=r"n_heads 8 is not a multiple of n_kv_heads 3: n_kv_heads must be one of 1, 2, 4, 8"
    ):
        HookedAutoConfig("qwen2", n_kv_heads=3)


# -- quiet loads ---------------------------------------------------------------------------------


def test_loads_print_nothing_unless_asked(folder, capfd):
    load_model(folder)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    load_model(folder, progress=True)
    assert "Loading weights" in capfd.readouterr().err


def test_a_quiet_load_restores_the_bars_and_the_log_level_even_when_it_fails(folder, tmp_path, caplog):
    before = (hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity())
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(b"\x08" + bytes(20))
    with pytest.raises(ModelLoadError):
        HookedAutoModel.from_pretrained(tmp_path)
    assert (hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()) == before
    hf_logging.disable_progress_bar()
    try:
        with loading.transformers_output(progress=False):
            assert hf_logging.get_verbosity() == logging.ERROR
        assert not hf_logging.is_progress_bar_enabled()  # a user's choice to keep them off is kept
    finally:
        if before[0]:
            hf_logging.enable_progress_bar()


def test_the_gguf_readers_own_bar_is_silenced_too(capfd):
    """transformers reads GGUF files behind a plain tqdm bar that its progress switch does not reach."""
    from transformers import modeling_gguf_pytorch_utils as gguf_reader

    original = gguf_reader.tqdm
    with loading.transformers_output(progress=False):
        list(gguf_reader.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."))
    assert capfd.readouterr().err == ""
    assert gguf_reader.tqdm is original


def test_options_that_a_weights_only_or_gguf_load_would_ignore_are_refused(folder, tmp_path, no_weights_read):
    with pytest.raises(ValueError, match="device and device_map do not apply with weights_only=True"):
        HookedAutoModel.from_pretrained(folder, weights_only=True, device="cpu")
    with pytest.raises(ValueError, match="device and device_map do not apply with weights_only=True"):
        HookedAutoModel.from_pretrained(folder, weights_only=True, device_map="auto")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ValueError, match=r"weights_only=True does not apply to a \.gguf file"):
        HookedAutoModel.from_pretrained(gguf, weights_only=True)
    with pytest.raises(ValueError, match=r"device_map does not apply to a \.gguf file"):
        HookedAutoModel.from_pretrained(gguf, device_map="auto")
