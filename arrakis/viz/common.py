"""What the plots share: a fresh figure, a heatmap with marked cells, readable labels.

Every plot builds a ``matplotlib.figure.Figure`` directly, never through pyplot, so that no
global state (current figure, backend, the list of open figures) is touched: the figure is
returned to the caller, who shows it (a notebook displays it as a cell's value), saves it
with ``fig.savefig(...)``, or drops it. matplotlib is imported inside the functions, so
importing ``arrakis`` does not load it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

SELECTED = "selected"  # gid of the rectangles that mark selected cells, so tests can find them
MAX_TICK_LABELS = 40  # more labels than this on one axis overlap; label every k-th instead


def new_figure(width: float, height: float) -> Figure:
    """A figure of that size (inches) with constrained layout, outside pyplot's registry."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def head_name(head: Sequence[int]) -> str:
    """``(3, 2)`` -> ``"L3H2"``."""
    return f"L{head[0]}H{head[1]}"


def tick_step(n: int, max_labels: int = MAX_TICK_LABELS) -> int:
    """Label every k-th of n ticks so that at most ``max_labels`` show."""
    return max(1, -(-n // max_labels))


def token_label(token: Any) -> str:
    """A token as a tick label: whitespace made visible, "$" kept out of mathtext."""
    text = str(token).replace("\n", "\\n").replace("\t", "\\t").replace("$", r"\$")
    return text if text.strip() else repr(text)


def heatmap(
    ax: Axes,
    values: Any,
    *,
    cmap: str = "viridis",
    norm: Any = None,
    vmin: float | None = None,
    vmax: float | None = None,
    label: str | None = None,
) -> AxesImage:
    """Draw a 2-D array as cells (row i at y = i, column j at x = j), with a colour bar.

    Masked cells (a numpy masked array) take the colour map's "bad" colour."""
    import numpy as np

    image = ax.imshow(
        np.ma.asarray(values), aspect="auto", cmap=cmap, norm=norm, vmin=vmin, vmax=vmax, interpolation="nearest"
    )
    ax.figure.colorbar(image, ax=ax, label=label, shrink=0.9)
    return image


def mark_cells(ax: Axes, cells: Iterable[tuple[int, int]], color: str = "red", gid: str = SELECTED) -> None:
    """Outline cells (row, column) of a heatmap drawn by ``heatmap``."""
    from matplotlib.patches import Rectangle

    for row, column in cells:
        ax.add_patch(
            Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, edgecolor=color, linewidth=2.0, gid=gid, zorder=3)
        )


def head_axes(ax: Axes, n_heads: int, row_labels: Sequence[str], ylabel: str = "layer") -> None:
    """Ticks for a [rows, n_heads] heatmap: one per head, one per row (thinned when many)."""
    ax.set_xticks(range(0, n_heads, tick_step(n_heads)))
    ax.set_xlabel("head")
    step = tick_step(len(row_labels))
    ax.set_yticks(range(0, len(row_labels), step), list(row_labels)[::step])
    ax.set_ylabel(ylabel)
