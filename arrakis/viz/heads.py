"""Write and read head scores as a layer x head heatmap, with the selected heads outlined.

One ``HeadSelection`` covers one layer (a 1 x n_heads row); a list of them, one per layer,
gives the whole model:

    fig = plot_head_scores([tool.identify_write_heads(layer) for layer in range(n_layers)])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from arrakis.viz.common import head_axes, heatmap, mark_cells, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from arrakis.tools.results import HeadSelection

VALUES = ("scores", "shares")


def plot_head_scores(selections: HeadSelection | Sequence[HeadSelection], *, values: str = "scores") -> Figure:
    """Every head's score (or share of its layer) as cells, rows = the selections' layers.

    Cells outlined in red are the selected heads: the fewest, strongest first, that make up
    ``threshold`` of their layer. Where the scores have a baseline inside their range (1.0
    for reading a direction: an isotropic head), the colour scale diverges at the baseline,
    so red heads read more than an average direction and blue ones less; otherwise it is
    sequential. Shares have no baseline (they add up to 1 per row).

    The selections must share their method and head count: scores of different methods
    (weights vs data, one channel vs another) are not on one scale.
    """
    # one HeadSelection (a list of heads with .scores), or a sequence of them; no import of
    # the tools' result types at run time (docs/architecture.md: plots do not import the tools)
    rows = [selections] if hasattr(selections, "scores") else list(selections)
    if not rows:
        raise ValueError("plot_head_scores needs at least one HeadSelection")
    if values not in VALUES:
        raise ValueError(f"values must be one of {', '.join(VALUES)}, got {values!r}")
    methods = {s.method for s in rows}
    if len(methods) > 1:
        raise ValueError(f"the selections mix methods ({', '.join(sorted(methods))}); plot one method at a time")
    n_heads = {len(s.scores) for s in rows}
    if len(n_heads) > 1:
        raise ValueError(f"the selections have different numbers of heads ({sorted(n_heads)})")
    (n_heads,) = n_heads
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    grid = np.array([getattr(s, values) for s in rows], dtype=float)  # [row, head]
    first = rows[0]
    norm, cmap = None, "viridis"
    if values == "scores" and first.baseline is not None and grid.min() < first.baseline < grid.max():
        norm, cmap = TwoSlopeNorm(vcenter=first.baseline, vmin=grid.min(), vmax=grid.max()), "RdBu_r"
    fig = new_figure(max(4.0, 0.45 * n_heads + 2.5), max(2.0, 0.32 * len(rows) + 1.4))
    ax = fig.add_subplot()
    label = "share of the layer" if values == "shares" else "score"
    if norm is not None:
        label += f"\n(centre: baseline {first.baseline:.3g})"
    heatmap(ax, grid, cmap=cmap, norm=norm, label=label)
    mark_cells(ax, [(row, head) for row, s in enumerate(rows) for _, head in s])
    head_axes(ax, n_heads, [str(s.layer) for s in rows])
    thresholds = {s.threshold for s in rows}
    covers = f" (>= {first.threshold:.0%} of each layer)" if len(thresholds) == 1 else ""
    ax.set_title(f"{first.method} head {values}\noutlined: selected heads{covers}", fontsize=10)
    return fig
