"""``patch_heads``: activation patching of every attention head on a task.

For each head h and a channel of it (z: its output before W_O; q, k, v: its inputs;
pattern: its attention probabilities), the task's prompts run with h's channel, at the chosen
positions, taken from the other run:

    noising    (clean run, h from the corrupted run):  effect = m_clean - m_patched
    denoising  (corrupted run, h from the clean run):  effect = m_patched - m_corrupted

so a positive effect always means "h carries what the task's metric m needs". ``method="exact"``
runs every patched copy (batched: many copies per forward pass, ``arrakis.models.activation_patching``);
"attribution" and "integrated" estimate the change from gradients
(``arrakis.models.patching_gradients``). Every argument is checked before any forward pass.

Under torchrun or accelerate launch each process patches its share of the examples and the
per-example results are gathered, so every process returns the same ``HeadPatching``
(``arrakis.models.parallel``).
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor

from arrakis.models import HookedAutoModel
from arrakis.models.activation_patching import patch_heads_exact
from arrakis.models.head_channels import CHANNELS, DIRECTIONS, position_mask_of
from arrakis.models.parallel import all_gather_rows, shard, world
from arrakis.models.patching_gradients import patch_heads_estimate
from arrakis.tasks import Task
from arrakis.tasks.task import DEFAULT_BATCH_SIZE
from arrakis.tools.base import BaseInterpretabilityTool, check_choice, check_positive_int
from arrakis.tools.results.patching import HeadPatching

METHODS = ("exact", "attribution", "integrated")


def patch_heads(
    tool: BaseInterpretabilityTool,
    task: Task,
    channel: str = "z",
    positions: str | list[int] = "all",
    method: str = "exact",
    direction: str = "noising",
    steps: int = 5,
    batch_size: int | None = None,
) -> HeadPatching:
    """Patch every head's ``channel`` between ``task``'s clean and corrupted runs: a
    ``HeadPatching`` whose ``scores`` [n_layers, n_heads] are the mean effects on the task's
    metric (the module docstring gives the signs), with ``per_example``, ``normalised``
    (divided by clean - corrupted metric) and ``top_heads``. ``WriteReadAnalyzer.patch_heads``.

    ``channel``: "z", "q", "k", "v" (under grouped-query attention a k or v patch is the
    head's whole KV group) or "pattern". ``positions``: "all", "dst" (each example's own dst)
    or a list of positions of the padded prompts. ``method``: "exact", "attribution" or
    "integrated" (with ``steps`` points). ``direction``: "noising" or "denoising".
    ``batch_size``: rows per forward pass (None: what fits the memory budget).
    """
    model = tool.model
    channel, positions, method, direction, steps = check_patching(
        model, task, channel, positions, method, direction, steps
    )
    if batch_size is not None:
        batch_size = check_positive_int(batch_size, "batch_size")
    rank, _ = world(model.device)
    mine = shard(task.n)  # this process's examples (all of them in a single process)
    clean, corrupted = metric_values(task, model, "clean", mine), metric_values(task, model, "corrupted", mine)
    lo, part = mine.start, slice(mine.start, mine.stop)
    metric = task.metric if lo == 0 else (lambda logits, index: task.metric(logits, index + lo))
    args = (model, task.clean_ids[part], task.corrupted_ids[part], task.attention_mask[part], task.dst[part], metric)
    options = {"channel": channel, "positions": positions, "direction": direction, "batch_size": batch_size}
    if len(mine) == 0:
        patched = torch.zeros(0, model.cfg.n_layers, model.cfg.n_heads)
    elif method == "exact":
        patched = patch_heads_exact(*args, **options, progress=rank == 0)  # [n, n_layers, n_heads] m_patched
    else:
        change = patch_heads_estimate(*args, **options, method=method, steps=steps, progress=rank == 0)
        patched = change + (clean if direction == "noising" else corrupted)[:, None, None]
    if direction == "noising":
        per_example = clean[:, None, None] - patched
    else:
        per_example = patched - corrupted[:, None, None]
    per_example = all_gather_rows(per_example, task.n)
    clean, corrupted = all_gather_rows(clean, task.n), all_gather_rows(corrupted, task.n)
    clean_metric, corrupted_metric = float(clean.mean()), float(corrupted.mean())
    return HeadPatching(
        per_example,
        clean_metric=clean_metric,
        corrupted_metric=corrupted_metric,
        channel=channel,
        positions=positions,
        method=method,
        direction=direction,
        steps=steps if method == "integrated" else None,
        task=task.name,
        metric=task.metric_name,
        notes=patching_notes(model, channel, method, clean_metric - corrupted_metric),
    )


def metric_values(task: Task, model: HookedAutoModel, which: str, examples: range) -> Tensor:
    """The metric of ``examples`` of ``task`` in plain runs of ``model``: [len(examples)], CPU."""
    if len(examples) == task.n:
        return task.values(model, which)
    index = torch.arange(examples.start, examples.stop)
    parts = [
        task.metric(task.dst_logits(model, batch, which), batch).detach().float().cpu()
        for batch in index.split(DEFAULT_BATCH_SIZE)
        if len(batch)
    ]
    return torch.cat(parts) if parts else torch.zeros(0)


def check_patching(
    model: HookedAutoModel, task: Any, channel: Any, positions: Any, method: Any, direction: Any, steps: Any
) -> tuple[str, str | list[int], str, str, int]:
    """The checked (channel, positions, method, direction, steps), or one error naming the
    argument and what is valid; nothing runs."""
    if not isinstance(task, Task):
        raise TypeError(f"patch_heads needs an arrakis.tasks.Task, got {type(task).__name__}")
    if task.corrupted_ids is None:
        raise ValueError(f"task {task.name!r} has no corrupted prompts: patching needs corrupted= twins")
    model.require_forward()
    task.require_model(model)  # token ids inside this model's vocabulary
    channel = check_choice(channel, CHANNELS, "channel")
    method = check_choice(method, METHODS, "method")
    direction = check_choice(direction, DIRECTIONS, "direction")
    steps = check_positive_int(steps, "steps")
    n_pos = int(task.clean_ids.shape[1])
    if isinstance(positions, str):
        positions = check_choice(positions, ("all", "dst"), "positions")
    elif isinstance(positions, list | tuple):
        given = [int(p) if isinstance(p, numbers.Integral) and not isinstance(p, bool) else p for p in positions]
        position_mask_of(given, task.dst, n_pos)  # the engine's own check: a non-empty list of ints in range
        positions = sorted({p % n_pos for p in given})
    else:
        raise ValueError(f"positions must be 'all', 'dst' or a non-empty list of ints; got {positions!r}")
    return channel, positions, method, direction, steps


def patching_notes(model: HookedAutoModel, channel: str, method: str, gap: float) -> list[str]:
    """What qualifies a patching result: grouped K/V, estimates, a corruption that removes nothing."""
    cfg, notes = model.cfg, []
    if channel in ("k", "v") and cfg.n_kv_heads < cfg.n_heads:
        notes.append(
            f"grouped-query attention: {cfg.n_heads} query heads share {cfg.n_kv_heads} {channel.upper()} heads "
            f"({cfg.group_size} per group), so patching a head's {channel} patches its whole KV group; "
            "the heads of one group get the same score"
        )
    if method != "exact":
        notes.append(f"{method} estimates of the patching effects, not patched runs; method='exact' runs them")
    if not gap > 0:
        notes.append(
            f"the corrupted run scores at least as well as the clean one (gap {gap:.3g}): the corruption does not "
            "remove the behaviour, and normalised scores mean little"
        )
    return notes
