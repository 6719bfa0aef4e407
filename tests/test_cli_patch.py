"""``arrakis patch`` (activation patching of every head on a task) and the task part of
``arrakis analyze``: arguments refused at parse time without torch, the numbers printed are the
library's, and on the embedded model the IOI heads come out on top."""

from __future__ import annotations

import json
import re

import pytest
import torch

import arrakis.tasks
from arrakis import cli
from arrakis.cli import commands, main, task_commands
from arrakis.models import head_channels
from arrakis.tasks import induction
from arrakis.tools import WriteReadAnalyzer, patching
from tests.conftest import shared
from tests.test_cli_metadata import fresh

NAME_MOVERS = {(23, 3), (29, 1), (20, 0), (17, 4), (23, 0)}  # the embedded model's top IOI heads (z, noising)


def refuse(*args, **kwargs):
    raise AssertionError("a model was loaded")


# -- parse time: no model, no torch ----------------------------------------------------------------

PARSE_ERRORS = {
    "no task": (["patch"], ["required: --task"]),
    "unknown task": (["patch", "--task", "greater-than"], ["argument --task", "ioi, induction", "'greater-than'"]),
    "unknown channel": (["patch", "--task", "ioi", "--channel", "w"], ["argument --channel", "z, q, k, v, pattern"]),
    "n 0": (["patch", "--task", "ioi", "--n", "0"], ["argument --n", "positive int", "'0'"]),
    "n not an int": (["patch", "--task", "ioi", "--n", "many"], ["argument --n", "positive int"]),
    "negative seed": (["patch", "--task", "ioi", "--seed", "-1"], ["argument --seed", "int >= 0", "'-1'"]),
    "unknown method": (
        ["patch", "--task", "ioi", "--method", "gradient"],
        ["argument --method", "exact, attribution, integrated", "'gradient'"],
    ),
    "unknown direction": (["patch", "--task", "ioi", "--direction", "up"], ["argument --direction", "noising"]),
    "positions as ints": (["patch", "--task", "ioi", "--positions", "3"], ["argument --positions", "all, dst"]),
    "top-k 0": (["patch", "--task", "ioi", "--top-k", "0"], ["argument --top-k", "positive int"]),
    "steps 0": (["patch", "--task", "ioi", "--steps", "0"], ["argument --steps", "positive int"]),
    "missing model": (["patch", "--task", "ioi", "--model", "/nonexistent"], ["argument --model", "no model at"]),
    "unknown option": (["patch", "--task", "ioi", "--layer", "3"], ["unrecognized arguments: --layer", "--channel"]),
}


def assert_refused_before_loading(argv, words, capsys, monkeypatch) -> None:
    """``arrakis argv`` exits 2 with one line naming ``words``, and no model is loaded."""
    monkeypatch.setattr(task_commands, "load_model", refuse)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("arrakis: error: "), err
    for word in words:
        assert word in err, err


@pytest.mark.parametrize(("argv", "words"), PARSE_ERRORS.values(), ids=PARSE_ERRORS.keys())
def test_bad_patch_arguments_are_refused_before_any_model_loads(argv, words, capsys, monkeypatch):
    assert_refused_before_loading(argv, words, capsys, monkeypatch)


def test_bad_patch_arguments_are_refused_without_importing_torch(tmp_path):
    outcome, result = fresh("patch", "--task", "ioi", "--channel", "resid", cwd=tmp_path)
    assert outcome == {"exit": 2, "heavy": []}, result.stderr
    assert "argument --channel" in result.stderr


def test_patch_defaults_and_choices_are_the_librarys():
    args = cli.parse(["patch", "--task", "IOI"])
    assert (args.task, args.channel, args.n, args.seed, args.method) == ("ioi", "z", 8, 0, "exact")
    assert (args.direction, args.positions, args.steps, args.top_k) == ("noising", "all", 5, 10)
    assert cli.CHANNELS == tuple(head_channels.CHANNELS)
    assert cli.DIRECTIONS == tuple(head_channels.DIRECTIONS)
    assert cli.PATCH_METHODS == tuple(patching.METHODS)
    assert all(callable(getattr(arrakis.tasks, name)) for name in cli.TASKS)


# -- the numbers printed are the library's (a tiny model: induction, it has no tokenizer) ----------


