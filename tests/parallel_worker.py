"""One process of the data-parallel test (``tests/test_parallel.py``): run under
``torchrun --nproc-per-node 2 tests/parallel_worker.py OUT_DIR``, it computes ``results()``
on a tiny random model and saves them to OUT_DIR/rank<r>.pt. The test computes the same
results in its own single process and compares."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from arrakis import tasks  # noqa: E402
from arrakis.models.edge_graph import edge_graph  # noqa: E402
from arrakis.models.edge_runs import EdgeRunner, TaskRows, edge_scores  # noqa: E402
from arrakis.models.parallel import world  # noqa: E402
from arrakis.tools import WriteReadAnalyzer  # noqa: E402
from tests.conftest import build  # noqa: E402


def dataset(d_vocab: int) -> list[list[int]]:
    """Seven rows of random tokens repeated (so induction and duplicate heads score), of
    different lengths: batches of 2 are padded, the ranks get 4 and 3 rows."""
    generator = torch.Generator().manual_seed(3)
    halves = [torch.randint(1, d_vocab, (length,), generator=generator).tolist() for length in (5, 3, 4, 2, 4, 3, 2)]
    return [half + half for half in halves]


def results() -> dict[str, torch.Tensor]:
    """Dataset statistics, head patching, edge scores and the task means of logit attribution
    and information flow, of a tiny model on 5 induction prompts."""
    model = build("llama")
    seen = torch.zeros((), dtype=torch.long)  # rows through the model: each rank runs only its share

    def count(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen.add_(kwargs["input_ids"].shape[0] if "input_ids" in kwargs else args[0].shape[0])

    model.hf_model.register_forward_pre_hook(count, with_kwargs=True)
    tool = WriteReadAnalyzer(model)
    rows_of_ids = dataset(model.cfg.d_vocab)
    task = tasks.induction(model, n=5, seq_len=8, seed=1)
    exact = tool.patch_heads(task, "z", method="exact", batch_size=2)
    estimate = tool.patch_heads(task, "z", method="attribution", batch_size=2)
    rows = TaskRows(task.clean_ids, task.corrupted_ids, task.attention_mask, task.dst, task.metric)
    graph = edge_graph(model.cfg)
    n_pos, d_model = task.clean_ids.shape[1], model.cfg.d_model
    budget = 2 * 12 * n_pos * (len(graph.senders) + len(graph.receivers)) * d_model  # 2 examples per batch
    scores = edge_scores(model, rows, graph=graph, method="attribution", budget=budget)
    runner = EdgeRunner(model, rows, graph=graph, budget=budget)
    patched = torch.zeros(3, graph.n_edges, dtype=torch.bool)
    patched[0, scores.argsort(descending=True)[:5]] = True
    patched[1, ::3] = True
    patched[2] = True
    roles = tool.head_roles(rows_of_ids, batch_size=2)
    attribution = tool.logit_attribution(task)  # task means: each rank its examples, gathered
    flow = tool.trace_information_flow(task, verify=True)
    return {
        "attribution_heads": attribution.heads,
        "attribution_logit": torch.tensor(attribution.logit),
        "flow_scores": torch.tensor([[h.score for h in layer.heads] for layer in flow.layers]),
        "flow_exact": torch.tensor([layer.exact for layer in flow.layers]),
        "write_scores": tool.write_scores(rows_of_ids, batch_size=2),
        **{f"roles_{role}": roles.scores(role) for role in ("previous_token", "duplicate_token", "induction")},
        "exact_scores": exact.scores,
        "exact_per_example": exact.per_example,
        "exact_metrics": torch.tensor([exact.clean_metric, exact.corrupted_metric]),
        "attribution_per_example": estimate.per_example,
        "edge_scores": scores,
        "runner_metrics": torch.tensor([runner.clean_metric, runner.corrupted_metric]),
        "runner_run": runner.run(patched),
        "rows": seen.clone(),
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = results()
    rank, size = world()
    out["world"] = torch.tensor([rank, size])
    torch.save(out, Path(sys.argv[1]) / f"rank{rank}.pt")
