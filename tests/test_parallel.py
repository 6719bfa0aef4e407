"""Data parallelism (``arrakis.models.parallel``): two processes launched by torchrun (gloo on
the CPU) each take their share of the examples, and both return what one process computes
alone: dataset statistics, head roles, head patching (exact and attribution), edge scores,
exact edge runs and the means of logit attribution and information flow over a task's examples
(``tests/parallel_worker.py`` computes them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from arrakis.models import parallel
from tests.parallel_worker import results

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("n", "size"), [(5, 2), (7, 3), (2, 4), (0, 3), (9, 1), (16, 4)])
def test_shard_covers_every_example_once_in_order_with_sizes_within_one(n: int, size: int) -> None:
    ranges = [parallel.shard(n, rank, size) for rank in range(size)]
    assert [i for r in ranges for i in r] == list(range(n))
    lengths = [len(r) for r in ranges]
    assert max(lengths) - min(lengths) <= 1
    assert all(r.step == 1 for r in ranges)


def test_shard_refuses_a_rank_outside_the_world() -> None:
    with pytest.raises(ValueError, match="0 <= rank < size"):
        parallel.shard(4, 2, 2)


def test_one_process_is_the_identity_and_creates_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    x = torch.arange(6.0).view(3, 2)
    assert parallel.world() == (0, 1) and parallel.shard(5) == range(5)
    assert parallel.all_sum(x) is x and parallel.all_gather_rows(x, 3) is x
    batches = [(x, None), (x[:1], torch.ones(1, 2))]
    assert parallel.shard_batches(batches) == batches
    assert not torch.distributed.is_initialized()


def test_the_launchers_environment_is_recognised(monkeypatch: pytest.MonkeyPatch) -> None:
    launcher = {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    for name, value in launcher.items():
        monkeypatch.setenv(name, value)
    assert parallel.launched()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not parallel.launched()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR")
    assert not parallel.launched()
    assert parallel.backend_for("cpu") == "gloo" and parallel.backend_for(None) == "gloo"


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, torch.Tensor]]:
    out = tmp_path_factory.mktemp("parallel")
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*command, str(ROOT / "tests" / "parallel_worker.py"), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return [torch.load(out / f"rank{rank}.pt") for rank in range(2)]


def test_two_processes_return_what_one_process_computes(two_processes: list[dict[str, torch.Tensor]]) -> None:
    single = results()
    worst = 0.0
    for rank, got in enumerate(two_processes):
        assert got.pop("world").tolist() == [rank, 2]
        assert got.keys() == single.keys()
        assert 0 < got["rows"] < 0.75 * single["rows"]  # each rank ran a share of the rows
        for key, expected in single.items():
            if key == "rows":
                continue
            torch.testing.assert_close(got[key], expected, rtol=1e-5, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")
            scale = expected.abs().clamp_min(1e-6)
            worst = max(worst, float(((got[key] - expected).abs() / scale).max()))
    rows = [int(got["rows"]) for got in two_processes]
    print(f"max relative difference, 2 processes vs 1: {worst:.2e}; rows run {rows} vs {int(single['rows'])}")
    first, second = two_processes
    for key in single.keys() - {"rows"}:
        assert torch.equal(first[key], second[key]), key
