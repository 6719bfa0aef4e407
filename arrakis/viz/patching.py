"""Head patching as a picture: every head's effect on the task's metric as a [layer x head]
heatmap, diverging around 0 (blue: patching the head moves the metric the way the task's
behaviour needs, red: the other way), with the strongest heads outlined and the metrics of
the clean and corrupted runs in the title.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from arrakis.viz.common import head_axes, heatmap, mark_cells, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from arrakis.tools.results.patching import HeadPatching


def plot_head_patching(result: HeadPatching, n_marked: int = 3, normalised: bool = True) -> Figure:
    """The heatmap of ``result.normalised`` (or of ``result.scores`` with ``normalised=False``,
    or where the clean and corrupted metrics are equal)."""
    scaled = normalised and result.gap != 0
    values = (result.normalised if scaled else result.scores).numpy()
    n_layers, n_heads = values.shape
    fig = new_figure(2.5 + 0.4 * n_heads, max(3.5, 0.22 * n_layers + 1.8))
    ax = fig.add_subplot()
    limit = float(abs(values).max()) or 1.0
    effect = "drop" if result.direction == "noising" else "recovery"
    label = f"{effect} / (clean - corrupted)" if scaled else f"{effect} in {result.metric}"
    heatmap(ax, values, cmap="RdBu", vmin=-limit, vmax=limit, label=label)
    head_axes(ax, n_heads, [str(layer) for layer in range(n_layers)])
    mark_cells(ax, result.top_heads(n_marked), color="black", gid="top")
    runs = f"clean {result.clean_metric:.2f}, corrupted {result.corrupted_metric:.2f}"
    ax.set_title(f"{result.describe()}\n{result.metric}: {runs}")
    return fig
