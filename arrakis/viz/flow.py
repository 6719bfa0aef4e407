"""An information-flow trace as a picture: the routes from src to dst over tokens x layers.

Left, the flow graph (``InformationFlow.graph``): x is the layer boundary (x = l is the
residual stream entering layer l, the last x the stream after the last analysed layer;
layers may skip, x counts the analysed ones), y the token position from src (top) to dst
(bottom). An edge (l, j) -> (l + 1, i) is head h of layer l moving information from j to i,
drawn with width growing with |``score``|:

- ``method="attribution"``: the score is the estimated drop in the metric when that edge is
  knocked out; blue edges carry what dst's prediction needs, red ones work against it
  (suppressors). Staying in a position's residual stream is free, so no residual edges.
- ``method="routes"``: the score is the flow the edge carries (importance x f_l(j),
  docs/mathematics.md#information-flow); blue head edges, and grey horizontal edges staying
  in a position's residual stream.

The strongest head edges are named ("L3H2") where they arrive; the strongest path is dashed
(for attribution its head hops, joined by the residual streams they stay in).

Right, above, the list value per analysed layer: attribution, f_l = the estimated drop in the
metric summed over the layer's heads (with the exact knockout drop beside it when verified);
routes, f_l(dst), the share of dst's residual stream that traces back to src. Below, every
head's score per (layer, head), the top heads outlined: attribution on a diverging scale
around 0 (blue carries, red suppresses), routes the flow each head carries into dst.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from arrakis.circuits.flow import RESIDUAL
from arrakis.viz.common import head_name, mark_cells, new_figure, tick_step, token_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from arrakis.tools.results.flow import FlowEdge, InformationFlow

HEAD_COLOR, SUPPRESSING_COLOR, RESIDUAL_COLOR, PATH_COLOR = "tab:blue", "tab:red", "0.55", "black"
EXACT_COLOR = "tab:orange"
LEGEND = {  # by method (attribution?), the name of each kind of edge
    True: {"heads": "carries (drop > 0)", "suppressing": "suppresses (drop < 0)"},
    False: {"heads": "through a head", "residual": "residual stream"},
}
DIVERGING_CMAP = "RdBu"  # positive (carries) blue, negative (suppresses) red, as the graph's edges


def plot_information_flow(flow: InformationFlow, ax: Axes | None = None, *, n_labels: int = 8) -> Figure:
    """The flow graph over tokens x layers, the value per layer, and every head's score.

    ``n_labels`` head edges with the largest |score| are named, and so is the dst <- src edge
    (or else the strongest edge) of each of ``flow.top_heads``. With ``ax``, only the graph is
    drawn, on that Axes, and its figure is returned.
    """
    if ax is not None:
        draw_flow_graph(ax, flow, n_labels=n_labels)
        return ax.figure
    n_boundaries = len(flow.layers) + 1
    n_positions = flow.dst_pos - flow.src_pos + 1
    graph_width = max(5.5, 0.32 * n_boundaries + 2.5)
    fig = new_figure(graph_width + 4.8, max(5.5, 0.2 * n_positions + 1.5))
    grid = fig.add_gridspec(2, 2, width_ratios=[graph_width, 4.8])
    draw_flow_graph(fig.add_subplot(grid[:, 0]), flow, n_labels=n_labels)
    _draw_flow_curve(fig.add_subplot(grid[0, 1]), flow)
    _draw_carried(fig.add_subplot(grid[1, 1]), flow)
    return fig


def _attribution(flow: InformationFlow) -> bool:
    return flow.method in ("attribution", "integrated")  # scores are (estimated) drops in the metric


def _formula(flow: InformationFlow) -> str:
    return str((flow.metric or {}).get("formula") or "the metric")


def draw_flow_graph(ax: Axes, flow: InformationFlow, *, n_labels: int = 8) -> None:
    """The graph panel: head edges (width ~ |score|; attribution: coloured by sign) and, for
    routes, residual edges; the top ones named, the strongest path dashed."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D

    layers = [lf.layer for lf in flow.layers]
    x_of = {layer: i for i, layer in enumerate(layers)}  # layers may skip: x counts analysed ones
    top = max((abs(edge.score) for edge in flow.edges), default=1.0) or 1.0
    attribution = _attribution(flow)

    def segment(edge: FlowEdge) -> list[tuple[float, float]]:
        x = x_of[edge.layer]
        return [(x, edge.source[1]), (x + 1, edge.target[1])]

    heads = [edge for edge in flow.edges if edge.head != RESIDUAL]
    groups = [  # drawn in this order: the edges that carry on top
        ("suppressing", SUPPRESSING_COLOR, [e for e in heads if attribution and e.score < 0]),
        ("heads", HEAD_COLOR, [e for e in heads if not attribution or e.score >= 0]),
    ]
    if not attribution:  # routes: staying in the residual stream is an edge with its own flow
        groups = [("residual", RESIDUAL_COLOR, [e for e in flow.edges if e.head == RESIDUAL]), groups[1]]
    for gid, color, edges in groups:
        strength = [abs(edge.score) / top for edge in edges]
        ax.add_collection(
            LineCollection(
                [segment(e) for e in edges],
                linewidths=[0.3 + 4.5 * s for s in strength],
                colors=[to_rgba(color, 0.3 + 0.6 * s) for s in strength],
                gid=gid,
            )
        )
    if flow.paths:
        points = _path_points(flow, flow.paths[0], x_of)
        ax.plot(
            *zip(*points, strict=True),
            color=PATH_COLOR,
            linestyle="--",
            linewidth=1.2,
            gid="path",
            zorder=3,
            label="strongest path",
        )
    # name each labelled edge where it arrives, just left of its target node: labels then sit
    # one row apart instead of crowding near src; heads arriving at one node share a label (two
    # names at most, then a count), framed in the colour of the strongest of them
    arrivals: dict[tuple[float, float], list[FlowEdge]] = {}
    for edge in _labelled_edges(flow, n_labels):
        arrivals.setdefault(segment(edge)[1], []).append(edge)
    for (x, y), edges in arrivals.items():
        names = [head_name((edge.layer, edge.head)) for edge in edges]
        strongest = max(edges, key=lambda e: abs(e.score))
        frame = SUPPRESSING_COLOR if attribution and strongest.score < 0 else HEAD_COLOR
        ax.text(
            x - 0.06,
            y,
            " ".join(names[:2]) + (f" +{len(names) - 2}" if len(names) > 2 else ""),
            fontsize=7,
            ha="right",
            va="center",
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": frame, "alpha": 0.85},
            zorder=4,
            gid="head-label",
        )
    ax.scatter([0, len(layers)], [flow.src_pos, flow.dst_pos], s=60, color=PATH_COLOR, zorder=5)

    positions = list(range(flow.src_pos, flow.dst_pos + 1))
    words = flow.str_tokens if flow.str_tokens else flow.tokens
    step = tick_step(len(positions), 70)
    ax.set_yticks(positions[::step], [f"{p}: {token_label(words[p])}" for p in positions[::step]])
    ax.tick_params(axis="y", labelsize=8 if len(positions) <= 30 else 6)
    ax.set_ylim(flow.dst_pos + 0.6, flow.src_pos - 0.6)  # src on top, reading down to dst
    boundaries = list(range(len(layers) + 1))
    names = [str(layer) for layer in layers] + [f"{layers[-1] + 1}" if layers else "0"]
    step = tick_step(len(boundaries), 31)
    ax.set_xticks(boundaries[::step], names[::step])
    ax.set_xlim(-0.3, len(layers) + 0.3)
    ax.grid(axis="x", alpha=0.25)
    ax.set(xlabel="residual stream entering layer", ylabel="position")
    src, dst = token_label(words[flow.src_pos]), token_label(words[flow.dst_pos])
    width = f"estimated drop in {_formula(flow)} if knocked out" if attribution else "flow carried"
    ax.set_title(f"routes {flow.src_pos} ({src}) -> {flow.dst_pos} ({dst})\nedge width: {width}", fontsize=10)
    # a legend of proxies (an empty collection has no width to show): carrying edges first
    kinds = {c.get_gid(): c for c in ax.collections if isinstance(c, LineCollection) and len(c.get_segments())}
    handles = [
        Line2D([], [], color=color, linewidth=3, alpha=0.8, label=LEGEND[attribution][gid])
        for gid, color in (("heads", HEAD_COLOR), ("suppressing", SUPPRESSING_COLOR), ("residual", RESIDUAL_COLOR))
        if gid in kinds
    ]
    handles += [line for line in ax.lines if line.get_gid() == "path"]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8, frameon=False)


