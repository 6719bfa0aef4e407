"""plot_head_scores: the cells are the scores, and the outlined cells are the selected heads."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from arrakis.tools import HeadSelection
from arrakis.viz import plot_head_scores
from arrakis.viz.common import SELECTED
from tests.viz.conftest import main_axes, rendered


def outlined_cells(ax) -> list[tuple[int, int]]:
    """(row, column) of each selection rectangle, from where it sits."""
    boxes = [p for p in ax.patches if p.get_gid() == SELECTED]
    assert all((p.get_width(), p.get_height()) == (1, 1) for p in boxes)
    return [(round(p.get_y() + 0.5), round(p.get_x() + 0.5)) for p in boxes]


def test_one_selection_is_one_row_with_its_selected_heads_outlined(llama):
    selection = llama.identify_write_heads(1, threshold=0.5)
    fig = selection.plot()
    assert isinstance(fig, Figure)
    ax = main_axes(fig)
    (image,) = ax.images
    assert image.get_array().shape == (1, llama.cfg.n_heads)
    np.testing.assert_allclose(image.get_array()[0], selection.scores)
    assert sorted(outlined_cells(ax)) == sorted((0, head) for _, head in selection)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1"]
    rendered(fig)


def test_a_list_of_selections_is_a_layer_by_head_grid(llama):
    selections = [llama.identify_write_heads(layer, threshold=0.6) for layer in range(llama.cfg.n_layers)]
    fig = plot_head_scores(selections)
    ax = main_axes(fig)
    grid = ax.images[0].get_array()
    assert grid.shape == (llama.cfg.n_layers, llama.cfg.n_heads)
    np.testing.assert_allclose(grid, [s.scores for s in selections])
    expected = [(row, head) for row, s in enumerate(selections) for _, head in s]
    assert len(outlined_cells(ax)) == sum(len(s) for s in selections)
    assert sorted(outlined_cells(ax)) == sorted(expected)
    shares = plot_head_scores(selections, values="shares")
    np.testing.assert_allclose(main_axes(shares).images[0].get_array(), [s.shares for s in selections])
    rendered(fig)


def test_read_scores_diverge_at_their_baseline(llama):
    selection = llama.identify_read_heads(1, dim_idx=3)
    assert selection.baseline == 1.0
    assert min(selection.scores) < 1.0 < max(selection.scores)  # some heads read u more than average, some less
    image = main_axes(selection.plot()).images[0]
    assert isinstance(image.norm, TwoSlopeNorm) and image.norm.vcenter == 1.0
    # write scores have no baseline: a sequential scale
    assert not isinstance(main_axes(llama.identify_write_heads(1).plot()).images[0].norm, TwoSlopeNorm)


def test_a_hand_made_selection_and_the_errors():
    selection = HeadSelection(
        [(2, 3), (2, 0)],
        layer=2,
        scores=[2.0, 0.5, 0.5, 3.0],
        shares=[1 / 3, 1 / 12, 1 / 12, 1 / 2],
        method="m",
        threshold=0.8,
    )
    ax = main_axes(selection.plot())
    assert sorted(outlined_cells(ax)) == [(0, 0), (0, 3)]
    other = HeadSelection([], layer=3, scores=[1.0] * 4, shares=[0.25] * 4, method="other", threshold=0.8)
    with pytest.raises(ValueError, match="mix methods"):
        plot_head_scores([selection, other])
    with pytest.raises(ValueError, match="at least one"):
        plot_head_scores([])
    with pytest.raises(ValueError, match="values must be one of"):
        selection.plot(values="ranks")
