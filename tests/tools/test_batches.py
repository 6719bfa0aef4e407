"""Tools on padded batches and datasets: each prompt counts as if it ran alone (left or right
padding, whatever the padding holds), a dataset's aggregate is a mean over its real tokens
whatever the batch size, and all layers come from one forward pass."""

from __future__ import annotations

import pytest
import torch

from arrakis.tools import WriteReadAnalyzer
from tests.conftest import build, shared
from tests.models.test_batching import padded, prompts

FAMILIES = ["llama", "gpt2", "gpt-neox", "mistral"]  # rotary, learned positions, partial rotary, a window


def forward_counter(model):
    """Counts the model's forward passes (a hook on the Hugging Face model); remove() after."""
    calls = []
    handle = model.hf_model.register_forward_hook(lambda *args: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("variant", FAMILIES)
def test_write_scores_of_a_padded_batch_are_the_token_weighted_mean_of_each_prompt_alone(variant, side):
    tool = WriteReadAnalyzer(shared(variant))
    rows = prompts(tool.cfg.d_vocab)
    u = torch.randn(tool.cfg.d_model, generator=torch.Generator().manual_seed(0))
    for direction in (None, u):
        alone = torch.stack([tool.write_scores(torch.tensor([row]), direction=direction) for row in rows])
        n = torch.tensor([len(row) for row in rows], dtype=torch.float32)
        expected = (alone * n[:, None, None]).sum(0) / n.sum()
        for seed in (1, 2):
            ids, mask = padded(rows, side, seed, tool.cfg.d_vocab)
            got = tool.write_scores(ids, mask, direction=direction)
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    ids, mask = padded(rows, side, 1, tool.cfg.d_vocab)
    selection = tool.identify_write_heads(1, input_ids=ids, attention_mask=mask)
    assert selection.method == "data" and selection.scores == pytest.approx(tool.write_scores(ids, mask)[1].tolist())


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("variant", FAMILIES)
def test_head_roles_of_a_padded_batch_weigh_each_prompt_by_its_real_tokens(variant, side):
    tool = WriteReadAnalyzer(shared(variant))
    rows = [r * 2 for r in prompts(tool.cfg.d_vocab)]  # repeated: duplicate and induction cells exist
    alone = [tool.head_roles(torch.tensor([row])) for row in rows]
    n = torch.tensor([len(row) for row in rows], dtype=torch.float32)
    for seed in (1, 2):
        ids, mask = padded(rows, side, seed, tool.cfg.d_vocab)
        roles = tool.head_roles(ids, attention_mask=mask)
        for role in ("previous_token", "duplicate_token", "induction"):
            expected = sum(r.scores(role) * k for r, k in zip(alone, n, strict=True)) / n.sum()
            torch.testing.assert_close(roles.scores(role), expected, atol=1e-4, rtol=1e-4)


def test_repeated_pad_tokens_give_no_duplicate_or_induction_score():
    """Pads repeat the same id; unmasked, a random model scored 0.29 on them."""
    tool = WriteReadAnalyzer(shared("llama"))
    rows = [list(range(10, 14)), list(range(20, 36))]  # no token repeats within a prompt
    ids, mask = padded(rows, "right", 0, 512)
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, 7))  # the same pad id everywhere
    roles = tool.head_roles(ids, attention_mask=mask)
    assert roles.scores("duplicate_token").abs().max() < 1e-6 and roles.scores("induction").abs().max() < 1e-6


@pytest.mark.parametrize("side", ["right", "left"])
def test_flow_of_a_prompt_in_a_padded_batch_equals_the_prompt_alone(side):
    tool = WriteReadAnalyzer(shared("llama"))
    rows = prompts(tool.cfg.d_vocab)
    ids, mask = padded(rows, side, 1, tool.cfg.d_vocab)
    b = 1
    offset = ids.shape[1] - len(rows[b]) if side == "left" else 0
    for method in ("attribution", "routes"):
        batched = tool.trace_information_flow(
            ids, src_pos=offset + 2, dst_pos=offset + 7, batch_index=b, attention_mask=mask, method=method
        )
        alone = tool.trace_information_flow(torch.tensor([rows[b]]), src_pos=2, dst_pos=7, method=method)
        assert (batched.src_pos, batched.dst_pos, batched.tokens) == (2, 7, rows[b])
        assert list(batched) == pytest.approx(list(alone), abs=1e-4)
        torch.testing.assert_close(batched.head_scores, alone.head_scores, atol=1e-4, rtol=1e-4)
    if side == "left":
        with pytest.raises(ValueError, match="dst_pos 0 is padding in row 1"):
            tool.trace_information_flow(ids, src_pos=offset, dst_pos=0, batch_index=b, attention_mask=mask)


def test_a_dataset_in_batches_gives_the_aggregate_of_one_batch():
    tool = WriteReadAnalyzer(shared("gpt2"))
    g = torch.Generator().manual_seed(0)
    dataset = [torch.randint(0, 512, (int(n),), generator=g).tolist() for n in torch.randint(3, 20, (64,), generator=g)]
    whole = tool.write_scores(dataset)
    torch.testing.assert_close(tool.write_scores(dataset, batch_size=8), whole, atol=1e-5, rtol=1e-5)
    # a mean over tokens, not over prompts: the longest prompts weigh most
    per_prompt = torch.stack([tool.write_scores([row]) for row in dataset])
    n = torch.tensor([len(row) for row in dataset], dtype=torch.float32)
    torch.testing.assert_close(whole, (per_prompt * n[:, None, None]).sum(0) / n.sum(), atol=1e-5, rtol=1e-5)
    roles_whole = tool.head_roles(dataset)
    roles_batched = tool.head_roles(iter(dataset), batch_size=8)  # any iterable
    torch.testing.assert_close(roles_batched.induction, roles_whole.induction, atol=1e-5, rtol=1e-5)
    assert roles_batched.n_sequences == 64


def test_all_layers_come_from_one_pass_and_are_reused():
    tool = WriteReadAnalyzer(build("llama"))
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(0))
    calls, handle = forward_counter(tool.model)
    try:
        scores = tool.write_scores(ids)
        assert scores.shape == (2, 4) and len(calls) == 1
        for layer in range(2):
            selection = tool.identify_write_heads(layer, input_ids=ids)
            assert selection.scores == pytest.approx(scores[layer].tolist())
        assert len(calls) == 1  # reused for the same prompts
        tool.head_roles()
        tool.circuits("K")
        tool.circuits("Q", writer_role="previous_token")
        assert len(calls) == 2  # one head-roles pass serves both circuits
    finally:
        handle.remove()
    with torch.no_grad():  # a changed model is measured again
        tool.model.hf_model.model.layers[0].self_attn.o_proj.weight.mul_(2)
    torch.testing.assert_close(tool.write_scores(ids)[0], 2 * scores[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"attention_mask": torch.ones(2, 5, dtype=torch.long)}, ValueError, "must come from the same batch"),
        ({"attention_mask": torch.ones(2, 9)}, TypeError, "got dtype torch.float32"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive int"),
    ],
)
def test_bad_batches_get_clear_errors(kwargs, error, message):
    tool = WriteReadAnalyzer(shared("llama"))
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(0))
    with pytest.raises(error, match=message):
        tool.write_scores(ids, **kwargs)
    with pytest.raises(error, match=message):
        tool.head_roles(ids, **kwargs)
