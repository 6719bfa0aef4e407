"""Bad input to the model itself: one clear error naming the argument and what is valid,
raised before any forward pass, leaving the model's parameters and hooks as they were."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from arrakis import HookedAutoModel
from tests.conftest import shared
from tests.models.test_loading import word_tokenizer

EOS = 2  # the word tokenizer's EOS ("w2"), its pad id


def with_tokenizer() -> HookedAutoModel:
    return HookedAutoModel.from_hf(shared("llama").hf_model, tokenizer=word_tokenizer())


@contextmanager
def refused_before_any_forward_pass(model: HookedAutoModel) -> Iterator[None]:
    """The body must raise without running the model, and leave no hook and no changed parameter."""
    before = {name: p.detach().clone() for name, p in model.hf_model.named_parameters()}
    calls = []
    handle = model.hf_model.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        yield
    finally:
        handle.remove()
    assert calls == [], "the model ran before the error"
    for module in model.hf_model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    for name, p in model.hf_model.named_parameters():
        assert torch.equal(p, before[name]), name


# -- padding without a mask ------------------------------------------------------------------


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_padded_batch_without_its_mask_is_refused_and_runs_with_it(side):
    model = with_tokenizer()
    ids, mask = model.to_tokens(["w3 w4 w5", "w6"], padding_side=side)
    assert (ids == EOS).sum() == 2  # the short row holds two pads
    with refused_before_any_forward_pass(model), pytest.raises(ValueError, match=f"{side}-padded.*attention_mask"):
        model.run_with_cache(ids)
    with refused_before_any_forward_pass(model), pytest.raises(ValueError, match="pass attention_mask"):
        model.run_with_attention_knockout(ids, {0: [(0, 2, 1)]})
    _, cache = model.run_with_cache(ids, names=["hook_embed"], attention_mask=mask)  # an explicit mask wins
    assert cache["hook_embed"].shape[:2] == (2, 3)


@pytest.mark.parametrize(
    "rows",
    [
        [[3, 4, EOS], [5, 6, 7]],  # one trailing pad id: a real end-of-turn token, as chat prompts end
        [[EOS, 3, 4], [EOS, 5, 6]],  # every row starts with it alike (a BOS that is also the pad id)
        [[EOS, EOS, 4]],  # a single row is never padding of a batch
    ],
)
def test_pad_ids_that_are_not_clearly_padding_are_read_as_tokens(rows):
    model = with_tokenizer()
    output, _ = model.run_with_cache(torch.tensor(rows), names=[])
    assert output.logits.shape[:2] == (len(rows), 3)


def test_without_a_tokenizer_no_pad_id_is_known_and_nothing_is_refused():
    model = shared("llama")
    assert model.tokenizer is None
    output, _ = model.run_with_cache(torch.tensor([[0, 0, 4], [5, 6, 7]]), names=[])
    assert output.logits.shape[:2] == (2, 3)


# -- knockouts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("knockout", "where"),
    [
        ({1: [(2, 2, 0), (2, 2, 1), (2, 2, 2)]}, "layer 1, head 2, query 2"),
        ({0: [(None, 1, 0), (3, 1, 1)]}, "layer 0, head 3, query 1"),  # every head's key 0, then head 3's key 1
        ({0: [(None, 0, 0)]}, "layer 0, every head, query 0"),  # the first query sees only itself
    ],
)
def test_a_knockout_that_blocks_every_key_of_a_query_is_refused(knockout, where):
    model = shared("llama")
    ids = torch.arange(3, 9)[None]
    with refused_before_any_forward_pass(model), pytest.raises(ValueError, match=f"{where}: every key .* blocked"):
        model.run_with_attention_knockout(ids, knockout)
    with refused_before_any_forward_pass(model), pytest.raises(ValueError, match=where):
        model.knockout_logits(ids, [{}, knockout], 4, progress=False)


def test_a_knockout_leaving_one_key_runs_and_padding_keys_do_not_count_as_left():
    model = shared("llama")
    ids = torch.arange(3, 9)[None]
    model.run_with_attention_knockout(ids, {1: [(2, 2, 0), (2, 2, 1)]})  # key 2 is left
    batch = torch.tensor([[3, 4, 5, 6], [0, 0, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    with refused_before_any_forward_pass(model), pytest.raises(ValueError, match="layer 0, head 1, query 3"):
        model.run_with_attention_knockout(batch, {0: [(1, 3, 2), (1, 3, 3)]}, attention_mask=mask)


def test_knockout_logits_with_no_knockout_is_refused_before_running():
    model = shared("llama")
    ids = torch.arange(3, 9)[None]
    with refused_before_any_forward_pass(model), pytest.raises(ValueError, match="knockouts is empty"):
        model.knockout_logits(ids, [])
    with refused_before_any_forward_pass(model), pytest.raises(TypeError, match=r"list of knockouts.*got dict"):
        model.knockout_logits(ids, {0: [(0, 5, 1)]})


# -- tokens ----------------------------------------------------------------------------------


def test_to_str_tokens_refuses_an_id_outside_the_vocabulary():
    model = with_tokenizer()
    with pytest.raises(ValueError, match=r"token id 99999 at \[0\] is out of range.*512 tokens \(0-511\)"):
        model.to_str_tokens([[99999]])
    with pytest.raises(ValueError, match=r"token id -1 at \[1\]"):
        model.to_str_tokens([3, -1])
    assert model.to_str_tokens([[3, 4]]) == ["w3", "w4"]


@pytest.mark.parametrize("bad", [123, None, b"w3"])
def test_to_tokens_names_what_it_accepts(bad):
    model = with_tokenizer()
    with pytest.raises(TypeError, match=f"a string or a non-empty list of strings, got {type(bad).__name__}"):
        model.to_tokens(bad)
