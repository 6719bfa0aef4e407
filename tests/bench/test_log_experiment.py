"""log_experiment and the experiment store: what a run records, how it reads back, and the errors."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from arrakis.bench import (
    AmbiguousVersionError,
    BaseInterpretabilityBench,
    ExperimentStore,
    VersionNotFoundError,
    to_json,
    version_hash,
)
from arrakis.bench import store as store_module
from arrakis.tools import HeadSelection, WriteReadAnalyzer
from tests.conftest import shared


@pytest.fixture
def bench(tmp_path):
    return BaseInterpretabilityBench(shared("gpt2"), save_dir=tmp_path / "runs")


def test_nothing_is_written_until_the_first_run_is_logged(bench, tmp_path):
    save_dir = tmp_path / "runs"

    @bench.log_experiment("first")
    def first(x):
        return x + 1

    assert bench.list_versions("first") == [] and bench.store.experiments() == {}
    with pytest.raises(VersionNotFoundError, match="experiment 'first' has no recorded runs"):
        bench.get_version("first", "abcdef")
    assert not save_dir.exists()
    assert first(1) == 2
    assert [p.name for p in save_dir.iterdir()] == ["experiments.sqlite"]  # the WAL files go on close
    with sqlite3.connect(save_dir / "experiments.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT experiment, args, result FROM runs").fetchall() == [("first", '{"x": 1}', "2")]


@pytest.mark.parametrize("tools_outside", [False, True])
def test_a_run_round_trips_its_arguments_and_result(bench, tools_outside):
    def experiment(layer, scale=0.5, *extra, write_read, tag="t", **options):
        selection = write_read.identify_write_heads(layer)
        return {
            "write_heads": selection,
            "pattern": torch.arange(6.0).view(2, 3),
            "pair": (layer, scale),
            "labels": {(0, 1): "L0H1"},
            "opaque": range(3),
        }

    # use_tools outside log_experiment hands the tool in as a keyword; inside, the tool never
    # reaches the logger. Either way only the caller's arguments are recorded.
    if tools_outside:
        logged = bench.use_tools("write_read")(bench.log_experiment("round_trip")(experiment))
    else:
        logged = bench.log_experiment("round_trip")(bench.use_tools("write_read")(experiment))
    returned = logged(0, 0.25, "a", "b", tag="x", window=torch.tensor([1, 2]))
    selection = WriteReadAnalyzer(bench.model).identify_write_heads(0)
    assert returned["write_heads"] == selection

    (version,) = bench.list_versions("round_trip")
    run = bench.get_version("round_trip", version)
    assert run.name == "round_trip" and run.version == version and len(version) == 64
    assert run.args == {"layer": 0, "scale": 0.25, "extra": ["a", "b"], "tag": "x", "options": {"window": [1, 2]}}
    assert run.result["write_heads"] == selection.to_dict()
    restored = HeadSelection.from_dict(run.result["write_heads"])
    assert restored == selection and restored.shares == selection.shares and restored.method == selection.method
    assert run.result["pattern"] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert run.result["pair"] == [0, 0.25]
    assert run.result["labels"] == {"(0, 1)": "L0H1"}
    assert run.result["opaque"] == {"__repr__": "range(0, 3)"}  # recorded as a repr, and marked so
    assert "def experiment(layer, scale=0.5, *extra, write_read" in run.source
    assert run.timestamp.endswith("+00:00")
    assert run.verify()


def test_defaults_are_recorded_and_a_bare_decorator_uses_the_function_name(bench):
    @bench.log_experiment
    def scaled(x, factor=3):
        return x * factor

    assert scaled(2) == 6 and scaled(2, factor=4) == 8
    runs = bench.store.runs("scaled")
    assert [(r.args, r.result) for r in runs] == [({"x": 2, "factor": 3}, 6), ({"x": 2, "factor": 4}, 8)]
    assert scaled.__name__ == "scaled" and scaled.experiment_name == "scaled"
    assert runs[0].source.startswith("    @bench.log_experiment\n    def scaled(x, factor=3):")


def test_arguments_are_recorded_as_the_caller_passed_them(bench):
    @bench.log_experiment("mutating")
    def mutating(values):
        values.append(99)
        return len(values)

    assert mutating([1, 2]) == 3
    assert bench.get_version("mutating", bench.list_versions("mutating")[0]).args == {"values": [1, 2]}


def test_every_run_gets_its_own_hash_over_everything_it_records(bench):
    @bench.log_experiment("same")
    def same(x):
        return x

    for _ in range(5):
        same(7)
    versions = bench.list_versions("same")
    assert len(versions) == 5 and len(set(versions)) == 5
    runs = bench.store.runs("same")
    assert [r.version for r in runs] == versions  # oldest first
    assert [r.timestamp for r in runs] == sorted(r.timestamp for r in runs)
    run = runs[0]
    fields = dict(name=run.name, source=run.source, args=run.args, result=run.result)
    fields |= dict(timestamp=run.timestamp, run_id=run.run_id)
    assert version_hash(**fields) == run.version
    for key, other in [("args", {"x": 8}), ("result", 8), ("source", None), ("timestamp", "2020-01-01T00:00:00")]:
        assert version_hash(**(fields | {key: other})) != run.version, key


def test_a_unique_prefix_finds_a_run(bench):
    @bench.log_experiment("prefixed")
    def prefixed(x):
        return x

    prefixed(1)
    prefixed(2)
    first, second = bench.list_versions("prefixed")
    assert bench.get_version("prefixed", first[:6]).result == 1
    assert bench.get_version("prefixed", second[:9].upper()).result == 2
    with pytest.raises(ValueError, match="at least 6 hex digits"):
        bench.get_version("prefixed", first[:5])
    with pytest.raises(ValueError, match="a version is a hex string"):
        bench.get_version("prefixed", "v1-" + first)


def test_an_ambiguous_prefix_says_so(tmp_path, monkeypatch):
    hashes = iter(["abcdef01" + "0" * 56, "abcdef02" + "0" * 56, "abcdef03" + "0" * 56])
    monkeypatch.setattr(store_module, "version_hash", lambda *args: next(hashes))
    store = ExperimentStore(tmp_path)
    for i in range(3):
        store.log("clash", {"i": i}, i)
    with pytest.raises(AmbiguousVersionError, match=r"prefix 'abcdef' matches 3 runs of experiment 'clash'") as info:
        store.get_version("clash", "ABCDEF")
    assert isinstance(info.value, KeyError) and "abcdef01" in str(info.value)
    assert store.get_version("clash", "abcdef02").args == {"i": 1}


def test_lookup_errors_name_what_the_store_holds(bench):
    @bench.log_experiment("alpha")
    def alpha():
        return 1

    @bench.log_experiment("beta")
    def beta():
        return 2

    alpha()
    alpha()
    beta()
    with pytest.raises(KeyError, match=r"no version '123456' of experiment 'alpha': it has 2 recorded versions"):
        bench.get_version("alpha", "123456")
    with pytest.raises(
        KeyError, match=r"experiment 'gamma' has no recorded runs .*\(recorded experiments: 'alpha', 'beta'"
    ):
        bench.get_version("gamma", "123456")
    beta_version = bench.list_versions("beta")[0]
    with pytest.raises(KeyError, match=f"'{beta_version}' is a version of experiment 'beta'"):
        bench.get_version("alpha", beta_version)
    assert bench.store.experiments() == {"alpha": 2, "beta": 1}


def test_a_failing_run_records_nothing(bench, tmp_path):
    @bench.log_experiment("fragile")
    def fragile(x):
        if x < 0:
            raise ValueError("negative")
        return x

    with pytest.raises(ValueError, match="negative"):
        fragile(-1)
    assert not (tmp_path / "runs").exists()
    assert fragile(1) == 1
    with pytest.raises(ValueError, match="negative"):
        fragile(-2)
    assert [r.args for r in bench.store.runs("fragile")] == [{"x": 1}]


def test_export_writes_one_json_line_per_run(bench, tmp_path):
    @bench.log_experiment("exported")
    def exported(x):
        return {"double": 2 * x}

    for x in range(3):
        exported(x)
    path = tmp_path / "exported.jsonl"
    assert bench.store.export("exported", path) == 3
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["version"] for line in lines] == bench.list_versions("exported")
    assert [line["result"] for line in lines] == [{"double": 0}, {"double": 2}, {"double": 4}]
    assert set(lines[0]) == {"name", "version", "args", "result", "source", "timestamp", "run_id"}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    with pytest.raises(KeyError, match="experiment 'missing' has no recorded runs"):
        bench.store.export("missing", tmp_path / "missing.jsonl")
    assert not (tmp_path / "missing.jsonl").exists()


def test_to_json_handles_the_library_results_and_plain_values():
    nested = [1]
    nested.append(nested)
    assert to_json({"t": torch.tensor(2.5), "s": {3, 1, 2}, "n": None, "b": True}) == {
        "t": 2.5,
        "s": [1, 2, 3],
        "n": None,
        "b": True,
    }
    assert to_json(nested) == [1, {"__repr__": "<cycle: list>"}]
    scores = WriteReadAnalyzer(shared("gpt2")).identify_write_heads(1)
    assert to_json(scores) == scores.to_dict()
    assert json.loads(json.dumps(to_json({"x": scores}))) == {"x": scores.to_dict()}