def test_patch_passes_its_arguments_to_the_library(capsys, monkeypatch):
    model = shared("llama")
    monkeypatch.setattr(task_commands, "load_model", lambda path: model)
    argv = ["patch", "--task", "induction", "--n", "3", "--seed", "2", "--channel", "v"]
    argv += ["--direction", "denoising", "--positions", "dst", "--top-k", "3", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    task = induction(model, 3, seq_len=30, seed=2)
    expected = WriteReadAnalyzer(model).patch_heads(task, "v", positions="dst", method="exact", direction="denoising")
    assert (data["channel"], data["direction"], data["positions"], data["method"]) == ("v", "denoising", "dst", "exact")
    assert data["n"] == 3 and data["seed"] == 2 and 0 <= data["accuracy"] <= 1
    assert data["accuracy"] == pytest.approx(task.accuracy(model))
    torch.testing.assert_close(torch.tensor(data["scores"]), expected.scores, atol=1e-5, rtol=0)
    assert expected.scores.abs().max() > 1e-3  # something to compare
    assert data["clean_metric"] == pytest.approx(task.clean_metric, abs=1e-5)
    assert [tuple(h) for h in data["top_heads"]] == expected.top_heads(3)

    assert main(argv[:-1]) == 0  # the same as text: the task line, the top 3 heads and the notes
    text = capsys.readouterr().out
    assert f"task induction, 3 examples: accuracy {task.accuracy(model):.0%}" in text
    assert "head patching: denoising v at dst (exact), induction, n=3" in text
    layer, head = expected.top_heads(1)[0]
    assert f"  L{layer}H{head}: {float(expected.scores[layer, head]):+.3f}" in text
    assert len(re.findall(r"^  L\d+H\d+: ", text, re.M)) == 3
    assert all(f"note: {note}" in text for note in expected.notes)


def test_ioi_on_a_model_without_a_tokenizer_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(task_commands, "load_model", lambda path: shared("llama"))
    assert main(["patch", "--task", "ioi", "--n", "2"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and "tokenizer" in err, err


def test_analyze_ends_with_the_task_section_whose_numbers_are_the_librarys():
    model = shared("llama")
    text = commands.analyze(model)
    section = text[text.index("a task: which heads does induction need?") :]
    task = induction(model, 8, seq_len=30)
    estimate = WriteReadAnalyzer(model).patch_heads(task, "z", method="attribution")
    exact = WriteReadAnalyzer(model).patch_heads(task, "z", method="exact")
    assert f"clean {task.clean_metric:.3f}, corrupted {task.corrupted_metric:.3f}" in section
    rows = re.findall(r"^  L(\d+)H(\d+): ([-+.\d]+) \(.*\)   exact ([-+.\d]+)$", section, re.M)
    assert [(int(layer), int(head)) for layer, head, _, _ in rows] == estimate.top_heads(5)
    for layer, head, printed_estimate, printed_exact in rows:
        assert float(printed_estimate) == pytest.approx(float(estimate.scores[int(layer), int(head)]), abs=2e-3)
        assert float(printed_exact) == pytest.approx(float(exact.scores[int(layer), int(head)]), abs=2e-3)


# -- the embedded model --------------------------------------------------------------------------


@pytest.mark.slow
def test_attribution_patching_of_ioi_finds_the_name_movers(capsys):
    assert main(["patch", "--task", "ioi", "--n", "2", "--method", "attribution", "--top-k", "5", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["accuracy"] >= 0.5 and data["clean_metric"] > data["corrupted_metric"] + 1
    assert tuple(data["top_heads"][0]) in NAME_MOVERS
    assert len({tuple(h) for h in data["top_heads"]} & NAME_MOVERS) >= 3
    layer, head = data["top_heads"][0]
    gap = data["clean_metric"] - data["corrupted_metric"]
    assert data["normalised"][layer][head] == pytest.approx(data["scores"][layer][head] / gap, rel=1e-4)
    assert any("attribution estimates" in note for note in data["notes"])


@pytest.mark.slow
def test_exact_patching_of_ioi_prints_the_task_and_its_top_heads(capsys):
    assert main(["patch", "--task", "ioi", "--n", "2", "--top-k", "5"]) == 0
    text = capsys.readouterr().out
    assert "task ioi, 2 examples: accuracy 100%" in text and "noising z at all (exact), ioi, n=2" in text
    rows = re.findall(r"^  L(\d+)H(\d+): ([-+.\d]+) ", text, re.M)
    assert len(rows) == 5
    assert len({(int(layer), int(head)) for layer, head, _ in rows} & NAME_MOVERS) >= 3
    assert float(rows[0][2]) > 0.5  # a name mover's output carries much of the logit difference
    assert "estimates" not in text  # exact: no estimate note
