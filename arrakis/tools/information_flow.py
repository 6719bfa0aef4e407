"""``trace_information_flow``: how much of what a source position holds reaches a
destination position, layer by layer, which heads carry it, and along which paths.

The mathematics is in ``arrakis.circuits.flow`` (DESIGN.md §8). This module resolves the
positions, runs one forward pass keeping only the rows between src and dst, streams the
importances layer by layer (propagating influence, following the strongest paths, and
building the graph as it goes), and with ``verify=True`` checks the routes by attention
knockout.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from arrakis.circuits.flow import chunked_importances
from arrakis.models import HookedAutoModel
from arrakis.tools.base import check_index

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)
RESIDUAL = -1  # the "head" index of a residual (stay-in-place) hop
ROUTE_HOOKS = ("hook_resid_pre", "hook_attn_out", "attn.hook_pattern", "attn.hook_v")


@dataclass
class HeadFlow:
    """One head of one layer, at the destination position."""

    head: int
    attention: float  # A[h, dst, src]
    contribution_norm: float  # ||A[h, dst, src] v_src W_O[h]||_2
    importance: float  # importance of that src -> dst part of dst's residual stream
    importance_total: float  # importance of all of the head's parts at dst (every key position)
    carried: float  # flow the head brings to dst: sum_j importance[h, dst, j] * f_prev(j)


@dataclass
class LayerFlow:
    """What happened at dst in one layer."""

    layer: int
    flow: float  # f_l(dst): the share of dst's residual stream that traces back to src
    residual_share: float  # importance of dst's own residual stream
    bias_share: float  # importance of b_O
    heads: list[HeadFlow] = field(default_factory=list)


@dataclass
class Hop:
    layer: int
    head: int  # RESIDUAL (-1) for staying in the residual stream
    source: int
    target: int


@dataclass
class FlowPath:
    """A src -> ... -> dst route; its score is the product of the importances of its hops."""

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
        return f"{text or position} ({self.score:.3f})"


class InformationFlow(list):
    """The flow from src to dst at each analysed layer (a list of floats, as the original
    returned), with the evidence: ``layers`` (per-layer, per-head detail), ``top_heads``,
    ``paths``, ``graph`` (a networkx.DiGraph), and with verification ``knockout``."""

    def __init__(
        self,
        layers: list[LayerFlow],
        *,
        src_pos: int,
        dst_pos: int,
        tokens: list[int],
        top_heads: list[tuple[int, int]],
        paths: list[FlowPath],
        edges: list[dict[str, Any]],
        str_tokens: list[str] | None = None,
        knockout: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(layer.flow for layer in layers)
        self.layers, self.src_pos, self.dst_pos, self.tokens = layers, src_pos, dst_pos, tokens
        self.top_heads, self.paths, self.edges = top_heads, paths, edges
        self.str_tokens, self.knockout = str_tokens, knockout

    @property
    def graph(self) -> Any:
        """A networkx.DiGraph of (layer, position) nodes, edges labelled with their head.

        Node (l, i) is position i's residual stream entering layer l; an edge (l, j) ->
        (l + 1, i) carries ``flow`` = importance * f_l(j) through ``head`` ("L3H2" or
        "residual"). Edges carrying less than the trace's ``min_edge_flow`` are left out.
        """
        import networkx as nx

        graph = nx.DiGraph(src=self.src_pos, dst=self.dst_pos)
        for edge in self.edges:
            for node in (edge["source"], edge["target"]):
                token = self.str_tokens[node[1]] if self.str_tokens else self.tokens[node[1]]
                graph.add_node(tuple(node), layer=node[0], position=node[1], token=token)
            label = "residual" if edge["head"] == RESIDUAL else f"L{edge['layer']}H{edge['head']}"
            graph.add_edge(tuple(edge["source"]), tuple(edge["target"]), **edge, label=label)
        return graph

    def to_dict(self) -> dict[str, Any]:
        return {
            "flows": list(self),
            "src_pos": self.src_pos,
            "dst_pos": self.dst_pos,
            "tokens": self.tokens,
            "str_tokens": self.str_tokens,
            "layers": [asdict(layer) for layer in self.layers],
            "top_heads": [list(h) for h in self.top_heads],
            "paths": [asdict(p) for p in self.paths],
            "edges": self.edges,
            "knockout": self.knockout,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InformationFlow:
        layers = [LayerFlow(**{**d, "heads": [HeadFlow(**h) for h in d["heads"]]}) for d in data["layers"]]
        paths = [FlowPath(p["score"], [Hop(**h) for h in p["hops"]]) for p in data["paths"]]
        edges = [{**e, "source": tuple(e["source"]), "target": tuple(e["target"])} for e in data["edges"]]
        return cls(
            layers,
            src_pos=data["src_pos"],
            dst_pos=data["dst_pos"],
            tokens=data["tokens"],
            top_heads=[tuple(h) for h in data["top_heads"]],
            paths=paths,
            edges=edges,
            str_tokens=data.get("str_tokens"),
            knockout=data.get("knockout"),
        )

    def plot(self, ax: Any = None, *, n_labels: int = 8) -> Figure:
        """The routes over tokens x layers with the carrying heads named, the flow per layer,
        and what each head carries (a matplotlib Figure; see ``arrakis.viz.flow``). With
        ``ax``, only the route graph is drawn there."""
        from arrakis.viz.flow import plot_information_flow

        return plot_information_flow(self, ax=ax, n_labels=n_labels)

    def _repr_html_(self) -> str:
        from arrakis.viz.html import information_flow_html

        return information_flow_html(self)

    def __repr__(self) -> str:
        flows = ", ".join(f"L{layer.layer} {layer.flow:.3f}" for layer in self.layers)
        heads = ", ".join(f"L{l}H{h}" for l, h in self.top_heads[:5])  # noqa: E741
        return f"InformationFlow({self.src_pos} -> {self.dst_pos}: {flows}; top heads {heads or '-'})"


# -- resolving the question ------------------------------------------------------------------


def _token_id(model: HookedAutoModel, token: Any, what: str) -> int:
    if isinstance(token, str):
        ids = model._require_tokenizer().encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"{what} {token!r} is {len(ids)} tokens ({ids}); pass a string that is one token")
        return ids[0]
    if isinstance(token, Tensor) and token.numel() == 1:
        token = int(token)
    return check_index(token, model.cfg.d_vocab, what, "tokens in its vocabulary")


def resolve_positions(
    model: HookedAutoModel,
    input_ids: Any,
    src_token: Any,
    dst_token: Any,
    src_pos: int | None,
    dst_pos: int | None,
    batch_index: int | None,
) -> tuple[Tensor, int, int]:
    """The one sequence to analyse ([1, pos]) and the src and dst positions in it."""
    ids = model.check_input_ids(input_ids)
    if batch_index is None:
        if ids.shape[0] != 1:
            raise ValueError(f"input_ids holds a batch of {ids.shape[0]} sequences; pass batch_index= to pick one")
        batch_index = 0
    batch_index = check_index(batch_index, ids.shape[0], "batch_index", "sequences in the batch")
    ids = ids[batch_index : batch_index + 1]
    row, n_pos = ids[0].tolist(), ids.shape[1]
    if dst_pos is None:
        if dst_token is None:
            raise ValueError("give dst_token (a token id or string) or dst_pos")
        token = _token_id(model, dst_token, "dst_token")
        if token not in row:
            raise ValueError(f"dst_token {dst_token!r} (id {token}) does not occur in the prompt")
        dst_pos = n_pos - 1 - row[::-1].index(token)  # its last occurrence
    dst_pos = check_index(dst_pos, n_pos, "dst_pos", "positions in the prompt")
    if src_pos is None:
        if src_token is None:
            raise ValueError("give src_token (a token id or string) or src_pos")
        token = _token_id(model, src_token, "src_token")
        before = row[:dst_pos]
        if token not in before:
            raise ValueError(
                f"src_token {src_token!r} (id {token}) does not occur before dst (position {dst_pos}); "
                "src must come before dst"
            )
        src_pos = dst_pos - 1 - before[::-1].index(token)  # its last occurrence before dst
    src_pos = check_index(src_pos, n_pos, "src_pos", "positions in the prompt")
    if src_pos >= dst_pos:
        raise ValueError(f"src_pos {src_pos} must come before dst_pos {dst_pos}: information flows forward")
    return ids, src_pos, dst_pos


def resolve_layers(n_layers: int | None, layers: Any, total: int) -> list[int]:
    """``layers`` if given (sorted, unique), else the first ``n_layers`` (None: all)."""
    if layers is not None:
        chosen = sorted({check_index(layer, total, "layer", "layers") for layer in layers})
        if not chosen:
            raise ValueError("layers is empty; pass at least one layer")
        return chosen
    if n_layers is None:
        return list(range(total))
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 1 <= n_layers <= total:
        raise ValueError(f"n_layers must be between 1 and {total} (this model's layers) or None, got {n_layers!r}")
    return list(range(n_layers))


# -- tracing ---------------------------------------------------------------------------------


def trace(
    model: HookedAutoModel,
    ids: Tensor,
    src: int,
    dst: int,
    layers: list[int],
    *,
    top_k: int = 5,
    n_paths: int = 5,
    min_edge_flow: float = 0.01,
    verify: bool = False,
) -> InformationFlow:
    """The routes from src to dst through ``layers`` of one sequence ``ids`` [1, pos]."""
    names = {f"blocks.{layer}.{hook}" for layer in layers for hook in ROUTE_HOOKS}

    def rows_only(name: str, tensor: Tensor) -> Tensor:
        # keep only what the routes read: rows src..dst, keys ..dst (never T^2 x H x D)
        if name.endswith("hook_pattern"):  # [batch, head, query_pos, key_pos]
            return tensor[0, :, src : dst + 1, : dst + 1].float()
        if name.endswith("hook_v"):  # [batch, pos, head, d_head]
            return tensor[0, : dst + 1].float()
        return tensor[0, src : dst + 1].float()  # [batch, pos, d_model]

    output, cache = model.run_with_cache(ids, names=names, transform=rows_only)
    weights = model.head_weights()
    n_rows, n_keys = dst - src + 1, dst + 1
    f_prev = torch.zeros(n_keys)
    f_prev[src] = 1.0
    beam = torch.zeros(n_rows, n_paths)  # best path scores ending at each row
    beam[0, 0] = 1.0
    pointers: list[Tensor] = []  # per layer [rows, n_paths, 3]: (head or RESIDUAL, source row, slot)
    layer_flows: list[LayerFlow] = []
    edges: list[dict[str, Any]] = []
    for layer in layers:
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [head, rows, keys]
        v = cache[f"blocks.{layer}.attn.hook_v"]  # [keys, head, d_head]
        W_O, b_O = weights.W_O[layer].to(v.device), weights.b_O[layer].to(v.device)
        value_out = torch.einsum("khd,hdm->khm", v, W_O)  # [keys, head, d_head] x [head, d_head, D]
        residual = cache[f"blocks.{layer}.hook_resid_pre"]
        y = residual + cache[f"blocks.{layer}.hook_attn_out"]  # [rows, D]
        f_new = torch.zeros(n_keys)
        layer_pointers = torch.zeros(n_rows, n_paths, 3, dtype=torch.long)
        new_beam = torch.zeros(n_rows, n_paths)
        chunks = chunked_importances(y, residual, pattern, value_out, b_O, first_key_row=src)
        for rows, imp_res, imp_heads, imp_bias in chunks:
            positions = torch.arange(rows.start, rows.stop) + src
            f_keys = f_prev[: imp_heads.shape[-1]]  # this chunk's keys
            carried = imp_heads @ f_keys  # [head, rows, keys] x [keys] -> [head, rows]
            f_new[positions] = imp_res * f_prev[positions] + carried.sum(0)
            _follow_paths(beam, imp_res, imp_heads[:, :, src:], rows, new_beam, layer_pointers)
            edges += _edges(layer, positions, imp_res, imp_heads, f_keys, min_edge_flow)
            if rows.stop == n_rows:  # the chunk holding dst: record its detail
                layer_flows.append(
                    _layer_detail(layer, f_new[dst], imp_res, imp_heads, imp_bias, carried, pattern, value_out, src)
                )
        f_prev, beam = f_new, new_beam
        pointers.append(layer_pointers)
    heads = sorted(
        ((lf.layer, h.head, h.carried) for lf in layer_flows for h in lf.heads), key=lambda item: (-item[2], item[:2])
    )
    top_heads = [(layer, head) for layer, head, carried in heads[:top_k] if carried > 0]
    paths = _backtrack(beam, pointers, layers, src)
    str_tokens = model.to_str_tokens(ids) if model.tokenizer is not None else None
    knockout = _knockout(model, ids, src, dst, layers, top_heads, output.logits[0, dst]) if verify else None
    return InformationFlow(
        layer_flows,
        src_pos=src,
        dst_pos=dst,
        tokens=ids[0].tolist(),
        top_heads=top_heads,
        paths=paths,
        edges=edges,
        str_tokens=str_tokens,
        knockout=knockout,
    )


def _layer_detail(layer, flow, imp_res, imp_heads, imp_bias, carried, pattern, value_out, src) -> LayerFlow:
    """Per-head numbers at dst (the last row of the last chunk)."""
    heads = []
    for h in range(pattern.shape[0]):
        attention = float(pattern[h, -1, src])
        heads.append(
            HeadFlow(
                head=h,
                attention=attention,
                contribution_norm=float((attention * value_out[src, h]).norm()),
                importance=float(imp_heads[h, -1, src]),
                importance_total=float(imp_heads[h, -1].sum()),
                carried=float(carried[h, -1]),
            )
        )
    return LayerFlow(layer, float(flow), float(imp_res[-1]), float(imp_bias[-1]), heads)


def _edges(layer, positions, imp_res, imp_heads, f_prev, min_flow) -> list[dict[str, Any]]:
    """Graph edges of one chunk of rows that carry at least ``min_flow``."""
    out = []
    flow_heads = imp_heads * f_prev  # [head, rows, keys]
    for h, r, j in (flow_heads >= min_flow).nonzero().tolist():
        source, target = int(j), int(positions[r])
        out.append(_edge(layer, h, source, target, float(imp_heads[h, r, j]), float(flow_heads[h, r, j])))
    flow_res = imp_res * f_prev[positions]
    for r in (flow_res >= min_flow).nonzero().flatten().tolist():
        position = int(positions[r])
        out.append(_edge(layer, RESIDUAL, position, position, float(imp_res[r]), float(flow_res[r])))
    return out


def _edge(layer: int, head: int, source: int, target: int, importance: float, flow: float) -> dict[str, Any]:
    return {
        "source": (layer, source),
        "target": (layer + 1, target),
        "layer": layer,
        "head": head,
        "importance": importance,
        "flow": flow,
    }


def _follow_paths(beam, imp_res, imp_heads, rows, new_beam, pointers) -> None:
    """One layer of a beam search for the strongest paths ending at each row.

    beam [rows, k]: best path scores ending at each row before the layer; imp_heads
    [head, chunk_rows, rows]: importances from each source row. Candidates are extended by
    a head hop (any earlier row) or a residual hop (same row)."""
    n_heads, chunk, n_sources = imp_heads.shape
    n_rows, k = beam.shape
    weights = torch.zeros(chunk, n_heads + 1, n_rows)
    weights[:, :n_heads, :n_sources] = imp_heads.transpose(0, 1)
    rows_here = torch.arange(rows.start, rows.stop)
    weights[torch.arange(chunk), n_heads, rows_here] = imp_res  # residual: stay in place
    # [chunk, head + 1, rows, 1] * [1, 1, rows, k] -> candidate scores
    candidates = (weights[..., None] * beam[None, None]).flatten(1)
    scores, flat = candidates.topk(k, dim=1)
    new_beam[rows] = scores
    head, rest = flat // (n_rows * k), flat % (n_rows * k)
    head = torch.where(head == n_heads, RESIDUAL, head)
    pointers[rows] = torch.stack([head, rest // k, rest % k], dim=-1)


def _backtrack(beam: Tensor, pointers: list[Tensor], layers: list[int], src: int) -> list[FlowPath]:
    paths = []
    last = beam.shape[0] - 1  # dst's row
    for slot in range(beam.shape[1]):
        score = float(beam[last, slot])
        if score <= 0:
            break
        hops, row, s = [], last, slot
        for layer, layer_pointers in zip(reversed(layers), reversed(pointers), strict=True):
            head, source, s = (int(x) for x in layer_pointers[row, s])
            hops.append(Hop(layer, head, source + src, row + src))
            row = source
        paths.append(FlowPath(score, hops[::-1]))
    return paths


def _knockout(model, ids, src, dst, layers, top_heads, clean_logits) -> dict[str, Any]:
    """Block the dst -> src edge (all heads of each layer, then each top head) and measure
    the change in dst's next-token distribution: KL(clean || knocked), the change in the
    probability of the clean top token, and (when the prompt goes on after dst) of the
    token that follows dst in the prompt."""
    clean = clean_logits.float().log_softmax(-1)
    top = int(clean.argmax())
    following = int(ids[0, dst + 1]) if dst + 1 < ids.shape[1] else None

    def effect(knockouts: dict[int, list]) -> dict[str, float]:
        knocked = model.run_with_attention_knockout(ids, knockouts).logits[0, dst].float().log_softmax(-1)
        out = {
            "kl": float((clean.exp() * (clean - knocked)).sum()),
            "delta_p_top": float(knocked[top].exp() - clean[top].exp()),
        }
        if following is not None:
            out["delta_p_next"] = float(knocked[following].exp() - clean[following].exp())
        return out

    return {
        "top_token": top,
        "p_top": float(clean[top].exp()),
        "next_token": following,
        "p_next": None if following is None else float(clean[following].exp()),
        "layers": [{"layer": layer, **effect({layer: [(None, dst, src)]})} for layer in layers],
        "heads": [{"layer": layer, "head": head, **effect({layer: [(head, dst, src)]})} for layer, head in top_heads],
        "all_layers": effect({layer: [(None, dst, src)] for layer in layers}),
    }
