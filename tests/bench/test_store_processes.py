"""The store across processes: four writers at once lose no run; a writer killed mid-run corrupts nothing."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from arrakis.bench import ExperimentStore

ROOT = Path(__file__).resolve().parents[2]


def start_worker(tmp_path: Path, mode: str, save_dir: Path, worker: int, n_runs: int, payload: int) -> tuple:
    """A ``tests/bench/logging_worker.py`` process (see there for the modes and the protocol)."""
    ready, done = tmp_path / f"ready{worker}", tmp_path / f"done{worker}"
    args = [mode, save_dir, worker, n_runs, ready, tmp_path / "go", done, payload]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "tests.bench.logging_worker", *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    return proc, ready, done


def wait_for(condition, procs, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in procs:
            if proc.poll() not in (None, 0):
                raise AssertionError(f"a worker died while waiting for {what}: {proc.stderr.read()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def reported(done: Path) -> list[int]:
    if not done.exists():
        return []
    lines = done.read_text().split("\n")
    return [int(line) for line in lines[:-1]]  # the last piece is "" or a line cut short


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def test_four_processes_logging_at_once_lose_no_run(tmp_path):
    save_dir = tmp_path / "shared"  # created by whichever worker commits first
    # three workers that load only the store, so that they start at once, and one full bench
    modes = ["store", "store", "store", "bench"]
    workers = [start_worker(tmp_path, mode, save_dir, w, n_runs=100, payload=8) for w, mode in enumerate(modes)]
    procs = [proc for proc, _, _ in workers]
    try:
        wait_for(lambda: all(ready.exists() for _, ready, _ in workers), procs, "the workers to start")
        (tmp_path / "go").touch()
        for proc in procs:
            assert proc.wait(timeout=120) == 0, proc.stderr.read()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    store = ExperimentStore(save_dir)
    versions = store.list_versions("concurrent")
    assert len(versions) == 400 and len(set(versions)) == 400
    runs = store.runs("concurrent")
    assert sorted((r.args["worker"], r.args["i"]) for r in runs) == [(w, i) for w in range(4) for i in range(100)]
    for worker in range(4):  # each worker's runs are in the order it logged them
        assert [r.args["i"] for r in runs if r.args["worker"] == worker] == list(range(100))
    assert all(r.result["i"] == r.args["i"] and r.verify() for r in runs)
    assert sum(r.source is not None and "def measure" in r.source for r in runs) == 100  # the bench worker's
    assert store.experiments() == {"concurrent": 400}
    assert integrity(store.path) == "ok"


def test_a_process_killed_while_logging_loses_no_committed_run(tmp_path):
    save_dir = tmp_path / "crash"
    # a large result, so that the kill very likely lands inside a write
    proc, ready, done = start_worker(tmp_path, "bench", save_dir, 0, n_runs=100_000, payload=20_000)
    try:
        wait_for(ready.exists, [proc], "the worker to start")
        (tmp_path / "go").touch()
        wait_for(lambda: len(reported(done)) >= 5, [proc], "five committed runs")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    completed = reported(done)
    store = ExperimentStore(save_dir)
    assert integrity(store.path) == "ok"
    runs = store.runs("concurrent")
    recorded = [r.args["i"] for r in runs]
    # every run it reported is there; at most the one it was reporting when killed is extra
    assert recorded[: len(completed)] == completed == list(range(len(completed)))
    assert len(recorded) - len(completed) in (0, 1)
    for run in runs:  # no half-written row: each reads back whole and matches its hash
        assert len(run.result["payload"]) == 20_000 and run.verify()
    # and the store takes new runs after the crash
    store.log("concurrent", {"worker": 1, "i": 0}, "after the crash")
    assert len(store.list_versions("concurrent")) == len(runs) + 1
    assert integrity(store.path) == "ok"
