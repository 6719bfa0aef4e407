"""``InformationFlow``: the result of ``trace_information_flow`` (docs/mathematics.md#information-flow).

It behaves as the original's list, one value per analysed layer, and carries the evidence:

- ``method="attribution"`` (default): ``head_scores`` [analysed layers, heads] is the
  estimated drop in the metric at dst when that head's dst <- src edge is knocked out
  (positive: the head carries something dst's prediction needs; negative: something that
  works against it); the list value of a layer is f_l = sum_h head_scores[l, h]. Edges
  i <- j between src and dst carry the same estimate for knocking out that edge; routes
  chain them from src to dst, as strong as their weakest edge.
- ``method="integrated"``: the same questions, each head's score its share of the drop
  when the dst <- src edge is knocked out in every analysed layer at once, integrated
  along the scaled knockout; a layer's value estimates that layer's joint knockout.
- ``method="routes"``: Information Flow Routes (proximity importances); the head score is
  the flow it carries into dst, the list value of a layer the share of dst's residual
  stream that traces back to src.

With verification, ``verification`` holds exact knockouts beside their estimates, and the
per-layer values (attribution, integrated) are the exact drops, each layer's ``estimate``
beside; without it they are estimates, and ``exact_values`` says which.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from arrakis.circuits.flow import RESIDUAL

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METHODS = ("attribution", "integrated", "routes")
CAUSAL = ("attribution", "integrated")  # methods whose numbers are (estimated) drops in the metric


@dataclass
class HeadFlow:
    """One head of one layer, at the destination position.

    ``score``: with attribution, the estimated drop in the metric when the head's dst <- src
    edge is knocked out; with routes, the flow it carries into dst. ``exact``: the drop an
    exact knockout gives, where it was verified. The other fields are the routes method's.
    """

    head: int
    attention: float  # A[h, dst, src]
    score: float
    exact: float | None = None
    contribution_norm: float | None = None  # routes: ||A[h, dst, src] v_src W_O[h]||_2
    importance: float | None = None  # routes: importance of that src -> dst part of dst's residual stream
    importance_total: float | None = None  # routes: of all of the head's parts at dst (every key)
    carried: float | None = None  # routes: sum_j importance[h, dst, j] * f_prev(j)
    first_order: float | None = None  # integrated: the first-order estimate, for comparison
    joint_share: float | None = None  # integrated: its share of every analysed layer's edge knocked out at once


@dataclass
class LayerFlow:
    """What happened at dst in one layer; ``flow`` is the list value (see the module doc)."""

    layer: int
    flow: float
    heads: list[HeadFlow] = field(default_factory=list)
    exact: float | None = None  # attribution, verified: the drop when dst <- src is knocked out in all heads
    estimate: float | None = None  # attribution, integrated: the estimate of that same joint knockout
    residual_share: float | None = None  # routes: importance of dst's own residual stream
    bias_share: float | None = None  # routes: importance of b_O


@dataclass
class Hop:
    layer: int
    head: int  # RESIDUAL (-1) for staying in the residual stream (routes method)
    source: int
    target: int


@dataclass(frozen=True)
class FlowEdge:
    """One attention edge of a trace: head ``head`` of layer ``layer`` moving information from
    position j to position i, between graph nodes ``source`` = (layer, j) and ``target`` =
    (layer + 1, i).

    ``score``: with attribution, the estimated drop in the metric when the edge is knocked
    out; with routes, the flow it carries, ``flow`` = ``importance`` x f_layer(j), where
    ``importance`` is the part's share of position i's residual stream (routes only; a
    RESIDUAL edge stays at one position)."""

    layer: int
    head: int  # RESIDUAL (-1) for staying in a position's residual stream (routes method)
    source: tuple[int, int]
    target: tuple[int, int]
    score: float
    importance: float | None = None
    flow: float | None = None

    @classmethod
    def at(
        cls, layer: int, head: int, source: int, target: int, score: float, *, importance: float | None = None
    ) -> FlowEdge:
        """The edge of ``head`` in ``layer`` from position ``source`` to position ``target``;
        with ``importance`` (routes), ``score`` is the flow it carries."""
        flow = None if importance is None else score
        return cls(layer, head, (layer, source), (layer + 1, target), score, importance, flow)

    def attributes(self) -> dict[str, Any]:
        """The fields that are set (the routes' importance and flow only where they are)."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    def to_dict(self) -> dict[str, Any]:
        return {**self.attributes(), "source": list(self.source), "target": list(self.target)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlowEdge:
        return cls(**{**data, "source": tuple(data["source"]), "target": tuple(data["target"])})


@dataclass
class FlowPath:
    """A src -> ... -> dst route. Attribution: its hops are heads and its score is its weakest
    edge's estimated drop; routes: one hop per layer and the product of their importances."""

    score: float
    hops: list[Hop]

    def heads(self) -> list[tuple[int, int]]:
        return [(hop.layer, hop.head) for hop in self.hops if hop.head != RESIDUAL]

    def describe(self) -> str:
        text, position = f"{self.hops[0].source}" if self.hops else "", None
        for hop in self.hops:
            if hop.head != RESIDUAL:
                text += f" -L{hop.layer}H{hop.head}-> {hop.target}"
            position = hop.target
        return f"{text or position} ({self.score:.3g})"


class InformationFlow(list):
    """One value per analysed layer (as the original returned), with the evidence:
    ``layers`` (per-layer, per-head detail), ``head_scores``, ``top_heads``,
    ``suppressors``, ``paths``, ``edges``, ``graph`` (a networkx.MultiDiGraph), ``metric`` and,
    when verified, ``verification``."""

    def __init__(
        self,
        layers: list[LayerFlow],
        *,
        src_pos: int,
        dst_pos: int,
        tokens: list[int],
        top_heads: list[tuple[int, int]],
        paths: list[FlowPath],
        edges: list[FlowEdge],
        method: str = "attribution",
        str_tokens: list[str] | None = None,
        metric: dict[str, Any] | None = None,
        verification: dict[str, Any] | None = None,
        notes: list[str] | None = None,
        all_layers: dict[str, Any] | None = None,
        n_examples: int | None = None,
    ) -> None:
        super().__init__(layer.flow for layer in layers)
        self.layers, self.src_pos, self.dst_pos, self.tokens = layers, src_pos, dst_pos, tokens
        self.top_heads, self.paths, self.edges, self.method = top_heads, paths, edges, method
        self.str_tokens, self.metric, self.verification = str_tokens, metric, verification
        self.notes = list(notes or [])
        self.n_examples = n_examples  # of a task: the values are means over this many examples
        # the dst <- src edge knocked out in every head of every analysed layer at once
        self.all_layers = dict(all_layers or {"estimate": None, "exact": None})

    @property
    def exact_values(self) -> bool:
        """Whether the per-layer values (the list) are exact knockouts, not estimates."""
        return self.method in CAUSAL and bool(self.layers) and all(lf.exact is not None for lf in self.layers)

    def use_exact(self) -> None:
        """After verification: each layer's value becomes its exact drop (its estimate stays
        in ``LayerFlow.estimate``)."""
        if self.method not in CAUSAL:
            return
        for lf in self.layers:
            if lf.exact is not None:
                lf.flow = lf.exact
        self[:] = [lf.flow for lf in self.layers]

    @property
    def layer_ids(self) -> list[int]:
        """The analysed layers, in the order of the list and of ``head_scores``' rows."""
        return [layer.layer for layer in self.layers]

    @property
    def head_scores(self) -> Tensor:
        """[analysed layers, heads] (rows in ``layer_ids`` order; all layers by default, so
        row l is layer l): each head's score, as ``HeadFlow.score``."""
        return torch.tensor([[h.score for h in layer.heads] for layer in self.layers], dtype=torch.float32)

    @property
    def suppressors(self) -> list[tuple[int, int]]:
        """Heads whose dst <- src edge works against the metric, most negative first (as
        many as ``top_heads`` holds at most)."""
        heads = [(lf.layer, h.head, h.score) for lf in self.layers for h in lf.heads if h.score < 0]
        heads.sort(key=lambda item: (item[2], item[:2]))
        return [(layer, head) for layer, head, _ in heads[: max(1, len(self.top_heads))]]

    def score(self, layer: int, head: int) -> float:
        """The score of head ``head`` of (analysed) layer ``layer``."""
        for lf in self.layers:
            if lf.layer == layer:
                return lf.heads[head].score
        raise ValueError(f"layer {layer} was not analysed; analysed layers: {self.layer_ids}")

    @property
    def graph(self) -> Any:
        """A networkx.MultiDiGraph of (layer, position) nodes, one edge per head, keyed and
        labelled by it ("L3H2", or "residual").

        Node (l, i) is position i's residual stream entering layer l; an edge (l, j) ->
        (l + 1, i) is head h of layer l moving information from j to i, with its ``score``
        (attribution: estimated drop when it is knocked out; routes: the flow it carries).
        Residual edges (l, i) -> (l + 1, i) join each position's nodes from one analysed
        layer to the next, so graph paths from (first layer, src) to (last + 1, dst) are routes.
        """
        import networkx as nx

        graph = nx.MultiDiGraph(src=self.src_pos, dst=self.dst_pos, method=self.method)
        words = self.str_tokens if self.str_tokens else self.tokens
        # the stream entering and leaving each analysed layer (layers may skip)
        boundaries = sorted({b for layer in self.layer_ids for b in (layer, layer + 1)})
        nodes = {e.source for e in self.edges} | {e.target for e in self.edges}
        if self.method in CAUSAL and boundaries:
            nodes |= {(boundaries[0], self.src_pos), (boundaries[-1], self.dst_pos)}
        for node in sorted(nodes):
            graph.add_node(node, layer=node[0], position=node[1], token=words[node[1]])
        for edge in self.edges:
            label = "residual" if edge.head == RESIDUAL else f"L{edge.layer}H{edge.head}"
            graph.add_edge(edge.source, edge.target, key=label, **edge.attributes(), label=label)
        if self.method in CAUSAL:  # staying in the residual stream is free
            positions = {node[1] for node in nodes}
            for position in positions:
                for a, b in pairwise(boundaries):
                    if not graph.has_edge((a, position), (b, position), key="residual"):
                        graph.add_edge(
                            (a, position), (b, position), key="residual", head=RESIDUAL, layer=a, label="residual"
                        )
        return graph

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "flows": list(self),
            "src_pos": self.src_pos,
            "dst_pos": self.dst_pos,
            "tokens": self.tokens,
            "str_tokens": self.str_tokens,
            "metric": self.metric,
            "layers": [asdict(layer) for layer in self.layers],
            "top_heads": [list(h) for h in self.top_heads],
            "paths": [asdict(p) for p in self.paths],
            "edges": [edge.to_dict() for edge in self.edges],
            "verification": self.verification,
            "notes": self.notes,
            "all_layers": self.all_layers,
            "n_examples": self.n_examples,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InformationFlow:
        layers = [LayerFlow(**{**d, "heads": [HeadFlow(**h) for h in d["heads"]]}) for d in data["layers"]]
        paths = [FlowPath(p["score"], [Hop(**h) for h in p["hops"]]) for p in data["paths"]]
        edges = [FlowEdge.from_dict(e) for e in data["edges"]]
        return cls(
            layers,
            src_pos=data["src_pos"],
            dst_pos=data["dst_pos"],
            tokens=data["tokens"],
            top_heads=[tuple(h) for h in data["top_heads"]],
            paths=paths,
            edges=edges,
            method=data.get("method", "routes"),
            str_tokens=data.get("str_tokens"),
            metric=data.get("metric"),
            verification=data.get("verification"),
            notes=data.get("notes"),
            all_layers=data.get("all_layers"),
            n_examples=data.get("n_examples"),
        )

    def plot(self, ax: Any = None, *, n_labels: int = 8) -> Figure:
        """The routes over tokens x layers with the carrying heads named, the value per layer,
        and every head's score (a matplotlib Figure; see ``arrakis.viz.flow``). With ``ax``,
        only the route graph is drawn there."""
        from arrakis.viz.flow import plot_information_flow

        return plot_information_flow(self, ax=ax, n_labels=n_labels)

    def _repr_html_(self) -> str:
        from arrakis.viz.html import information_flow_html

        return information_flow_html(self)

    def layer_text(self, lf: LayerFlow) -> str:
        """One layer's value, said whether exact or estimated, the estimate beside the exact."""
        if self.method not in CAUSAL:
            return f"L{lf.layer} {lf.flow:.3g}"
        if lf.exact is None:
            return f"L{lf.layer} {lf.flow:+.3g} (estimate)"
        estimate = "" if lf.estimate is None else f", estimate {lf.estimate:+.3g}"
        return f"L{lf.layer} {lf.exact:+.3g} (exact{estimate})"

    def all_layers_text(self) -> str:
        """The all-layers knockout: exact beside its estimate, or the estimate, labelled."""
        estimate, exact = self.all_layers.get("estimate"), self.all_layers.get("exact")
        parts = [] if exact is None else [f"{exact:+.3g} exact"]
        if estimate is not None:
            parts.append(f"{estimate:+.3g} estimated")
        return " / ".join(parts) or "-"

    def summary(self) -> str:
        """A few lines: the question, the per-layer values (exact or estimated, said which),
        the all-layers knockout, the top heads, the agreement with exact knockouts, the notes."""
        m = self.metric or {}
        lines = [
            f"{self.method} flow {self.src_pos} -> {self.dst_pos} over {len(self.layers)} layers"
            + (f", mean over {self.n_examples} examples" if self.n_examples is not None else "")
            + (f", metric {m['formula']} = {m['clean']:.3g}" if m.get("formula") else "")
        ]
        strongest = sorted(self.layers, key=lambda lf: -abs(lf.flow))[:5]
        kind = "exact knockouts" if self.exact_values else "estimates" if self.method in CAUSAL else "flow"
        lines.append(f"strongest layers ({kind}): " + ", ".join(self.layer_text(lf) for lf in strongest))
        if self.method in CAUSAL:
            lines.append(f"all layers knocked out at once: {self.all_layers_text()}")
        heads = ", ".join(f"L{layer}H{head} {self.score(layer, head):+.3g}" for layer, head in self.top_heads[:5])
        lines.append(f"top heads: {heads or '-'}")
        v = self.verification or {}
        checks = [
            f"Spearman over {name} {v[f'spearman_{name}']:.3f}"
            for name in ("heads", "layers")
            if v.get(f"spearman_{name}") is not None
        ]
        if v.get("top_overlap"):
            checks.append(f"top-{v['top_overlap']['k']} overlap {v['top_overlap']['overlap']}")
        if checks:
            lines.append("estimates vs exact knockouts: " + ", ".join(checks))
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)

    def __repr__(self) -> str:
        body = self.summary().replace("\n", "\n  ")
        return f"InformationFlow(\n  {body}\n)"
