"""plot_composition: the writer x reader matrix is the scores, centred on the baseline."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import TwoSlopeNorm

from tests.viz.conftest import main_axes, rendered


def test_the_matrix_is_the_scores_and_the_colour_scale_centres_on_the_baseline(llama):
    scores = llama.composition_scores("K")
    n_layers, n_heads = scores.shape[:2]
    fig = scores.plot()
    ax = main_axes(fig)
    (image,) = ax.images
    matrix = image.get_array()  # masked where the writer does not come before the reader
    n = n_layers * n_heads
    assert matrix.shape == (n, n)
    expected = scores.tensor.reshape(n, n).numpy()
    layer = np.repeat(np.arange(n_layers), n_heads)
    never = layer[:, None] >= layer[None, :]
    np.testing.assert_array_equal(np.ma.getmaskarray(matrix), never)
    np.testing.assert_allclose(matrix.data[~never], expected[~never], rtol=1e-6)
    assert isinstance(image.norm, TwoSlopeNorm)
    assert image.norm.vcenter == scores.baseline
    # one tick per layer, at the middle of the layer's block of heads
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"L{layer}" for layer in range(n_layers)]
    np.testing.assert_allclose(ax.get_xticks(), [lay * n_heads + (n_heads - 1) / 2 for lay in range(n_layers)])
    rendered(fig)
