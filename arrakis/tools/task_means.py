"""Answers about a task (``arrakis.tasks.Task``): the write-read answers of one prompt, asked
of every example at its own positions and averaged over the examples.

For each example, its prompt runs alone, without its padding, at its own dst (and src), for
its own answer (and foil); the result holds the mean over examples of what each example
gives (docs/mathematics.md#activation-patching-on-a-task). Everything is checked before any
forward pass: a task gives the prompts, the positions and the tokens, so passing them too is
an error. Under torchrun or accelerate launch each process answers its share of the examples
and the per-example answers are gathered, in example order, before the means.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from arrakis.models import HookedAutoModel
from arrakis.models.parallel import all_gather_objects, shard
from arrakis.progress import progress
from arrakis.tasks import Task
from arrakis.tools.flow_attribution import trace_attribution
from arrakis.tools.flow_question import FlowMetric, refuse_with_task
from arrakis.tools.flow_verify import verify_flow
from arrakis.tools.logit_attribution import logit_attribution, prompt_attribution
from arrakis.tools.results.attribution import LogitAttribution
from arrakis.tools.results.flow import HeadFlow, InformationFlow, LayerFlow

SHOW_PROGRESS = 8  # more examples than this: a progress bar
FORMULAS = {
    "logit_diff": "logit(answer) - logit(foil) at dst",
    "log_prob": "log p(answer | dst)",
    "custom": "the task's metric of the logits at dst",
}


def attribute(
    model: HookedAutoModel,
    input_ids: Any,
    token: Any,
    pos: int | None,
    foil: Any,
    attention_mask: Tensor | None,
    batch_index: int | None,
) -> LogitAttribution:
    """``write_read.logit_attribution``: of one prompt, or the mean over a task's examples."""
    if isinstance(input_ids, Task):
        given = {"token": token, "pos": pos, "foil": foil, "attention_mask": attention_mask, "batch_index": batch_index}
        return task_attribution(model, input_ids, given)
    if token is None:
        raise TypeError("token is required with input_ids (a prompt); only a task gives its own answers")
    return prompt_attribution(model, input_ids, token, -1 if pos is None else pos, foil, attention_mask, batch_index)


def example_ids(model: HookedAutoModel, task: Task, i: int) -> Tensor:
    """Example ``i``'s clean prompt without its padding: [1, its length], on the model's device."""
    return task.clean_ids[i : i + 1, : int(task.lengths[i])].to(model.device)


def examples(task: Task, what: str) -> Any:
    """This process's examples of ``task`` (all of them in a single process; a contiguous share
    under torchrun or accelerate launch), with a progress bar on rank 0 when there are many."""
    mine = shard(task.n)
    return progress(mine, f"{task.name}: {what}", "example", enabled=mine.start == 0 and task.n > SHOW_PROGRESS)


def task_attribution(model: HookedAutoModel, task: Task, given: dict[str, Any]) -> LogitAttribution:
    """The mean over ``task``'s examples of the direct logit attribution of each example's
    answer (minus its foil, where the task has foils) at its own dst."""
    refuse_with_task(given, "the task gives each example's answer, foil and dst")
    task.require_model(model)
    parts = []
    for i in examples(task, "logit attribution"):
        foil = None if task.foil is None else int(task.foil[i])
        parts.append(logit_attribution(model, example_ids(model, task, i), int(task.answer[i]), int(task.dst[i]), foil))
    return mean_attribution(all_gather_objects(parts), task)


def common(values: list[int | None]) -> int | None:
    """The value every example shares, or None where they differ."""
    return values[0] if all(v == values[0] for v in values) else None


def mean_attribution(parts: list[LogitAttribution], task: Task) -> LogitAttribution:
    n = len(parts)
    heads = torch.stack([p.heads for p in parts]).double().mean(0).float()
    components = {key: sum(p.components[key] for p in parts) / n for key in parts[0].components}
    token, foil = common([p.token for p in parts]), common([p.foil for p in parts])
    what = "answer" if task.foil is None else "answer - foil"
    notes = [f"mean over {n} examples of task {task.name}: each example's own {what} at its own dst"]
    notes += [note for note in dict.fromkeys(note for p in parts for note in p.notes)]
    return LogitAttribution(
        heads,
        components,
        logit=sum(p.logit for p in parts) / n,
        token=token,
        pos=common([p.pos for p in parts]),
        foil=foil,
        token_str=parts[0].token_str if token is not None else None,
        foil_str=parts[0].foil_str if foil is not None else None,
        notes=notes,
        n_examples=n,
    )


