"""Padded batches: each prompt's numbers at its real positions equal those of the prompt run
alone, for left and right padding, whatever the padding holds; bad masks get clear errors."""

from __future__ import annotations

import pytest
import torch

from arrakis import HookedAutoModel
from arrakis.models.batching import Tokens, iter_batches, pad, position_ids
from tests.conftest import shared
from tests.models.test_loading import word_tokenizer

# rotary (llama, gpt-neox partial), learned positions (gpt2, gpt-neo local attention), a sliding window
FAMILIES = ["llama", "gpt-neox", "gpt2", "gpt-neo", "mistral", "phi3", "qwen2-mqa"]
LENGTHS = (5, 9, 12)


def prompts(d_vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, d_vocab, (n,), generator=g).tolist() for n in LENGTHS]


def padded(rows: list[list[int]], side: str, seed: int, d_vocab: int) -> Tokens:
    """Padded with random ids (never the same twice), so nothing can depend on them."""
    ids, mask = pad(rows, 0, side)
    noise = torch.randint(0, d_vocab, ids.shape, generator=torch.Generator().manual_seed(seed))
    return Tokens(torch.where(mask.bool(), ids, noise), mask)


def real(mask: torch.Tensor, b: int) -> torch.Tensor:
    return mask[b].bool()


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("variant", FAMILIES)
def test_each_prompt_of_a_padded_batch_equals_the_prompt_alone(variant, side):
    model = shared(variant)
    rows = prompts(model.cfg.d_vocab)
    names = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_z", "blocks.1.attn.hook_pattern", "logits"]
    runs = []
    for seed in (1, 2):  # two different paddings
        ids, mask = padded(rows, side, seed, model.cfg.d_vocab)
        _, cache = model.run_with_cache(ids, names=names, attention_mask=mask)
        runs.append((mask, cache))
    for b, row in enumerate(rows):
        _, alone = model.run_with_cache(torch.tensor([row]), names=names)
        for mask, cache in runs:
            keep = real(mask, b)
            for name in ("blocks.1.hook_resid_post", "blocks.0.attn.hook_z", "logits"):
                torch.testing.assert_close(cache[name][b][keep], alone[name][0], atol=1e-4, rtol=1e-4)
            pattern = cache["blocks.1.attn.hook_pattern"][b][:, keep][:, :, keep]  # [head, real q, real k]
            torch.testing.assert_close(pattern, alone["blocks.1.attn.hook_pattern"][0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("side", ["right", "left"])
def test_knockout_in_a_padded_batch_equals_the_knockout_alone(side):
    model = shared("llama")
    rows = prompts(model.cfg.d_vocab)
    ids, mask = padded(rows, side, 3, model.cfg.d_vocab)
    b, (query, key) = 1, (7, 2)  # in the second prompt's own positions
    offset = int((~mask[b].bool()).nonzero().flatten().max()) + 1 if side == "left" and not mask[b].all() else 0
    knocked = model.run_with_attention_knockout(ids, {1: [(2, offset + query, offset + key)]}, attention_mask=mask)
    alone = model.run_with_attention_knockout(torch.tensor([rows[b]]), {1: [(2, query, key)]})
    torch.testing.assert_close(knocked.logits[b][real(mask, b)], alone.logits[0], atol=1e-4, rtol=1e-4)


def test_to_tokens_pads_a_list_and_keeps_one_string_as_it_was():
    model = HookedAutoModel.from_hf(shared("llama").hf_model, tokenizer=word_tokenizer())
    single = model.to_tokens("w3 w4")
    assert isinstance(single, torch.Tensor) and single.shape == (1, 2)
    ids, mask = model.to_tokens(["w3 w4", "w5"], padding_side="left")
    assert mask.tolist() == [[1, 1], [0, 1]] and ids.tolist() == [[3, 4], [2, 5]]  # padded with EOS (w2)
    tokens = model.to_tokens(["w3 w4", "w5"])
    assert isinstance(tokens, Tokens) and tokens.attention_mask.tolist() == [[1, 1], [1, 0]]
    with pytest.raises(ValueError, match="padding_side must be 'right' or 'left'"):
        model.to_tokens(["w3"], padding_side="middle")


def test_position_ids_follow_the_mask():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]


@pytest.mark.parametrize(
    ("mask", "error", "message"),
    [
        (torch.ones(2, 7, dtype=torch.long), ValueError, r"attention_mask has shape \[2, 7\] but input_ids \[2, 8\]"),
        (torch.ones(3, 8, dtype=torch.long), ValueError, "they must come from the same batch"),
        (torch.ones(2, 8), TypeError, "must hold 0/1 as bool or integers, got dtype torch.float32"),
        (torch.tensor([[1] * 8, [0] * 8]), ValueError, r"row\(s\) \[1\] have no real token"),
        (torch.full((2, 8), 2), ValueError, "only 0 \\(padding\\) and 1"),
        ("mask", TypeError, "attention_mask must be a tensor"),
    ],
)
def test_bad_masks_get_clear_errors_and_leave_the_model_as_it_was(mask, error, message):
    model = shared("llama")
    ids = torch.randint(0, 512, (2, 8), generator=torch.Generator().manual_seed(0))
    before = model(ids)[0].logits
    for call in (
        lambda: model.run_with_cache(ids, attention_mask=mask),
        lambda: model(ids, attention_mask=mask),
        lambda: model.run_with_attention_knockout(ids, {0: [(0, 5, 1)]}, attention_mask=mask),
    ):
        with pytest.raises(error, match=message):
            call()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.hf_model.modules())
    assert torch.equal(model(ids)[0].logits, before)


def test_datasets_come_in_padded_batches_of_the_size_asked():
    model = shared("gpt2")
    rows = [list(range(1, n + 1)) for n in (3, 5, 2, 4, 6)]
    batches = list(iter_batches(model, rows, batch_size=2))
    assert [ids.shape[0] for ids, _ in batches] == [2, 2, 1]
    assert batches[0][1].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batches[2][1] is None  # one prompt: nothing to pad
    ids = torch.arange(12).view(4, 3)
    assert [b.shape[0] for b, _ in iter_batches(model, ids, batch_size=3)] == [3, 1]
    with pytest.raises(ValueError, match="no prompts given"):
        list(iter_batches(model, [], batch_size=2))
