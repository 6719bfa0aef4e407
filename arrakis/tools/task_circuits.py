"""``task_circuit``: every writer -> reader edge of a task scored, and the circuits they rank
run exactly (docs/mathematics.md#task-circuits).

The scores (``arrakis.models.edge_runs.edge_scores``) estimate, for each edge, the drop in
the task's metric when that edge alone is patched (its sender's output taken from the
corrupted run in that receiver's input only): EAP (``method="attribution"``) or EAP-IG
(``"integrated"``, ``steps`` nodes). The ``TaskCircuit`` they return runs circuits exactly
through an ``EdgeRunner``: faithfulness of the top-n edges, a curve against random circuits
of the same sizes, and exact single-edge patching of the top edges beside their scores.
Every argument is checked before any forward pass.
"""

from __future__ import annotations

from arrakis.models.edge_graph import edge_graph
from arrakis.models.edge_runs import METHODS, EdgeRunner, TaskRows, edge_scores
from arrakis.models.interventions import DEFAULT_BUDGET
from arrakis.tasks import Task
from arrakis.tools.base import BaseInterpretabilityTool, check_choice, check_positive_int
from arrakis.tools.results.task_circuit import TaskCircuit


def task_circuit(
    tool: BaseInterpretabilityTool,
    task: Task,
    method: str = "integrated",
    steps: int = 5,
    *,
    budget: int = DEFAULT_BUDGET,
    progress: bool = True,
) -> TaskCircuit:
    """Score every edge of the model's graph on ``task`` and return a ``TaskCircuit``
    (``WriteReadAnalyzer.task_circuit``).

    ``method``: "integrated" (EAP-IG: the gradient at every receiver's input averaged over
    ``steps`` points between the clean and the corrupted input embeddings) or "attribution"
    (EAP: the gradient at the clean run). Each edge's score is the estimated drop in the
    metric (clean minus patched) when that edge alone is patched; ``faithfulness(n)``,
    ``curve()`` and ``verify(k)`` on the result run the patching exactly. ``budget``: bytes of
    activations one batch may hold.
    """
    model = tool.model
    if not isinstance(task, Task):
        raise TypeError(f"task_circuit needs an arrakis.tasks.Task, got {type(task).__name__}")
    if task.corrupted_ids is None:
        raise ValueError(f"task {task.name!r} has no corrupted prompts: edge patching needs corrupted= twins")
    model.require_forward()
    task.require_model(model)
    method = check_choice(method, METHODS, "method")
    steps = check_positive_int(steps, "steps")
    budget = check_positive_int(budget, "budget")
    rows = TaskRows(task.clean_ids, task.corrupted_ids, task.attention_mask, task.dst, task.metric)
    graph = edge_graph(model.cfg)
    scores = edge_scores(model, rows, graph=graph, method=method, steps=steps, budget=budget, progress=progress)
    runner = EdgeRunner(model, rows, graph=graph, budget=budget)
    notes = [
        f"edge scores are {'EAP-IG' if method == 'integrated' else 'EAP'} estimates of the drop in the metric when "
        "that edge alone is patched (its sender's output from the corrupted run, in that receiver's input only); "
        "faithfulness(), curve() and verify() run the patching exactly"
    ]
    return TaskCircuit(
        graph,
        scores,
        runner,
        method=method,
        steps=steps if method == "integrated" else None,
        task=task.name,
        metric=task.metric_name,
        notes=notes,
    )
