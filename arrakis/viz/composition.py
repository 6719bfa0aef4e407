"""Composition scores as a writer x reader matrix over every head of the model.

Row ``l1 * n_heads + h1`` is writer head (l1, h1), column ``l2 * n_heads + h2`` reader head
(l2, h2). The colour scale diverges at the baseline 1/sqrt(d_model) that random matrices
score: red pairs compose more than chance, blue less. Pairs with l1 >= l2 cannot compose
(the writer does not come first) and are never computed; they are greyed out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from arrakis.viz.common import heatmap, new_figure, tick_step

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from arrakis.tools.results import CompositionScores


def plot_composition(scores: CompositionScores) -> Figure:
    """The (L*H) x (L*H) writer x reader matrix, centred on the baseline, ticked per layer."""
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    t = scores.tensor.float().cpu().numpy()  # [L, H, L, H]
    n_layers, n_heads = t.shape[:2]
    n = n_layers * n_heads
    matrix = t.reshape(n, n)  # [writer (l1, h1), reader (l2, h2)]
    layer_of = np.repeat(np.arange(n_layers), n_heads)
    never = layer_of[:, None] >= layer_of[None, :]  # l1 >= l2: no composition
    shown = np.ma.masked_array(matrix, mask=never)
    baseline = float(scores.baseline)
    top = float(shown.max()) if shown.count() else baseline
    # TwoSlopeNorm needs vmin < vcenter < vmax: scores are >= 0, and a matrix entirely below
    # the baseline still gets a red half, left empty
    norm = TwoSlopeNorm(vcenter=baseline, vmin=0.0, vmax=max(top, 2 * baseline))

    import matplotlib

    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.9")
    size = min(14.0, max(5.0, 0.045 * n + 4))
    fig = new_figure(size + 1.5, size)
    ax = fig.add_subplot()
    heatmap(ax, shown, cmap=cmap, norm=norm, label=f"score (centre: baseline {baseline:.3g})")
    step = tick_step(n_layers, 30)
    centres = [layer * n_heads + (n_heads - 1) / 2 for layer in range(0, n_layers, step)]
    names = [f"L{layer}" for layer in range(0, n_layers, step)]
    ax.set_xticks(centres, names, rotation=90 if n_layers > 12 else 0)
    ax.set_yticks(centres, names)
    for edge in np.arange(1, n_layers) * n_heads - 0.5:  # layer boundaries
        ax.axvline(edge, color="white", linewidth=0.6)
        ax.axhline(edge, color="white", linewidth=0.6)
    ax.set(xlabel="reader (layer, head)", ylabel="writer (layer, head)")
    ax.set_title(
        f"{scores.mode}-composition ({'folded' if scores.folded else 'raw'} weights), {n_layers} x {n_heads} heads\n"
        "grey: the writer does not come before the reader",
        fontsize=10,
    )
    return fig
