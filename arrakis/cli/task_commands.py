"""``arrakis patch``, ``arrakis circuit`` and the task part of ``arrakis analyze``: a task (IOI or
induction), how well the model does it, activation patching of every head between its clean and
corrupted runs, and every writer -> reader edge scored with its circuits run exactly.
``arrakis.cli`` has checked the arguments, without importing torch."""

from __future__ import annotations

import argparse
from typing import Any

from arrakis.models import HookedAutoModel, load_model
from arrakis.tasks import Task, induction, ioi
from arrakis.tools import WriteReadAnalyzer


def build_task(model: HookedAutoModel, name: str, n: int, seed: int = 0) -> Task:
    """``arrakis.tasks.ioi`` or ``arrakis.tasks.induction`` (30-token halves) with ``n`` examples."""
    if name == "ioi":
        return ioi(model, n, seed)
    return induction(model, n, seed=seed)


def task_line(task: Task, accuracy: float) -> str:
    """How well the model does the task: accuracy and the metric on clean and corrupted prompts."""
    return (
        f"task {task.name}, {task.n} examples: accuracy {accuracy:.0%} (the answer is the top prediction); "
        f"{task.metric_name} clean {task.clean_metric:.3f}, corrupted {task.corrupted_metric:.3f}"
    )


Head = tuple[int, int]


def heads_lines(result: Any, heads: list[Head], exact: dict[Head, float] | None = None) -> list[str]:
    """One line per head: its score, normalised by the gap, and its exact value where given."""
    normalised = result.normalised
    lines = []
    for layer, head in heads:
        score, share = float(result.scores[layer, head]), float(normalised[layer, head])
        beside = "" if exact is None else f"   exact {exact[layer, head]:+.3f}"
        lines.append(f"  L{layer}H{head}: {score:+.3f} ({share:+.1%} of the gap){beside}")
    return lines


def patching_text(task: Task, accuracy: float, result: Any, k: int) -> str:
    """A task and its head patching as text: the task line, the top ``k`` heads, the notes."""
    effect = "drop in" if result.direction == "noising" else "recovery of"
    lines = [
        task_line(task, accuracy),
        f"head patching: {result.describe()}",
        f"top {k} heads by {effect} {result.metric} (gap clean - corrupted {result.gap:.3f}):",
        *heads_lines(result, result.top_heads(k)),
    ]
    return "\n".join(lines + [f"note: {note}" for note in result.notes])


def analyze_task_text(model: HookedAutoModel) -> str:
    """The task part of ``arrakis analyze``: IOI (8 examples), attribution patching of every
    head's z, and the exact drop of its top 5 heads beside their estimates."""
    from arrakis.report import task_patching  # the report's demo, computed the same way

    found = task_patching(model, k=5)
    result = found.result
    return "\n".join(
        [
            f"a task: which heads does {found.task.name} need? (each head's z patched in from the corrupted run)",
            task_line(found.task, found.accuracy),
            f"top 5 heads by attribution patching (estimated drop in {result.metric}), exact drop beside:",
            *heads_lines(result, found.top_heads, found.exact),
            *[f"note: {note}" for note in result.notes],
        ]
    )


def cmd_patch(args: argparse.Namespace) -> Any:
    model = load_model(args.model)
    task = build_task(model, args.task, args.n, args.seed)
    accuracy = task.accuracy(model)
    result = WriteReadAnalyzer(model).patch_heads(
        task,
        args.channel,
        positions=args.positions,
        method=args.method,
        direction=args.direction,
        steps=args.steps,
    )
    data = {
        **result.to_dict(),
        "top_heads": [list(head) for head in result.top_heads(args.top_k)],
        "accuracy": accuracy,
        "n": task.n,
        "seed": args.seed,
    }
    return data, patching_text(task, accuracy, result, args.top_k)


def cmd_circuit(args: argparse.Namespace) -> Any:
    model = load_model(args.model)
    task = build_task(model, args.task, args.n, args.seed)
    accuracy = task.accuracy(model)
    result = WriteReadAnalyzer(model).task_circuit(task, method=args.method, steps=args.steps)
    n_edges = result.n_edges
    sizes = sorted({min(size, n_edges) for size in args.sizes})
    faithful = result.faithfulness(sizes)
    data: dict[str, Any] = {
        **result.to_dict(),
        "accuracy": accuracy,
        "n": task.n,
        "seed": args.seed,
        "faithfulness": dict(zip(map(str, sizes), faithful, strict=True)),
    }
    lines = [
        task_line(task, accuracy),
        f"task circuit: {result.method}{f', {result.steps} steps' if result.steps else ''}, {n_edges} edges",
        f"top {args.top_k} edges by |estimated drop in {result.metric} when patched alone|:",
        *[f"  {edge}" for edge in result.top_edges(min(args.top_k, n_edges))],
        "faithfulness of the top-N circuits (every other edge patched; 1 = the clean run, 0 = the corrupted):",
        *[f"  N = {size}: {value:.3f}" for size, value in zip(sizes, faithful, strict=True)],
    ]
    if args.curve:
        curve = result.curve()
        data["curve"] = curve.to_dict()
        lines += ["faithfulness curve (top-N and random circuits of the same sizes):", repr(curve)]
    if args.verify:
        verification = result.verify(min(args.verify, n_edges))
        data["verify"] = verification.to_dict()
        lines += ["exact single-edge patching of the top edges beside their scores:", repr(verification)]
    return data, "\n".join(lines + [f"note: {note}" for note in result.notes])
