"""Tasks on tiny models: construction checks (before any forward pass), padding, the metrics
against hand computations, plain runs against each example run alone, and the generators'
structure. Strings go through a small word-level tokenizer defined here."""

from __future__ import annotations

import pytest
import torch

from arrakis import HookedAutoModel
from arrakis.tasks import Task, induction, ioi
from tests.conftest import shared

NAMES = ["Mary", "John", "Sam", "Anna", "Tom", "Kate", "Paul", "Lisa"]
WORDS = ["When", "and", "went", "to", "the", "store", ",", "gave", "a", "drink", "park", "ball", "Then", "."]


class WordTokenizer:
    """Words it knows are one token (" word" after the first); other words one token per letter."""

    pad_token_id, eos_token_id, bos_token_id = 0, None, None
    all_special_ids = (0,)

    def __init__(self) -> None:
        pieces = ["<pad>"] + [w for word in WORDS + NAMES for w in (word, " " + word)]
        pieces += [c for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"]
        self.ids = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
        self.pieces = {i: p for p, i in self.ids.items()}

    def __len__(self) -> int:
        return len(self.ids)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        out = []
        for i, word in enumerate(text.replace(",", " ,").replace(".", " .").split()):
            key = " " + word if (i > 0 or text.startswith(" ")) and word not in ",." else word
            out += [self.ids[key]] if key in self.ids else [self.ids[c] for c in word]
        return out

    def decode(self, ids: list[int]) -> str:
        return "".join(self.pieces[i] for i in ids)


@pytest.fixture(scope="module")
def model() -> HookedAutoModel:
    return HookedAutoModel.from_hf(shared("gpt2").hf_model, WordTokenizer())


def no_forward(model: HookedAutoModel) -> list[int]:
    calls: list[int] = []
    model.hf_model.register_forward_pre_hook(lambda *a: calls.append(1))
    return calls


# -- construction ---------------------------------------------------------------------------------


def test_id_rows_are_right_padded_with_a_mask_and_dst_defaults_to_each_last_token():
    task = Task([[5, 6, 7, 8], [9, 10]], [[5, 6, 1, 8], [9, 2]], answer=[3, 4], foil=[11, 12])
    assert task.clean_ids.tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert task.corrupted_ids.tolist() == [[5, 6, 1, 8], [9, 2, 0, 0]]
    assert task.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert task.dst.tolist() == [3, 1] and task.src is None
    assert task.answer.tolist() == [3, 4] and task.foil.tolist() == [11, 12]
    assert len(task) == task.n == 2 and task.metric_name == "logit_diff"
    assert [i.tolist() for i in task.batches(1)] == [[0], [1]]


def test_strings_tokens_and_positions_per_example(model):
    clean = ["When Mary and John went to the store , John gave a drink to", "Then Anna and Tom went to the park"]
    task = Task(clean, answer=" Mary", foil=[" John", " Anna"], src=[" Mary", 1], dst=[" to", -2], model=model)
    # dst: the last " to" of the first prompt (its last token); -2: the second prompt's " the"
    assert task.dst.tolist() == [13, 6]
    assert task.src.tolist() == [1, 1]
    assert task.answer.tolist() == [model.tokenizer.ids[" Mary"]] * 2
    assert task.metric_name == "logit_diff" and task.corrupted_ids is None


def test_src_token_is_its_last_occurrence_before_dst(model):
    prompt = "When John and John went to the store , John gave"
    task = Task([prompt], answer=" Mary", src=" John", dst=" store", model=model)
    assert task.dst.tolist() == [7] and task.src.tolist() == [3]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"corrupted": [[1, 2, 3], [4, 5, 6]]}, "example 1: clean has 2 tokens, corrupted 3"),
        ({"corrupted": [[1, 2, 3]]}, "clean has 2 examples but corrupted 1"),
        ({"answer": " Mariana"}, r"example 0: answer ' Mariana' is 7 tokens"),
        ({"answer": [7, 8, 9]}, "answer has 3 entries but the task has 2 examples"),
        ({"foil": [6, 7]}, "example 1: the foil is the answer's token"),
        ({"dst": " Mary"}, "example 0: dst token ' Mary'"),
        ({"dst": [0, 2]}, "example 1: dst 2 is out of range: the clean prompt has 2 tokens"),
        ({"src": [0, 2]}, "example 1: src 2 is out of range"),
        ({"metric": "kl"}, "unknown metric 'kl'"),
    ],
)
def test_bad_tasks_are_refused_by_name_before_any_forward(model, kwargs, message):
    calls = no_forward(model)
    args = {"clean": [[1, 2, 3], [4, 5]], "answer": [5, 7], "model": model, **kwargs}
    with pytest.raises(ValueError, match=message):
        Task(**args)
    assert calls == []


def test_empty_tasks_strings_without_a_model_and_logit_diff_without_foil_are_refused():
    with pytest.raises(ValueError, match="clean is empty"):
        Task([], answer=1)
    with pytest.raises(ValueError, match="pass model="):
        Task(["When Mary"], answer=1)
    with pytest.raises(ValueError, match="needs a foil"):
        Task([[1, 2]], answer=1, metric="logit_diff")
    with pytest.raises(ValueError, match="no model"):
        Task([[1, 2]], answer=1).clean_metric  # noqa: B018


# -- metrics and runs -----------------------------------------------------------------------------


