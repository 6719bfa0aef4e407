"""The write-read answers of a task are the means of the one-prompt answers, example by
example at its own positions (padding and all); bad combinations fail before any forward."""

from __future__ import annotations

import pytest
import torch

from arrakis.tasks import Task
from arrakis.tools import WriteReadAnalyzer
from tests.conftest import shared

CLEAN = [[5, 17, 9, 33, 2, 41, 7], [8, 12, 60, 3], [21, 4, 19, 88, 6]]  # three lengths: padded
ANSWER, FOIL, SRC, DST = [30, 31, 32], [40, 41, 42], [1, 0, 2], [-1, 2, 3]


def task(**overrides) -> Task:
    args = {"answer": ANSWER, "foil": FOIL, "src": SRC, "dst": DST, "name": "toy", **overrides}
    return Task(CLEAN, **args)


def example(t: Task, i: int) -> tuple[torch.Tensor, int, int]:
    """Example i's own prompt [1, its length], src and dst."""
    return t.clean_ids[i : i + 1, : int(t.lengths[i])], int(t.src[i]), int(t.dst[i])


@pytest.fixture(scope="module")
def tool() -> WriteReadAnalyzer:
    return WriteReadAnalyzer(shared("gpt2"))


def test_the_task_is_padded():
    t = task()
    assert t.attention_mask.sum(-1).tolist() == [7, 4, 5] and t.dst.tolist() == [6, 2, 3]


@pytest.mark.parametrize("with_foil", [True, False])
def test_logit_attribution_is_the_mean_of_each_examples(tool, with_foil):
    t = task() if with_foil else task(foil=None)
    mean = tool.logit_attribution(t)
    singles = []
    for i in range(t.n):
        ids, _, dst = example(t, i)
        singles.append(tool.logit_attribution(ids, ANSWER[i], dst, FOIL[i] if with_foil else None))
    expected = torch.stack([s.heads for s in singles]).mean(0)
    torch.testing.assert_close(mean.heads, expected, atol=1e-5, rtol=0)
    for key, value in mean.components.items():
        assert value == pytest.approx(sum(s.components[key] for s in singles) / 3, abs=1e-5)
    assert mean.logit == pytest.approx(sum(s.logit for s in singles) / 3, abs=1e-5)
    assert mean.total == pytest.approx(mean.logit, abs=1e-4)
    assert mean.n_examples == 3 and "mean over 3 examples of task toy" in mean.notes[0]
    assert mean.token is None and mean.pos is None  # the examples differ
    assert "3 examples" in mean.describe() and mean.to_dict()["n_examples"] == 3


def test_write_heads_of_a_task_are_those_of_the_mean_attribution(tool):
    t = task()
    selection = tool.identify_write_heads(1, input_ids=t)
    singles = [tool.logit_attribution(example(t, i)[0], ANSWER[i], int(t.dst[i]), FOIL[i]) for i in range(3)]
    expected = torch.stack([s.heads[1] for s in singles]).mean(0)
    torch.testing.assert_close(torch.tensor(selection.scores), expected, atol=1e-5, rtol=0)
    assert selection.method == "logit-attribution"


@pytest.mark.parametrize("method", ["attribution", "integrated"])
@pytest.mark.parametrize("metric", [None, "log_prob"])
def test_flow_is_the_mean_of_each_examples(tool, method, metric):
    t = task(metric=metric)
    flow = tool.trace_information_flow(t, method=method, steps=2)
    singles = []
    for i in range(t.n):
        ids, src, dst = example(t, i)
        foil = FOIL[i] if t.metric_name == "logit_diff" else None
        singles.append(
            tool.trace_information_flow(
                ids, src_pos=src, dst_pos=dst, target=ANSWER[i], foil=foil, method=method, steps=2
            )
        )
    expected = torch.stack([s.head_scores for s in singles]).mean(0)
    torch.testing.assert_close(flow.head_scores, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        torch.tensor(list(flow)), torch.tensor([list(s) for s in singles]).mean(0), atol=1e-5, rtol=0
    )
    assert flow.metric["clean"] == pytest.approx(sum(s.metric["clean"] for s in singles) / 3, abs=1e-5)
    assert flow.n_examples == 3 and flow.to_dict()["n_examples"] == 3 and "mean over 3" in flow.summary()
    assert flow.metric["kind"] == t.metric_name


