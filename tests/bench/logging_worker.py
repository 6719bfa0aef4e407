"""A child process for the store's concurrency and crash tests: logs runs of the experiment "concurrent".

    python -m tests.bench.logging_worker MODE SAVE_DIR WORKER N_RUNS READY_FILE GO_FILE DONE_FILE PAYLOAD

MODE "bench" logs through ``BaseInterpretabilityBench.log_experiment`` on a one-layer model
(importing arrakis, torch and transformers: seconds). MODE "store" loads only
``arrakis/bench/store.py``, which needs nothing but the standard library, and calls
``ExperimentStore.log`` with the same arguments and result: several such workers start in
milliseconds instead of queueing for the CPUs to import torch.

The worker touches READY_FILE, waits for GO_FILE (so that all workers start logging at the
same moment), then logs N_RUNS runs, appending each run's index to DONE_FILE only after the
log call has returned, i.e. once the run is committed. PAYLOAD floats in each result make a
write take long enough that a kill is likely to land inside one.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bench_logger(save_dir: str) -> Callable[[int, int, int], object]:
    from arrakis import HookedAutoConfig, HookedAutoModel
    from arrakis.bench import BaseInterpretabilityBench

    model = HookedAutoModel(HookedAutoConfig("gpt2", n_layers=1, d_model=16, n_heads=2, d_vocab=32, d_mlp=32))
    bench = BaseInterpretabilityBench(model, save_dir=save_dir)

    @bench.log_experiment("concurrent")
    def measure(worker: int, i: int, payload: int) -> dict:
        return {"worker": worker, "i": i, "payload": [float(i)] * payload}

    return measure


def store_logger(save_dir: str) -> Callable[[int, int, int], object]:
    spec = importlib.util.spec_from_file_location("arrakis_store_alone", ROOT / "arrakis" / "bench" / "store.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building Run
    spec.loader.exec_module(module)
    assert "torch" not in sys.modules  # the point of this mode
    store = module.ExperimentStore(save_dir)

    def measure(worker: int, i: int, payload: int) -> object:
        args = {"worker": worker, "i": i, "payload": payload}
        return store.log("concurrent", args, {"worker": worker, "i": i, "payload": [float(i)] * payload})

    return measure


def main(mode: str, save_dir: str, worker: int, n_runs: int, ready: Path, go: Path, done: Path, payload: int) -> None:
    measure = {"bench": bench_logger, "store": store_logger}[mode](save_dir)
    ready.touch()
    deadline = time.monotonic() + 120
    while not go.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("no go signal")
        time.sleep(0.002)
    with done.open("a") as report:
        for i in range(n_runs):
            measure(worker, i, payload)
            report.write(f"{i}\n")
            report.flush()  # the parent reads this while we run (and after a SIGKILL)


if __name__ == "__main__":
    mode, save_dir, worker, n_runs, ready, go, done, payload = sys.argv[1:]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(mode, save_dir, int(worker), int(n_runs), Path(ready), Path(go), Path(done), int(payload))