def _path_points(flow: InformationFlow, path: Any, x_of: dict[int, int]) -> list[tuple[float, float]]:
    """The dashed line of a path: from src at x = 0 through each hop (x of its layer -> x + 1,
    source -> target) to dst after the last analysed layer, staying in a position's residual
    stream between hops (attribution paths only name their heads)."""
    points: list[tuple[float, float]] = [(0, flow.src_pos)]
    for hop in path.hops:
        x = x_of[hop.layer]
        points += [(x, hop.source), (x + 1, hop.target)]
    points.append((len(x_of), flow.dst_pos))
    return [p for i, p in enumerate(points) if i == 0 or p != points[i - 1]]


def _labelled_edges(flow: InformationFlow, n_labels: int) -> list[FlowEdge]:
    """The ``n_labels`` head edges with the largest |score|, plus, for each top head, its
    dst <- src edge (attribution: the edge its score is about) or else its strongest edge."""
    heads = sorted((e for e in flow.edges if e.head != RESIDUAL), key=lambda e: -abs(e.score))
    chosen = heads[:n_labels]
    for layer, head in flow.top_heads:
        own = [e for e in heads if (e.layer, e.head) == (layer, head)]
        direct = [e for e in own if e.source[1] == flow.src_pos and e.target[1] == flow.dst_pos]
        pick = (direct if _attribution(flow) and direct else own)[:1]
        if pick and pick[0] not in chosen:
            chosen.append(pick[0])
    return chosen


