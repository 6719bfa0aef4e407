"""A task circuit as pictures: its top edges drawn between the model's nodes, and its
faithfulness curve against a random baseline.

The graph: one row per layer (the embeddings below layer 0, the logits above the last), a
head at x = its index, the MLP at the right and half a row up (it reads after attention); a
KV head's K and V receivers (grouped-query attention) sit at the middle of their group. Each
edge is a line from its sender to its receiver, coloured by the channel it is read through
(Q, K, V, the MLP's input, the logits), as wide as |score| relative to the largest shown,
dashed where the score is negative (patching the edge raises the metric).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from arrakis.viz.common import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from arrakis.tools.results.task_circuit import CircuitCurve, TaskCircuit

COLOURS = {"q": "tab:blue", "k": "tab:orange", "v": "tab:green", "mlp": "tab:purple", "logits": "tab:red"}
LABELS = {"q": "head Q", "k": "head K", "v": "head V", "mlp": "MLP input", "logits": "logits"}
MAX_WIDTH = 4.0


def node_position(node: Any, n_heads: int, n_layers: int, group_size: int) -> tuple[float, float]:
    """(x, y) of a sender or receiver node: y its layer (-1 embed, n_layers logits, an MLP
    layer + 0.5), x its head (a KV head at its group's middle), the MLP at n_heads."""
    centre = (n_heads - 1) / 2
    if node.kind == "embed":
        return centre, -1.0
    if node.kind == "logits":
        return centre, float(n_layers)
    if node.kind == "mlp":
        return float(n_heads), node.layer + 0.5
    if node.grouped:
        return node.head * group_size + (group_size - 1) / 2, float(node.layer)
    return float(node.head), float(node.layer)


def plot_task_circuit(result: TaskCircuit, n: int = 50) -> Figure:
    """The ``n`` edges of largest |score| of ``result`` as lines between nodes."""
    from matplotlib.lines import Line2D

    graph = result.graph
    cfg = graph.cfg
    n_layers, n_heads = cfg.n_layers, cfg.n_heads
    group_size = n_heads // cfg.n_kv_heads
    edges = result.top_edges(n)
    largest = max((abs(e.score) for e in edges), default=0.0) or 1.0
    fig = new_figure(max(5.0, 0.5 * n_heads + 3.0), max(3.5, 0.45 * n_layers + 2.0))
    ax = fig.add_subplot()
    used: set[tuple[float, float]] = set()
    for edge in reversed(edges):  # the strongest drawn last, on top
        s, r = (int(i) for i in graph.edges[edge.index].tolist())
        start = node_position(graph.senders[s], n_heads, n_layers, group_size)
        end = node_position(graph.receivers[r], n_heads, n_layers, group_size)
        used.update((start, end))
        key = edge.channel or graph.receivers[r].kind
        ax.plot(
            [start[0], end[0]],
            [start[1], end[1]],
            color=COLOURS[key],
            linewidth=0.4 + MAX_WIDTH * abs(edge.score) / largest,
            linestyle="-" if edge.score >= 0 else "--",
            alpha=0.75,
            solid_capstyle="round",
            gid="edge",
        )
    if used:
        xs, ys = zip(*sorted(used), strict=True)
        ax.scatter(xs, ys, s=18, color="black", zorder=3)
    handles = [Line2D([], [], color=COLOURS[k], linewidth=2, label=LABELS[k]) for k in COLOURS]
    handles.append(Line2D([], [], color="grey", linestyle="--", label="negative score"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_yticks(range(-1, n_layers + 1), ["embed", *map(str, range(n_layers)), "logits"])
    step = max(1, -(-n_heads // 32))
    ticks = list(range(0, n_heads, step))
    ax.set_xticks([*ticks, n_heads], [*map(str, ticks), "MLP"])
    ax.set_xlim(-0.8, n_heads + 0.8)
    ax.set_ylim(-1.6, n_layers + 0.6)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    steps = f", {result.steps} steps" if result.steps else ""
    title = f"top {len(edges)} of {graph.n_edges} edges ({result.method}{steps})"
    ax.set_title(
        f"{result.task + ': ' if result.task else ''}{title}\nwidth ~ |estimated drop when patched|", fontsize=10
    )
    return fig


def plot_circuit_curve(curve: CircuitCurve) -> Figure:
    """Faithfulness of the top-n circuits and of random ones against the fraction of edges
    kept (log axis, sizes above 0), with guides at 1 (the clean behaviour) and 0 (none)."""
    points = [i for i, size in enumerate(curve.sizes) if size > 0]
    if not points:
        raise ValueError("the curve has no size above 0 to draw on a log axis")
    x = [curve.fractions[i] for i in points]
    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    ax.plot(x, [curve.faithfulness[i] for i in points], marker="o", color="tab:blue", label="top-n circuit")
    if any(curve.random_draws[i] for i in points):
        ax.plot(x, [curve.random[i] for i in points], linestyle="--", color="grey", label="random circuit (mean)")
        draws = [(curve.fractions[i], d) for i in points for d in curve.random_draws[i]]
        ax.scatter([p[0] for p in draws], [p[1] for p in draws], s=8, color="grey", alpha=0.4)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
    ax.axhline(0.0, color="black", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel(f"fraction of edges kept (of {curve.n_edges})")
    ax.set_ylabel("faithfulness")
    ax.legend(fontsize=8)
    ax.set_title(
        f"area {curve.area:.3f} (random {curve.random_area:.3f}), "
        f"area between {curve.area_between:.3f} (random {curve.random_area_between:.3f})",
        fontsize=10,
    )
    return fig
