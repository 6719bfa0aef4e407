"""``TaskCircuit``: a task's edges ranked by an estimate of what patching each one costs the
metric, and the checks that make the ranking a circuit: how much of the behaviour the top-n
edges keep when every other edge is patched (``faithfulness``, ``curve``), and whether the
estimates match exact single-edge patching (``verify``).

Patching an edge u -> v replaces u's output by the corrupted run's in v's input only. A
circuit is run by patching every edge NOT in it, all in one forward pass (the runner's job).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from arrakis.circuits.attribution import spearman

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from arrakis.models.edge_graph import EdgeGraph

logger = logging.getLogger(__name__)

N_CURVE_SIZES = 12  # about this many log-spaced circuit sizes in a default curve
N_READ = 200  # readers() looks at the heads with an edge among this many top edges
N_PER_CHANNEL = 5  # readers() lists this many senders per channel
GAP_TOLERANCE = 1e-8


class CircuitRunner(Protocol):
    """Runs patched forward passes of one task (``arrakis.models.edge_patching``)."""

    graph: EdgeGraph
    clean_metric: float  # mean metric over the task's examples, clean run
    corrupted_metric: float  # mean metric, corrupted run

    def run(self, patched: Tensor, progress: bool = False) -> Tensor:
        """bool [n_circuits, n_edges] (True: patched) -> float32 [n_circuits] mean metrics."""
        ...


@dataclass(frozen=True)
class CircuitEdge:
    """One edge of the graph and its score: the estimated drop in the metric (clean minus
    patched) when this edge alone is patched. ``receiver`` is the reading node without its
    channel (``L17H3``, ``L17KV1``, ``MLP4``, ``logits``); ``channel`` is q, k or v for a head."""

    sender: str
    receiver: str
    channel: str | None
    score: float
    index: int

    @property
    def name(self) -> str:
        """``L16H0 -> L17H3 (K)``."""
        channel = f" ({self.channel.upper()})" if self.channel else ""
        return f"{self.sender} -> {self.receiver}{channel}"

    def __str__(self) -> str:
        return f"{self.name}  {self.score:+.3f}"


def trapezoid(x: list[float], y: list[float]) -> float:
    """The trapezoid rule's area under y(x) over the given points."""
    return float(sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(x, x[1:], y, y[1:], strict=False)))


@dataclass(frozen=True)
class CircuitCurve:
    """Faithfulness of the top-n circuits (and of random circuits of the same sizes) against
    the fraction of edges kept. Faithfulness is (m_circuit - m_corrupted) / (m_clean -
    m_corrupted): 1 means the circuit alone, every other edge patched, keeps the whole clean
    behaviour, 0 means it keeps none of it.

    ``area`` is the trapezoid-rule area under the faithfulness curve over the fraction of
    edges (MIB's CPR, higher is better); ``area_between`` the area under |1 - faithfulness|
    (MIB's CMD, lower is better); ``random_area`` and ``random_area_between`` the same for
    the random baseline (mean over ``random_draws``, one row of draws per size).
    """

    sizes: tuple[int, ...]
    fractions: tuple[float, ...]
    faithfulness: tuple[float, ...]
    random: tuple[float, ...]
    random_draws: tuple[tuple[float, ...], ...]
    area: float
    area_between: float
    random_area: float
    random_area_between: float
    n_edges: int

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["random_draws"] = [list(draws) for draws in self.random_draws]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def __repr__(self) -> str:
        lines = [f"CircuitCurve({self.n_edges} edges; area {self.area:.3f} (random {self.random_area:.3f}), "]
        lines[0] += f"area between {self.area_between:.3f} (random {self.random_area_between:.3f}))"
        lines.append(f"  {'size':>7} {'fraction':>9} {'faithful':>9} {'random':>9}")
        for size, fraction, top, rand in zip(self.sizes, self.fractions, self.faithfulness, self.random, strict=True):
            lines.append(f"  {size:>7} {fraction:>9.4f} {top:>9.3f} {rand:>9.3f}")
        return "\n".join(lines)

    def plot(self) -> Figure:
        """Faithfulness against the fraction of edges (log axis), the random baseline dashed."""
        from arrakis.viz.task_circuit import plot_circuit_curve

        return plot_circuit_curve(self)


