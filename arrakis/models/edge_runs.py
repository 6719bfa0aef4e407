r"""Circuits of a task run exactly, and every edge scored from a constant number of passes
(docs/mathematics.md#task-circuits; the pass itself: ``arrakis.models.edge_patching``).

``EdgeRunner.run(patched)`` gives, for each set of patched edges, the metric averaged over the
task's examples: the source (corrupted) run's sender outputs are captured once per batch of
examples, then the sets run as copies of that batch, as many as fit the memory budget.

``edge_scores`` estimates, for every edge at once, the drop in the metric when that edge
alone is patched:

    score(u -> v) = - sum over positions of (out_u^source - out_u^base) . dm/dx_v

with dm/dx_v the gradient at receiver v's input (EAP, Syed et al. 2023), taken at the base
run (``"attribution"``: one forward and backward pass per batch, plus the two capture passes)
or averaged over ``steps`` Gauss-Legendre nodes alpha along the input embeddings moved from
the base prompt's towards the source's, e_base + alpha (e_source - e_base) (``"integrated"``:
EAP-IG, Hanna et al. 2024; a forward and backward pass per node). Nothing holds an
[edges x positions x d_model] tensor: the sender differences [pos, sender, d_model] and the
receiver gradients [pos, receiver, d_model] of one batch are contracted into [sender,
receiver] sums.

Under torchrun or accelerate launch each process runs its share of the examples and the sums
are added across processes (``arrakis.models.parallel``): every process gets the same result.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack

import torch
from torch import Tensor

from arrakis.models.edge_graph import EdgeGraph, edge_graph
from arrakis.models.edge_patching import EdgePass, sender_outputs
from arrakis.models.head_channels import call_metric, logits_at_rows
from arrakis.models.hooked_model import HookedAutoModel
from arrakis.models.interventions import DEFAULT_BUDGET
from arrakis.models.parallel import all_sum, shard, world
from arrakis.models.pattern_gradients import frozen_parameters
from arrakis.models.scaled_knockouts import quadrature
from arrakis.progress import progress as progress_bar

Metric = Callable[[Tensor, Tensor], Tensor]  # (logits [b, d_vocab], example index [b]) -> [b]
METHODS = ("integrated", "attribution")


class TaskRows:
    """A task's arrays: clean (base) and corrupted (source) ids [n, pos], the mask or None,
    each example's dst [n] and the metric."""

    def __init__(self, clean: Tensor, corrupted: Tensor, mask: Tensor | None, dst: Tensor, metric: Metric) -> None:
        if clean.shape != corrupted.shape:
            shapes = f"{tuple(clean.shape)} vs {tuple(corrupted.shape)}"
            raise ValueError(f"clean and corrupted ids differ in shape: {shapes}")
        self.clean, self.corrupted, self.mask, self.dst, self.metric = clean, corrupted, mask, dst, metric

    @property
    def n(self) -> int:
        return int(self.clean.shape[0])

    def batch(self, start: int, stop: int, copies: int = 1) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """(clean ids, mask, dst, example index) of examples start..stop-1, repeated ``copies`` times."""
        ids = self.clean[start:stop].repeat(copies, 1)
        mask = None if self.mask is None else self.mask[start:stop].repeat(copies, 1)
        dst = self.dst[start:stop].repeat(copies)
        return ids, mask, dst, torch.arange(start, stop).repeat(copies)


def forward_metric(model: HookedAutoModel, edge_pass: EdgePass, rows: TaskRows, batch: tuple) -> Tensor:
    """The metric of each row [rows] of one ``EdgePass`` over ``batch`` (from ``TaskRows.batch``)."""
    ids, mask, dst, examples = batch
    with ExitStack() as stack:
        edge_pass.hooks(stack)
        stack.enter_context(logits_at_rows(model.hf_model, dst))
        logits = model.hf_model(**model.forward_inputs(ids, mask), use_cache=False).logits[:, 0]
    return call_metric(rows.metric, logits, examples.to(logits.device)).float()


