"""Plotting an experiment's data: ``@bench.plot_results`` turns what a function returns into a Figure.

The function returns its data; the decorator returns a ``matplotlib.figure.Figure`` of it:

- a dict ``{name: numbers}`` (lists or 1-D tensors): one line (or group of bars) per name,
  with a legend, x = the index in the list;
- a 1-D tensor, array or list: one line (or bar per value);
- a 2-D tensor or array ``[rows, cols]``: a heatmap with a colour bar (``kind="line"`` or
  ``"bar"`` draws one series per row instead).

Figures are built with ``Figure()`` directly, never through ``pyplot``: nothing is shown,
nothing is saved, no global figure is left open; the caller shows or saves the figure.
matplotlib is imported only when a plot is made. It is the only plotting library so far;
``PLOTTING_LIBS`` lists those ``set_plotting_lib`` accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

PLOTTING_LIBS = ("matplotlib",)
KINDS = ("auto", "line", "bar", "heatmap")


def check_plotting_lib(lib: Any) -> str:
    """The name of a supported plotting library (a name, or the imported module itself)."""
    name = getattr(lib, "__name__", lib)
    if not isinstance(name, str) or name.lower() not in PLOTTING_LIBS:
        raise ValueError(f"unsupported plotting library {lib!r}; supported: {', '.join(PLOTTING_LIBS)}")
    return name.lower()


def _as_array(values: Any, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{what} must be numbers (a list or a tensor), got {type(values).__name__}") from error
    if array.size == 0:
        raise ValueError(f"{what} is empty: nothing to plot")
    return array


def series_of(data: Any) -> tuple[dict[str, np.ndarray] | None, np.ndarray | None]:
    """``(series, None)`` for line/bar data, ``(None, matrix)`` for a 2-D array; errors name the fix."""
    if isinstance(data, Mapping):
        if not data:
            raise ValueError("the data dict is empty: nothing to plot")
        series = {str(name): _as_array(values, f"series {name!r}") for name, values in data.items()}
        for name, values in series.items():
            if values.ndim != 1:
                raise ValueError(f"series {name!r} must be one-dimensional, got shape {values.shape}")
        return series, None
    array = _as_array(data, "the data")
    if array.ndim == 1:
        return {"": array}, None
    if array.ndim == 2:
        return None, array
    raise ValueError(
        f"plot_results plots a dict of series, a 1-D or a 2-D tensor; got shape {array.shape} "
        "(select or reduce dimensions first)"
    )


def plot_data(
    data: Any,
    *,
    kind: str = "auto",
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
) -> Any:
    """A matplotlib Figure of ``data`` (see the module docstring for what each shape becomes)."""
    if kind not in KINDS:
        raise ValueError(f"unknown plot kind {kind!r}; expected one of {', '.join(map(repr, KINDS))}")
    from matplotlib.figure import Figure

    series, matrix = series_of(data)
    if matrix is not None and kind in ("line", "bar"):
        series, matrix = {f"row {i}": row for i, row in enumerate(matrix)}, None
    if matrix is None and kind == "heatmap":
        raise ValueError("a heatmap needs a 2-D tensor [rows, cols]; got one-dimensional series")

    fig = Figure(layout="constrained")
    ax = fig.add_subplot()
    if matrix is not None:
        image = ax.imshow(matrix, aspect="auto", interpolation="nearest")
        fig.colorbar(image, ax=ax)
    elif kind == "bar":
        width = 0.8 / len(series)
        for i, (name, values) in enumerate(series.items()):
            x = np.arange(len(values)) + (i - (len(series) - 1) / 2) * width
            ax.bar(x, values, width=width, label=name or None)
    else:
        for name, values in series.items():
            ax.plot(np.arange(len(values)), values, label=name or None)
    if series is not None and any(series):
        ax.legend()
    ax.set_title(title or "")
    ax.set_xlabel(xlabel or "")
    ax.set_ylabel(ylabel or "")
    return fig
