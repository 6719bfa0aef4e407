"""A logit attribution as a picture: every head's signed contribution to the logit, and the
other components (embeddings, each layer's attention bias and MLP, the biases).

Left: heads as a [layer x head] heatmap, blue writes the token and red suppresses it, the
colour scale symmetric around 0; the strongest writers and suppressors outlined. Right: the
non-head components as horizontal bars, the same colours, with the total beside the logit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from arrakis.viz.common import head_axes, heatmap, mark_cells, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from arrakis.tools.results.attribution import LogitAttribution

WRITES, SUPPRESSES = "tab:blue", "tab:red"


def plot_logit_attribution(result: LogitAttribution, n_marked: int = 3) -> Figure:
    heads = result.heads.numpy()
    n_layers, n_heads = heads.shape
    parts = [(name, value) for name, value in result.components.items() if value != 0 or name == "bias"]
    fig = new_figure(4.0 + 0.35 * n_heads + 4.5, max(4.0, 0.22 * max(n_layers, len(parts)) + 1.5))
    grid = fig.add_gridspec(1, 2, width_ratios=[2.0 + 0.35 * n_heads, 4.5])
    ax = fig.add_subplot(grid[0, 0])
    limit = float(abs(heads).max()) or 1.0
    heatmap(ax, heads, cmap="RdBu", vmin=-limit, vmax=limit, label="direct contribution to the logit")
    head_axes(ax, n_heads, [str(layer) for layer in range(n_layers)])
    mark_cells(ax, result.writers[:n_marked], color=WRITES, gid="writer")
    mark_cells(ax, result.suppressors[:n_marked], color=SUPPRESSES, gid="suppressor")
    ax.set_title(f"{result.describe()}\nheads: blue writes, red suppresses")
    bars = fig.add_subplot(grid[0, 1])
    names, values = [name for name, _ in parts], [value for _, value in parts]
    bars.barh(range(len(values)), values, color=[WRITES if v >= 0 else SUPPRESSES for v in values], gid="components")
    bars.set_yticks(range(len(values)), names, fontsize=7 if len(values) > 30 else 8)
    bars.invert_yaxis()
    bars.axvline(0, color="0.3", linewidth=0.8)
    bars.set(
        xlabel="direct contribution", title=f"other components\nall: {result.total:.3f} = logit {result.logit:.3f}"
    )
    return fig