def test_verified_flow_averages_the_exact_knockouts(tool):
    t = task()
    flow = tool.trace_information_flow(t, verify="all")
    singles = []
    for i in range(t.n):
        ids, src, dst = example(t, i)
        singles.append(
            tool.trace_information_flow(ids, src_pos=src, dst_pos=dst, target=ANSWER[i], foil=FOIL[i], verify="all")
        )
    exact = torch.tensor([[lf.exact for lf in s.layers] for s in singles]).mean(0)
    torch.testing.assert_close(torch.tensor([lf.exact for lf in flow.layers]), exact, atol=1e-5, rtol=0)
    assert flow.exact_values
    heads = torch.tensor([[[h.exact for h in lf.heads] for lf in s.layers] for s in singles]).mean(0)
    torch.testing.assert_close(
        torch.tensor([[h.exact for h in lf.heads] for lf in flow.layers]), heads, atol=1e-5, rtol=0
    )
    assert flow.all_layers["exact"] == pytest.approx(sum(s.all_layers["exact"] for s in singles) / 3, abs=1e-5)
    assert len(flow.verification["per_example"]) == 3


def test_a_custom_task_metric_is_each_examples_metric(tool):
    def metric(logits, index):
        return logits[:, 30] - logits[:, 31] * 0.5

    t = task(metric=metric, foil=None)
    flow = tool.trace_information_flow(t)
    singles = []
    for i in range(t.n):
        ids, src, dst = example(t, i)
        singles.append(tool.trace_information_flow(ids, src_pos=src, dst_pos=dst, metric=lambda x: x[30] - x[31] * 0.5))
    torch.testing.assert_close(
        flow.head_scores, torch.stack([s.head_scores for s in singles]).mean(0), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda tool, t: tool.logit_attribution(t, 30), "token= cannot go with a task"),
        (lambda tool, t: tool.logit_attribution(t, pos=2), "pos= cannot go with a task"),
        (lambda tool, t: tool.logit_attribution(t, foil=3), "foil= cannot go with a task"),
        (lambda tool, t: tool.identify_write_heads(0, input_ids=t, token=30), "token= cannot go with a task"),
        (lambda tool, t: tool.identify_write_heads(0, input_ids=t, direction=torch.ones(64)), "direction="),
        (lambda tool, t: tool.trace_information_flow(t, src_pos=1), "src_pos= cannot go with a task"),
        (lambda tool, t: tool.trace_information_flow(t, dst_token=3), "dst_token= cannot go with a task"),
        (lambda tool, t: tool.trace_information_flow(t, target=3), "target= cannot go with a task"),
        (lambda tool, t: tool.trace_information_flow(t, method="routes"), "'routes' is not averaged"),
        (lambda tool, t: tool.trace_information_flow(task(src=None)), "has no src positions"),
        (lambda tool, t: tool.trace_information_flow(task(src=[1, 2, 3])), "example 1: src 2 must come before dst 2"),
        (lambda tool, t: tool.trace_information_flow(task(answer=[30, 31, 999])), "outside the model's vocabulary"),
        (lambda tool, t: tool.logit_attribution(CLEAN[:1]), "token is required"),
    ],
)
def test_bad_combinations_fail_before_any_forward_pass(tool, monkeypatch, call, message):
    def no_forward(*args, **kwargs):
        raise AssertionError("a forward pass ran")

    monkeypatch.setattr(tool.model, "run_with_cache", no_forward)
    monkeypatch.setattr(tool.model, "run_with_hooks", no_forward, raising=False)
    monkeypatch.setattr(tool.model.hf_model, "forward", no_forward)
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(")):
        call(tool, task())
