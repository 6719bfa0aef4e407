"""Task circuits on the embedded model: every edge scored, circuits run exactly.

Baseline, in the same run: one plain forward pass over the whole task (its 32 clean IOI
prompts in one batch, ``hf_model(...)`` without gradients, the best of a few repeats).
Measured, with the peak extra resident memory of each call:

- the scores of all 70,651 edges (``edge_scores``): attribution (EAP: per batch of examples,
  two capture passes and one forward and backward pass) and integrated (EAP-IG, 5 steps: the
  two capture passes and five forward and backward passes); edges scored per second, and
  the passes per batch as multiples of the baseline;
- exact circuit runs (``EdgeRunner.run``): four circuits of the top 10^2 .. 10^5 edges, each a
  patched forward pass over the 32 examples, as multiples of the baseline per circuit.
"""

from __future__ import annotations

import torch

from arrakis import load_model, tasks
from arrakis.models.edge_graph import edge_graph
from arrakis.models.edge_runs import EdgeRunner, TaskRows, edge_scores
from benchmarks.bench_hooked_forward import best_of
from benchmarks.bench_patching import mib
from benchmarks.memory import measure_once

N_EXAMPLES = 32


def main() -> None:
    model = load_model()
    task = tasks.ioi(model, N_EXAMPLES)
    rows = TaskRows(task.clean_ids, task.corrupted_ids, task.attention_mask, task.dst, task.metric)
    inputs = model.forward_inputs(task.clean_ids, task.attention_mask)

    def forward():
        with torch.no_grad():
            return model.hf_model(**inputs, use_cache=False)

    t_forward = best_of(forward, repeats=3)
    graph = edge_graph(model.cfg)
    shape = f"{task.n} x {task.clean_ids.shape[1]} tokens"
    print(f"task circuit on an IOI task, embedded model ({shape}, {graph.n_edges} edges)")
    print(f"  plain forward pass over the task   {t_forward:7.2f} s   (baseline)")
    scores = None
    for method, passes in (("attribution", "2 captures + 1 forward/backward"), ("integrated", "2 + 5 fwd/bwd")):
        scores, seconds, peak = measure_once(lambda m=method: edge_scores(model, rows, graph=graph, method=m, steps=5))
        print(
            f"  {method:<11} scores, every edge    {seconds:7.1f} s   x{seconds / t_forward:.1f} the forward pass "
            f"({passes} per batch); {graph.n_edges / seconds:,.0f} edges/s; peak {mib(peak)}"
        )
    assert scores is not None
    runner, t_runner, _ = measure_once(lambda: EdgeRunner(model, rows, graph=graph))
    order = scores.abs().argsort(descending=True)
    sizes = [100, 1000, 10000, 100000]
    patched = torch.ones(len(sizes), graph.n_edges, dtype=torch.bool)
    for row, size in enumerate(sizes):
        patched[row, order[:size]] = False
    values, t_run, m_run = measure_once(lambda: runner.run(patched))
    faithful = (values - runner.corrupted_metric) / (runner.clean_metric - runner.corrupted_metric)
    per_circuit = t_run / len(sizes)
    print(
        f"  exact circuit runs                 {per_circuit:7.1f} s   x{per_circuit / t_forward:.1f} the forward pass "
        f"per circuit ({len(sizes)} circuits in one call, {t_run:.1f} s; the runner's clean and corrupted runs "
        f"{t_runner:.1f} s); peak {mib(m_run)}"
    )
    print(
        "  faithfulness of the top-N edges:  "
        + ", ".join(f"{s}: {float(f):.2f}" for s, f in zip(sizes, faithful, strict=True))
    )


if __name__ == "__main__":
    main()