# -- information flow ------------------------------------------------------------------------


def example_metric(task: Task, i: int) -> FlowMetric:
    """Example ``i``'s metric of the logits at its dst: the task's, as a flow metric."""
    if task.metric_name == "logit_diff":
        return FlowMetric(target=int(task.answer[i]), foil=int(task.foil[i]))
    if task.metric_name == "log_prob":
        return FlowMetric(target=int(task.answer[i]))
    index, fn = torch.tensor([i]), task.metric_fn
    return FlowMetric(fn=lambda logits: fn(logits[None], index).reshape(-1)[0])


def task_flow(
    model: HookedAutoModel,
    task: Task,
    layers: list[int],
    *,
    method: str,
    top_k: int,
    n_paths: int,
    min_edge_flow: float,
    verify: bool | str,
    steps: int,
) -> InformationFlow:
    """Each example traced from its src to its dst with its own metric; head scores and
    per-layer values (exact ones too, with ``verify``) are the means over examples."""
    if method == "routes":
        raise ValueError(
            "method 'routes' is not averaged over a task's examples (its routes run through each example's own "
            "positions); use method='attribution' or 'integrated', or trace one prompt"
        )
    flows = []
    for i in examples(task, f"{method} flow"):
        ids, metric = example_ids(model, task, i), example_metric(task, i)
        src, dst = int(task.src[i]), int(task.dst[i])
        options = {"top_k": top_k, "n_paths": n_paths, "min_edge_flow": min_edge_flow}
        flow = trace_attribution(model, ids, src, dst, layers, metric, **options, method=method, steps=steps)
        if verify:
            flow.verification = verify_flow(model, ids, flow, metric, every_head=verify == "all")
        flows.append(flow)
    return mean_flow(all_gather_objects(flows), task, top_k)


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def mean_or_none(values: list[float | None]) -> float | None:
    """The mean where every example has a value, else None."""
    return None if any(v is None for v in values) else mean(values)


def mean_layer(per: list[LayerFlow]) -> LayerFlow:
    heads = [
        HeadFlow(
            head=h.head,
            attention=mean([p.heads[k].attention for p in per]),
            score=mean([p.heads[k].score for p in per]),
            exact=mean_or_none([p.heads[k].exact for p in per]),
            first_order=mean_or_none([p.heads[k].first_order for p in per]),
            joint_share=mean_or_none([p.heads[k].joint_share for p in per]),
        )
        for k, h in enumerate(per[0].heads)
    ]
    exact, estimate = mean_or_none([p.exact for p in per]), mean_or_none([p.estimate for p in per])
    return LayerFlow(per[0].layer, mean([p.flow for p in per]), heads, exact=exact, estimate=estimate)


def mean_flow(flows: list[InformationFlow], task: Task, top_k: int) -> InformationFlow:
    n, first = len(flows), flows[0]
    layer_flows = [mean_layer([f.layers[k] for f in flows]) for k in range(len(first.layers))]
    ranked = sorted(
        ((lf.layer, h.head, h.score) for lf in layer_flows for h in lf.heads), key=lambda item: (-item[2], item[:2])
    )
    notes = [
        f"mean over {n} examples of task {task.name}: head scores and per-layer values are the means of each "
        "example's, traced from its own src to its own dst",
        "routes and edges are not averaged (each example has its own positions); src_pos, dst_pos and tokens "
        "are example 0's",
    ]
    verification = None
    if any(f.verification is not None for f in flows):
        verification = {"n_examples": n, "per_example": [f.verification for f in flows]}
        if any(lf.heads and lf.heads[0].exact is None for lf in layer_flows):
            notes.append("heads' exact drops are averaged only where every example verified them (verify='all')")
    kind = task.metric_name
    metric = {
        "kind": kind,
        "formula": FORMULAS[kind] + f", mean over {n} examples",
        "task": task.name,
        "clean": mean([float(f.metric["clean"]) for f in flows]),
    }
    all_layers = {key: mean_or_none([f.all_layers.get(key) for f in flows]) for key in ("estimate", "exact")}
    return InformationFlow(
        layer_flows,
        src_pos=first.src_pos,
        dst_pos=first.dst_pos,
        tokens=first.tokens,
        top_heads=[(layer, head) for layer, head, score in ranked[:top_k] if score > 0],
        paths=[],
        edges=[],
        method=first.method,
        str_tokens=first.str_tokens,
        metric=metric,
        verification=verification,
        notes=notes,
        all_layers=all_layers,
        n_examples=n,
    )
