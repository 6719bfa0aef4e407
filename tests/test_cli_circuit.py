"""``arrakis circuit`` (every writer -> reader edge of a task scored, its circuits run exactly):
arguments refused at parse time without a model, and the numbers printed are the library's."""

from __future__ import annotations

import json
import re

import pytest
import torch

from arrakis import cli
from arrakis.cli import main, task_commands
from arrakis.models import edge_runs
from arrakis.tasks import induction
from arrakis.tools import WriteReadAnalyzer
from tests.conftest import shared
from tests.test_cli_patch import assert_refused_before_loading

PARSE_ERRORS = {
    "no task": (["circuit"], ["required: --task"]),
    "unknown task": (["circuit", "--task", "docstring"], ["argument --task", "ioi, induction"]),
    "unknown method": (
        ["circuit", "--task", "ioi", "--method", "exact"],
        ["argument --method", "integrated, attribution", "'exact'"],
    ),
    "steps 0": (["circuit", "--task", "ioi", "--steps", "0"], ["argument --steps", "positive int"]),
    "sizes not ints": (["circuit", "--task", "ioi", "--sizes", "10,many"], ["argument --sizes", "comma-separated"]),
    "negative size": (["circuit", "--task", "ioi", "--sizes", "-1"], ["argument --sizes", "ints >= 0"]),
    "verify 0": (["circuit", "--task", "ioi", "--verify", "0"], ["argument --verify", "positive int"]),
}


@pytest.mark.parametrize(("argv", "words"), PARSE_ERRORS.values(), ids=PARSE_ERRORS.keys())
def test_bad_circuit_arguments_are_refused_before_any_model_loads(argv, words, capsys, monkeypatch):
    assert_refused_before_loading(argv, words, capsys, monkeypatch)


def test_circuit_defaults_and_choices_are_the_librarys():
    args = cli.parse(["circuit", "--task", "ioi"])
    assert (args.method, args.steps, args.n, args.sizes, args.curve, args.verify) == (
        "integrated",
        5,
        8,
        (10, 100, 1000),
        False,
        None,
    )
    assert cli.CIRCUIT_METHODS == tuple(edge_runs.METHODS)


def test_circuit_prints_the_librarys_scores_and_exact_runs(capsys, monkeypatch):
    model = shared("llama")
    monkeypatch.setattr(task_commands, "load_model", lambda path: model)
    argv = ["circuit", "--task", "induction", "--n", "3", "--method", "attribution", "--top-k", "4"]
    argv += ["--sizes", "0,5,100000", "--verify", "3", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    task = induction(model, 3)
    expected = WriteReadAnalyzer(model).task_circuit(task, method="attribution", progress=False)
    n_edges = expected.n_edges
    # no edge kept: the corrupted run (0); every edge kept (the size is capped): the clean run (1)
    assert data["faithfulness"]["0"] == pytest.approx(0.0, abs=1e-5)
    assert data["faithfulness"][str(n_edges)] == pytest.approx(1.0, abs=1e-5)
    assert data["faithfulness"]["5"] == pytest.approx(expected.faithfulness(5), abs=1e-5)
    rows = data["verify"]["rows"]
    assert len(rows) == 3
    top = expected.top_edges(3)
    exact = expected.runner.run(torch.nn.functional.one_hot(torch.tensor([e.index for e in top]), n_edges).bool())
    for (name, score, printed_exact), edge, value in zip(rows, top, exact, strict=True):
        assert name == edge.name and score == pytest.approx(edge.score, abs=1e-6)
        assert printed_exact == pytest.approx(expected.clean_metric - float(value), abs=1e-5)

    assert main(argv[:-1]) == 0  # as text: the top 4 edges with their scores, the faithfulness lines
    text = capsys.readouterr().out
    printed = re.findall(r"^  (\S+ -> \S+(?: \([QKV]\))?)  ([-+.\d]+)$", text, re.M)
    assert [name for name, _ in printed] == [e.name for e in expected.top_edges(4)]
    for (_, score), edge in zip(printed, expected.top_edges(4), strict=True):
        assert float(score) == pytest.approx(edge.score, abs=2e-3)
    faithful = dict(re.findall(r"^  N = (\d+): ([-+.\d]+)$", text, re.M))
    assert float(faithful["0"]) == pytest.approx(0.0, abs=1e-3) and float(faithful[str(n_edges)]) == pytest.approx(1.0)
    assert all(f"note: {note}" in text for note in expected.notes)
