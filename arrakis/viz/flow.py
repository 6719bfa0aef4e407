"""An information-flow trace as a picture: the routes from src to dst over tokens x layers.

Left, the flow graph (``InformationFlow.graph``): x is the layer boundary (x = l is the
residual stream entering layer l, the last x the stream after the last analysed layer), y
the token position from src (top) to dst (bottom). An edge (l, j) -> (l + 1, i) carries
``flow`` = importance x f_l(j) (DESIGN.md §8): grey horizontal edges stay in a position's
residual stream, blue edges move information between positions through a head; width grows
with flow, and the strongest head edges are named ("L3H2") where they arrive. The strongest
path is dashed red.

Right, above: f_l(dst), the share of dst's residual stream that traces back to src, per
analysed layer. Below: the flow each head carries into dst, per (layer, head), the top
heads outlined.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from arrakis.tools.information_flow import RESIDUAL
from arrakis.viz.common import head_name, mark_cells, new_figure, tick_step, token_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from arrakis.tools.information_flow import InformationFlow

HEAD_COLOR, RESIDUAL_COLOR, PATH_COLOR = "tab:blue", "0.55", "tab:red"


def plot_information_flow(flow: InformationFlow, ax: Axes | None = None, *, n_labels: int = 8) -> Figure:
    """The flow graph over tokens x layers, the flow per layer, and what each head carries.

    ``n_labels`` head edges with the most flow are named, and so is the strongest edge of
    each of ``flow.top_heads``. With ``ax``, only the graph is drawn, on that Axes, and its
    figure is returned.
    """
    if ax is not None:
        draw_flow_graph(ax, flow, n_labels=n_labels)
        return ax.figure
    n_boundaries = len(flow.layers) + 1
    n_positions = flow.dst_pos - flow.src_pos + 1
    fig = new_figure(max(5.0, 0.32 * n_boundaries + 2.5) + 4.5, max(4.5, 0.2 * n_positions + 1.5))
    grid = fig.add_gridspec(2, 2, width_ratios=[max(5.0, 0.32 * n_boundaries + 2.5), 4.5])
    draw_flow_graph(fig.add_subplot(grid[:, 0]), flow, n_labels=n_labels)
    _draw_flow_curve(fig.add_subplot(grid[0, 1]), flow)
    _draw_carried(fig.add_subplot(grid[1, 1]), flow)
    return fig


def draw_flow_graph(ax: Axes, flow: InformationFlow, *, n_labels: int = 8) -> None:
    """The graph panel: residual and head edges (width ~ flow), the top ones named."""
    from matplotlib.collections import LineCollection

    layers = [lf.layer for lf in flow.layers]
    x_of = {layer: i for i, layer in enumerate(layers)}  # layers may skip: x counts analysed ones
    top = max((edge["flow"] for edge in flow.edges), default=1.0) or 1.0

    def segment(edge: dict[str, Any]) -> list[tuple[float, float]]:
        x = x_of[edge["layer"]]
        return [(x, edge["source"][1]), (x + 1, edge["target"][1])]

    for is_head, color, gid in ((False, RESIDUAL_COLOR, "residual"), (True, HEAD_COLOR, "heads")):
        edges = [edge for edge in flow.edges if (edge["head"] != RESIDUAL) == is_head]
        widths = [0.3 + 4.5 * edge["flow"] / top for edge in edges]
        ax.add_collection(
            LineCollection([segment(e) for e in edges], linewidths=widths, colors=color, alpha=0.7, gid=gid)
        )
    if flow.paths:
        hops = flow.paths[0].hops
        points = [(x_of[hops[0].layer], hops[0].source)] + [(x_of[hop.layer] + 1, hop.target) for hop in hops]
        ax.plot(*zip(*points, strict=True), color=PATH_COLOR, linestyle="--", linewidth=1.2, gid="path", zorder=3)
    # name each labelled edge where it arrives, just left of its target node: labels then sit
    # one row apart instead of crowding near src; heads arriving at one node share a label (two
    # names at most, then a count)
    arrivals: dict[tuple[float, float], list[str]] = {}
    for edge in _labelled_edges(flow, n_labels):
        arrivals.setdefault(segment(edge)[1], []).append(head_name((edge["layer"], edge["head"])))
    for (x, y), names in arrivals.items():
        ax.text(
            x - 0.06,
            y,
            " ".join(names[:2]) + (f" +{len(names) - 2}" if len(names) > 2 else ""),
            fontsize=7,
            ha="right",
            va="center",
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": HEAD_COLOR, "alpha": 0.85},
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
    ax.set_title(f"routes {flow.src_pos} ({src}) -> {flow.dst_pos} ({dst}); dashed: strongest path")


def _labelled_edges(flow: InformationFlow, n_labels: int) -> list[dict[str, Any]]:
    """The ``n_labels`` head edges with the most flow, plus each top head's strongest edge."""
    heads = sorted((e for e in flow.edges if e["head"] != RESIDUAL), key=lambda e: -e["flow"])
    chosen = heads[:n_labels]
    for layer, head in flow.top_heads:
        own = [e for e in heads if (e["layer"], e["head"]) == (layer, head)]
        if own and own[0] not in chosen:
            chosen.append(own[0])
    return chosen


def _draw_flow_curve(ax: Axes, flow: InformationFlow) -> None:
    from matplotlib.ticker import MaxNLocator

    layers = [lf.layer for lf in flow.layers]
    ax.plot(layers, list(flow), marker="o")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="layer", ylabel="flow src -> dst", ylim=(0, 1.05), title="f_l(dst) per layer")
    ax.grid(alpha=0.25)


def _draw_carried(ax: Axes, flow: InformationFlow) -> None:
    import numpy as np

    layers = [lf.layer for lf in flow.layers]
    carried = np.array([[h.carried for h in lf.heads] for lf in flow.layers])  # [layer, head]
    image = ax.imshow(carried.T, aspect="auto", cmap="viridis", origin="lower", interpolation="nearest")
    x_of = {layer: i for i, layer in enumerate(layers)}
    mark_cells(ax, [(head, x_of[layer]) for layer, head in flow.top_heads if layer in x_of], gid="top-head")
    step = tick_step(len(layers), 16)
    ax.set_xticks(range(0, len(layers), step), [str(layer) for layer in layers[::step]])
    top = ", ".join(head_name(h) for h in flow.top_heads[:5]) or "none"
    ax.set(xlabel="layer", ylabel="head", title=f"flow carried into dst\noutlined, top heads: {top}")
    ax.figure.colorbar(image, ax=ax)