def _draw_flow_curve(ax: Axes, flow: InformationFlow) -> None:
    """The list value per analysed layer, on axes that fit it (0 included, and a zero line)."""
    from matplotlib.ticker import MaxNLocator

    layers = [lf.layer for lf in flow.layers]
    values = list(flow)
    ax.plot(layers, values, marker="o", color=HEAD_COLOR, label="estimate", gid="estimate")
    shown = [*values, 0.0]
    exact = [(lf.layer, lf.exact) for lf in flow.layers if lf.exact is not None]
    if _attribution(flow) and exact:
        ax.plot(*zip(*exact, strict=True), marker="s", linestyle="--", color=EXACT_COLOR, label="exact knockout")
        shown += [value for _, value in exact]
        ax.legend(fontsize=8)
    low, high = min(shown), max(shown)
    pad = 0.08 * (high - low) if high > low else 0.05 * (abs(high) or 1.0)
    ax.set_ylim(low - pad, high + pad)
    ax.axhline(0.0, color="0.3", linewidth=0.8, zorder=0, gid="zero")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(layers) == 1:  # no range for the locator to fill: one tick, some room around it
        ax.set_xticks(layers)
        ax.set_xlim(layers[0] - 1, layers[0] + 1)
    if _attribution(flow):
        ax.set(xlabel="layer", ylabel="f_l: estimated drop")
        ax.set_title(
            f"estimated drop in {_formula(flow)} per layer\n(dst <- src knocked out in all its heads)", fontsize=10
        )
    else:
        ax.set(xlabel="layer", ylabel="flow src -> dst")
        ax.set_title("f_l(dst) per layer", fontsize=10)
    ax.grid(alpha=0.25)


def _draw_carried(ax: Axes, flow: InformationFlow) -> None:
    """Every head's score, [head x layer]: attribution on a scale symmetric around 0."""
    layers = flow.layer_ids
    scores = flow.head_scores.numpy()  # [layer, head]
    top = ", ".join(head_name(h) for h in flow.top_heads[:5]) or "none"
    if _attribution(flow):
        limit = float(abs(scores).max()) if scores.size else 0.0
        limit = limit or 1.0
        image = ax.imshow(
            scores.T,
            aspect="auto",
            cmap=DIVERGING_CMAP,
            vmin=-limit,
            vmax=limit,
            origin="lower",
            interpolation="nearest",
        )
        title, label = f"estimated drop per head (blue carries, red suppresses)\noutlined, top heads: {top}", "drop"
    else:
        image = ax.imshow(scores.T, aspect="auto", cmap="viridis", origin="lower", interpolation="nearest")
        title, label = f"flow carried into dst\noutlined, top heads: {top}", "flow"
    x_of = {layer: i for i, layer in enumerate(layers)}
    mark_cells(
        ax,
        [(head, x_of[layer]) for layer, head in flow.top_heads if layer in x_of],
        color="black" if _attribution(flow) else "red",
        gid="top-head",
    )
    step = tick_step(len(layers), 16)
    ax.set_xticks(range(0, len(layers), step), [str(layer) for layer in layers[::step]])
    n_heads = scores.shape[1] if scores.ndim == 2 else 0
    ax.set_yticks(range(0, n_heads, tick_step(n_heads, 16)))
    ax.set(xlabel="layer", ylabel="head")
    ax.set_title(title, fontsize=10)
    ax.figure.colorbar(image, ax=ax, label=label)