@dataclass(frozen=True)
class CircuitVerification:
    """Exact single-edge patching of the top edges against their scores. ``exact`` is
    clean_metric minus the metric with that edge alone patched, which is what each ``score``
    estimates; ``spearman`` is the rank correlation of the two (NaN for fewer than 2 edges
    or constant values)."""

    edges: tuple[str, ...]
    scores: tuple[float, ...]
    exact: tuple[float, ...]
    spearman: float

    @property
    def rows(self) -> list[tuple[str, float, float]]:
        """(edge name, score, exact drop) per verified edge, in ranking order."""
        return list(zip(self.edges, self.scores, self.exact, strict=True))

    @property
    def largest_error(self) -> float:
        """The largest |score - exact| over the verified edges."""
        return max((abs(s - e) for s, e in zip(self.scores, self.exact, strict=True)), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        rows = [list(row) for row in self.rows]
        return {"rows": rows, "spearman": self.spearman, "largest_error": self.largest_error}

    def __repr__(self) -> str:
        lines = [f"CircuitVerification({len(self.edges)} edges, Spearman {self.spearman:.3f}, "]
        lines[0] += f"largest |score - exact| {self.largest_error:.3g})"
        width = max((len(name) for name in self.edges), default=4)
        lines.append(f"  {'edge':<{width}} {'score':>9} {'exact':>9}")
        lines += [f"  {name:<{width}} {score:>+9.3f} {exact:>+9.3f}" for name, score, exact in self.rows]
        return "\n".join(lines)


def check_count(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in [low, high], else a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int in {low}..{high}, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {value}")
    return value


class TaskCircuit:
    """A task's edges ranked by |score|, with the runner that checks them.

    Attributes:
        graph: the model's edge graph (senders, receivers, edges).
        scores: float [n_edges], each edge's estimated drop in the metric (clean minus
            patched) when that edge alone is patched; positive: the task needs the edge.
        runner: runs patched forward passes on the task (``CircuitRunner``).
        clean_metric, corrupted_metric: the task's mean metric on the clean and corrupted runs.
        method, steps, task, metric: how the scores were estimated, on what.
        notes: what qualifies the numbers.
    """

    def __init__(
        self,
        graph: EdgeGraph,
        scores: Tensor,
        runner: CircuitRunner,
        *,
        method: str,
        steps: int | None = None,
        task: str = "",
        metric: str = "",
        notes: tuple[str, ...] | list[str] = (),
    ) -> None:
        if not isinstance(scores, Tensor):
            raise TypeError(f"scores must be a tensor of shape ({graph.n_edges},), got {type(scores).__name__}")
        if tuple(scores.shape) != (graph.n_edges,):
            raise ValueError(f"scores must have shape ({graph.n_edges},) (one per edge), got {tuple(scores.shape)}")
        if not bool(torch.isfinite(scores).all()):
            raise ValueError("scores must be finite (no NaN or inf)")
        if runner.graph.n_edges != graph.n_edges:
            raise ValueError(f"the runner's graph has {runner.graph.n_edges} edges, the scores' {graph.n_edges}")
        self.graph, self.runner = graph, runner
        self.scores = scores.detach().float().cpu()
        self.method, self.steps, self.task, self.metric = method, steps, task, metric
        self.notes = list(notes)
        cfg = graph.cfg
        if cfg.n_kv_heads < cfg.n_heads:
            self.notes.append(
                f"grouped-query attention: K and V receivers are KV heads ({cfg.n_heads // cfg.n_kv_heads} "
                "query heads per KV head); readers() lists a KV head's K and V senders under every "
                "query head of its group"
            )
        # stable sort on -|score|: ties keep the edge order
        self.order = torch.sort(-self.scores.abs(), stable=True).indices

    @property
    def clean_metric(self) -> float:
        return float(self.runner.clean_metric)

    @property
    def corrupted_metric(self) -> float:
        return float(self.runner.corrupted_metric)

    @property
    def n_edges(self) -> int:
        return self.graph.n_edges

    @cached_property
    def edges(self) -> list[CircuitEdge]:
        """Every edge with its score, largest |score| first (ties by edge index)."""
        out = []
        for index in self.order.tolist():
            s, r = self.graph.edges[index].tolist()
            sender, receiver = self.graph.senders[s].name, self.graph.receivers[r]
            base = replace(receiver, channel=None).name
            out.append(CircuitEdge(sender, base, receiver.channel, float(self.scores[index]), index))
        return out

    def top_edges(self, n: int = 10) -> list[CircuitEdge]:
        """The ``n`` edges of largest |score|."""
        return self.edges[: check_count("n", n, 0, self.n_edges)]

    def circuit(self, n: int) -> Tensor:
        """bool [n_edges]: True for the ``n`` edges of largest |score| (the circuit of size n)."""
        mask = torch.zeros(self.n_edges, dtype=torch.bool)
        mask[self.order[: check_count("n", n, 0, self.n_edges)]] = True
        return mask

    def _gap(self) -> float:
        gap = self.clean_metric - self.corrupted_metric
        if abs(gap) < GAP_TOLERANCE:
            raise ValueError(
                f"the clean and corrupted metrics are equal ({self.clean_metric:.6g}): the corruption does not "
                "move the metric, so no circuit can be faithful to a difference; pick another corruption"
            )
        return gap

    def _run(self, patched: Tensor, progress: bool) -> list[float]:
        """The runner's metric for each row of ``patched`` (equal rows run once), shape checked."""
        unique, inverse = torch.unique(patched, dim=0, return_inverse=True)
        logger.debug("running %d patched circuits (%d asked)", unique.shape[0], patched.shape[0])
        out = self.runner.run(unique, progress=progress)
        if tuple(out.shape) != (unique.shape[0],):
            raise RuntimeError(f"the runner returned shape {tuple(out.shape)} for {unique.shape[0]} circuits")
        return [float(v) for v in out.detach().float().cpu()[inverse].tolist()]

    def _faithful(self, metrics: list[float]) -> list[float]:
        return [(m - self.corrupted_metric) / self._gap() for m in metrics]

    def faithfulness(self, n: int | list[int], *, progress: bool = False) -> float | list[float]:
        """How much of the behaviour the top-n circuit keeps: (m_circuit - m_corrupted) /
        (m_clean - m_corrupted), where m_circuit is the metric with every edge outside the
        circuit patched. 1: the circuit alone carries the clean behaviour; 0: none of it.
        A list of sizes is run in one runner call and gives a list."""
        sizes = list(n) if isinstance(n, list | tuple) else [n]
        if not sizes:
            raise ValueError(f"n must be an int or a non-empty list of ints in 0..{self.n_edges}")
        self._gap()
        masks = torch.stack([~self.circuit(k) for k in sizes])
        values = self._faithful(self._run(masks, progress))
        return values if isinstance(n, list | tuple) else values[0]

    def default_sizes(self) -> list[int]:
        """0, then about 12 log-spaced sizes from 1 to n_edges (n_edges always included)."""
        steps = torch.logspace(0, math.log10(self.n_edges), N_CURVE_SIZES, dtype=torch.float64)
        return sorted({0, self.n_edges, *(round(float(s)) for s in steps)})

    def curve(
        self, sizes: list[int] | None = None, n_random: int = 3, seed: int = 0, *, progress: bool = False
    ) -> CircuitCurve:
        """Faithfulness of the top-n circuit for each size, and of ``n_random`` random circuits
        of each size (drawn with a generator seeded with ``seed``), all run in one runner call.
        Areas are by the trapezoid rule over the fractions of edges the sizes give."""
        chosen = self.default_sizes() if sizes is None else [check_count("sizes", k, 0, self.n_edges) for k in sizes]
        sizes = sorted(set(chosen))
        if not sizes:
            raise ValueError(f"sizes must hold at least one int in 0..{self.n_edges}")
        n_random = check_count("n_random", n_random, 0, 1000)
        self._gap()
        generator = torch.Generator().manual_seed(int(seed))
        masks = [self.circuit(k) for k in sizes]
        for k in sizes:
            for _ in range(n_random):
                mask = torch.zeros(self.n_edges, dtype=torch.bool)
                mask[torch.randperm(self.n_edges, generator=generator)[:k]] = True
                masks.append(mask)
        values = self._faithful(self._run(~torch.stack(masks), progress))
        top, rest = values[: len(sizes)], values[len(sizes) :]
        draws = [tuple(rest[i * n_random : (i + 1) * n_random]) for i in range(len(sizes))]
        random = [sum(d) / len(d) if d else float("nan") for d in draws]
        fractions = [k / self.n_edges for k in sizes]
        return CircuitCurve(
            sizes=tuple(sizes),
            fractions=tuple(fractions),
            faithfulness=tuple(top),
            random=tuple(random),
            random_draws=tuple(draws),
            area=trapezoid(fractions, top),
            area_between=trapezoid(fractions, [abs(1 - f) for f in top]),
            random_area=trapezoid(fractions, random),
            random_area_between=trapezoid(fractions, [abs(1 - f) for f in random]),
            n_edges=self.n_edges,
        )

    def verify(self, k: int = 20, *, progress: bool = False) -> CircuitVerification:
        """Patch each of the top ``k`` edges alone, exactly (one runner call), and compare the
        drop clean_metric - m_patched with the edge's score."""
        edges = self.top_edges(check_count("k", k, 1, self.n_edges))
        masks = torch.zeros(len(edges), self.n_edges, dtype=torch.bool)
        masks[torch.arange(len(edges)), torch.tensor([e.index for e in edges])] = True
        exact = [self.clean_metric - m for m in self._run(masks, progress)]
        scores = [e.score for e in edges]
        rho = spearman(torch.tensor(scores), torch.tensor(exact))
        return CircuitVerification(tuple(e.name for e in edges), tuple(scores), tuple(exact), rho)

    def _query_heads(self, edge: CircuitEdge) -> list[str]:
        """The query heads that read through ``edge``'s receiver (a KV head's whole group)."""
        r = self.graph.receivers[int(self.graph.edges[edge.index, 1])]
        if not r.grouped:
            return [f"L{r.layer}H{r.head}"]
        size = self.graph.cfg.n_heads // self.graph.cfg.n_kv_heads
        return [f"L{r.layer}H{h}" for h in range(r.head * size, (r.head + 1) * size)]

    def readers(self, head: str | None = None) -> dict[str, dict[str, list[tuple[str, float]]]]:
        """Which senders each head reads through Q, K and V on this task: ``{"L17H3": {"q":
        [(sender, score), ...], "k": [...], "v": [...]}}``, the 5 largest |score| per channel.
        Without ``head``: every head with an edge among the top 200; with ``head`` (``"L17H3"``):
        that head only, from all its edges. Under grouped-query attention a KV head's K and V
        edges are listed under each query head of its group."""
        cfg = self.graph.cfg
        names = [f"L{layer}H{h}" for layer in range(cfg.n_layers) for h in range(cfg.n_heads)]
        if head is not None and head not in names:
            raise ValueError(
                f"head must be a query head name L<layer>H<head> with layer in 0..{cfg.n_layers - 1} and head in "
                f"0..{cfg.n_heads - 1}, got {head!r}"
            )
        pool = self.edges if head is not None else self.edges[:N_READ]
        wanted = {head} if head is not None else {h for e in pool if e.channel for h in self._query_heads(e)}
        out = {name: {"q": [], "k": [], "v": []} for name in names if name in wanted}
        for edge in pool:
            if edge.channel is None:
                continue
            for name in self._query_heads(edge):
                if name in out and len(out[name][edge.channel]) < N_PER_CHANNEL:
                    out[name][edge.channel].append((edge.sender, edge.score))
        return out

    def plot(self, kind: str = "graph", n: int = 50, curve: CircuitCurve | None = None) -> Figure:
        """``"graph"``: the top-n edges between the model's nodes (rows: layers), coloured by
        the receiver's channel, width ~ |score|. ``"curve"``: faithfulness against the fraction
        of edges, with the random baseline (``curve`` if given, else ``self.curve()``, which runs
        the model)."""
        from arrakis.viz.task_circuit import plot_circuit_curve, plot_task_circuit

        if kind == "graph":
            return plot_task_circuit(self, n=check_count("n", n, 1, self.n_edges))
        if kind == "curve":
            return plot_circuit_curve(curve if curve is not None else self.curve())
        raise ValueError(f"kind must be 'graph' or 'curve', got {kind!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "steps": self.steps,
            "task": self.task,
            "metric": self.metric,
            "clean_metric": self.clean_metric,
            "corrupted_metric": self.corrupted_metric,
            "n_edges": self.n_edges,
            "top_edges": [{"edge": e.name, **asdict(e)} for e in self.top_edges(min(100, self.n_edges))],
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        """A few lines: how the scores were made, the metrics, the top 10 edges."""
        steps = f", {self.steps} steps" if self.steps else ""
        lines = [
            f"task circuit: {self.method}{steps}, task {self.task or '?'}, {self.n_edges} edges",
            f"{self.metric or 'metric'}: clean {self.clean_metric:.3f}, corrupted {self.corrupted_metric:.3f}",
            "top edges by |estimated drop when patched alone|:",
        ]
        lines += [f"  {e}" for e in self.top_edges(min(10, self.n_edges))]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return "\n".join([self.summary(), *(f"note: {note}" for note in self.notes)])