def row_budget(model: HookedAutoModel, n_pos: int, n_vectors: int, budget: int) -> int:
    """Batch rows whose [pos, n_vectors, d_model] float32 buffers (x3 for the work) fit ``budget``."""
    return max(1, budget // (12 * n_pos * n_vectors * model.cfg.d_model))


class EdgeRunner:
    """Runs sets of patched edges of a task exactly (``TaskCircuit``'s runner).

    ``clean_metric`` and ``corrupted_metric``: the metric's mean over the examples, unpatched
    and with every edge patched (the corrupted run)."""

    def __init__(
        self, model: HookedAutoModel, rows: TaskRows, *, graph: EdgeGraph | None = None, budget: int = DEFAULT_BUDGET
    ) -> None:
        self.model, self.rows = model, rows
        self.graph = graph or edge_graph(model.cfg)
        self.budget = budget
        none = torch.zeros(2, self.graph.n_edges, dtype=torch.bool)
        none[1] = True
        self.clean_metric, self.corrupted_metric = (float(v) for v in self.run(none))

    def run(self, patched: Tensor, progress: bool = False) -> Tensor:
        """The mean metric [n_sets] of each set of patched edges (bool [n_sets, n_edges]; True: patched)."""
        patched = torch.as_tensor(patched)
        if patched.dim() != 2 or patched.shape[1] != self.graph.n_edges or patched.dtype != torch.bool:
            got = f"{patched.dtype} {tuple(patched.shape)}"
            raise ValueError(f"patched must be a bool tensor [n_sets, {self.graph.n_edges}], got {got}")
        model, rows = self.model, self.rows
        n_sets, n_pos = patched.shape[0], rows.clean.shape[1]
        rank, _ = world(model.device)
        mine = shard(rows.n)  # this process's examples (all of them in a single process)
        per_pass = row_budget(model, n_pos, len(self.graph.senders), self.budget)
        per_batch = min(max(1, len(mine)), per_pass)
        copies = max(1, per_pass // per_batch)
        dense = self.graph.dense(patched.float())  # [n_sets, sender, receiver]
        totals = torch.zeros(n_sets)
        jobs = [(s, c) for s in range(mine.start, mine.stop, per_batch) for c in range(0, n_sets, copies)]
        source = None
        shown = progress and rank == 0 and len(jobs) >= 4
        for start, first in progress_bar(jobs, "circuits", "pass", enabled=shown):
            stop = min(mine.stop, start + per_batch)
            if source is None or source[0] != start:  # the corrupted run's outputs, once per example batch
                mask = None if rows.mask is None else rows.mask[start:stop]
                source = (start, sender_outputs(model, rows.corrupted[start:stop], mask))
            sets = dense[first : first + copies]
            k, b = sets.shape[0], stop - start
            batch = rows.batch(start, stop, k)
            edge_pass = EdgePass(model, self.graph, source[1], sets.repeat_interleave(b, 0).to(model.device))
            with torch.no_grad():
                values = forward_metric(model, edge_pass, rows, batch)
            totals[first : first + k] += values.view(k, b).sum(1).cpu()
        return all_sum(totals) / rows.n


def edge_scores(
    model: HookedAutoModel,
    rows: TaskRows,
    *,
    graph: EdgeGraph | None = None,
    method: str = "attribution",
    steps: int = 5,
    budget: int = DEFAULT_BUDGET,
    progress: bool = False,
) -> Tensor:
    """Every edge's estimated drop in the metric when it alone is patched, the mean over the
    examples: [n_edges] in ``graph``'s edge order (module doc)."""
    if method not in METHODS:
        raise ValueError(f"method must be 'attribution' or 'integrated', got {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    graph = graph or edge_graph(model.cfg)
    n_pos = rows.clean.shape[1]
    rank, _ = world(model.device)
    mine = shard(rows.n)  # this process's examples (all of them in a single process)
    per_batch = min(max(1, len(mine)), row_budget(model, n_pos, len(graph.senders) + len(graph.receivers), budget))
    alphas, weights = ([0.0], [1.0]) if method == "attribution" else quadrature(steps)
    total = torch.zeros(len(graph.senders), len(graph.receivers))
    starts = range(mine.start, mine.stop, per_batch)
    for start in progress_bar(starts, "edge scores", "batch", enabled=progress and rank == 0 and len(starts) >= 2):
        stop = min(mine.stop, start + per_batch)
        mask = None if rows.mask is None else rows.mask[start:stop]
        source = sender_outputs(model, rows.corrupted[start:stop], mask)
        diff = source - sender_outputs(model, rows.clean[start:stop], mask)
        grads = torch.zeros(diff.shape[0], len(graph.receivers), *diff.shape[2:], device=diff.device)
        for alpha, weight in zip(alphas, weights, strict=True):
            shift = alpha * diff[:, 0] if alpha > 0 else None
            grads += weight * receiver_gradients(model, graph, rows, rows.batch(start, stop), shift)
        total += torch.einsum("bspd,brpd->sr", diff, grads).cpu()
    return -graph.per_edge(all_sum(total)) / rows.n


def receiver_gradients(
    model: HookedAutoModel, graph: EdgeGraph, rows: TaskRows, batch: tuple, embed_shift: Tensor | None
) -> Tensor:
    """dm/dx_v at every receiver input, [batch, receiver, pos, d_model], from one forward and
    one backward pass (the embeddings shifted by ``embed_shift``)."""
    edge_pass = EdgePass(model, graph, leaves=True, embed_shift=embed_shift)
    with frozen_parameters(model.hf_model), torch.enable_grad():
        values = forward_metric(model, edge_pass, rows, batch)
        keys = list(edge_pass.leaves)
        found = torch.autograd.grad(values.sum(), [edge_pass.leaves[k] for k in keys], allow_unused=True)
    ids = batch[0]
    out = torch.zeros(ids.shape[0], len(graph.receivers), ids.shape[1], model.cfg.d_model, device=ids.device)
    for (kind, layer), grad in zip(keys, found, strict=True):
        if grad is None:
            continue
        if kind == "heads":  # [batch, pos, receivers, d_model]
            out[:, edge_pass.receivers(layer)] = grad.float().transpose(1, 2)
        elif kind == "mlp":
            out[:, edge_pass.receivers(layer).stop] = grad.float()
        else:
            out[:, -1] = grad.float()
    return out