def test_the_metrics_read_each_examples_own_answer_and_foil():
    logits = torch.tensor([[0.0, 1.0, 2.0, 4.0], [3.0, 0.5, 0.0, 1.0]])
    task = Task([[1], [2], [3]], answer=[0, 1, 3], foil=[2, 2, 0])
    index = torch.tensor([2, 0])  # row 0 is example 2, row 1 example 0
    assert torch.allclose(task.metric(logits, index), torch.tensor([4.0 - 0.0, 3.0 - 0.0]))
    log_p = Task([[1], [2], [3]], answer=[0, 1, 3], metric="log_prob")
    expected = torch.stack([logits[0].log_softmax(-1)[3], logits[1].log_softmax(-1)[0]])
    assert torch.allclose(log_p.metric(logits, index), expected)
    custom = Task([[1], [2], [3]], answer=[0, 1, 3], metric=lambda lg, i: lg[:, 0] * 10 + i)
    assert torch.allclose(custom.metric(logits, index), torch.tensor([2.0, 30.0]))


def test_padded_runs_give_each_example_its_numbers_alone():
    model = shared("llama")
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(1, 512, (length,), generator=g).tolist() for length in (7, 4, 9, 5)]
    corrupted = [[(t * 7) % 511 + 1 for t in row] for row in rows]
    task = Task(rows, corrupted, answer=[3, 4, 5, 6], foil=[7, 8, 9, 10], dst=[-1, -2, 4, -1], model=model)
    expected = []
    for i, row in enumerate(rows):  # each example alone, no padding
        with torch.no_grad():
            logits = model.hf_model(torch.tensor([row])).logits[0, int(task.dst[i])]
        expected.append(logits[3 + i] - logits[7 + i])
    values = task.values(batch_size=3)
    assert torch.allclose(values, torch.stack(expected), atol=1e-4)
    assert task.clean_metric == pytest.approx(float(torch.stack(expected).mean()), abs=1e-4)
    corrupted_values = task.values(which="corrupted")
    gap = task.clean_metric - task.corrupted_metric
    assert gap == pytest.approx(float(values.mean() - corrupted_values.mean()), abs=1e-4)
    assert torch.allclose(task.normalise(torch.tensor([gap, gap / 2])), torch.tensor([1.0, 0.5]))
    top = [model.hf_model(torch.tensor([row])).logits[0, int(task.dst[i])].argmax() for i, row in enumerate(rows)]
    task_top = Task(rows, answer=[int(t) for t in top[:2]] + [1, 2], dst=task.dst.tolist(), model=model)
    hits = 2 + sum(int(top[i]) == a for i, a in ((2, 1), (3, 2)))
    assert task_top.accuracy() == pytest.approx(hits / 4)


def test_which_must_name_a_run_and_the_corrupted_run_must_exist():
    task = Task([[1, 2]], answer=3, model=shared("gpt2"))
    with pytest.raises(ValueError, match="no corrupted prompts"):
        task.values(which="corrupted")
    with pytest.raises(ValueError, match="which must be"):
        task.values(which="dirty")


# -- generators -----------------------------------------------------------------------------------


def test_induction_repeats_the_first_half_and_the_twin_changes_only_it():
    model = shared("gpt2")  # no tokenizer: any id, no BOS
    task = induction(model, n=6, seq_len=8, seed=3)
    assert task.metric_name == "log_prob" and task.foil is None
    for i in range(task.n):
        row = task.clean_ids[i, : int(task.lengths[i])].tolist()
        twin = task.corrupted_ids[i, : int(task.lengths[i])].tolist()
        first, second = row[:8], row[8:]
        assert second == first[: len(second)] and 4 <= len(second) - 1 <= 6  # cut at j in [4, 6]
        assert len(set(first)) == 8 and not set(twin[:8]) & set(first)  # distinct; twin's first half new
        assert twin[8:] == second
        dst, src = int(task.dst[i]), int(task.src[i])
        assert dst == len(row) - 1 and src == first.index(row[dst]) + 1
        assert row[src] == int(task.answer[i])
    again = induction(model, n=6, seq_len=8, seed=3)
    assert torch.equal(again.clean_ids, task.clean_ids) and torch.equal(again.corrupted_ids, task.corrupted_ids)
    assert not torch.equal(induction(model, n=6, seq_len=8, seed=4).clean_ids, task.clean_ids)


def test_ioi_names_the_indirect_object_and_its_twin_replaces_the_repeated_subject(model):
    task = ioi(model, n=6, seed=1)
    tok = model.tokenizer
    names = {tok.ids[" " + name] for name in NAMES}
    for i in range(task.n):
        row, twin = task.clean_ids[i].tolist(), task.corrupted_ids[i].tolist()
        io, s = int(task.answer[i]), int(task.foil[i])
        assert {io, s} <= names and io != s
        assert row.count(io) == 1 and row.count(s) == 2 and int(task.src[i]) == row.index(io)
        assert row[int(task.dst[i])] == tok.ids[" to"]
        changed = [p for p in range(len(row)) if row[p] != twin[p]]
        assert len(changed) == 1 and row[changed[0]] == s and twin[changed[0]] in names - {io, s}
        assert row.index(io) < row.index(s) if i % 2 == 0 else row.index(s) < row.index(io)
    assert torch.equal(ioi(model, n=6, seed=1).clean_ids, task.clean_ids)


def test_ioi_needs_a_tokenizer_and_enough_one_token_names():
    with pytest.raises(ValueError, match="no tokenizer"):
        ioi(shared("gpt2"))
    with pytest.raises(ValueError, match="n must be a positive int"):
        induction(shared("gpt2"), n=0)
