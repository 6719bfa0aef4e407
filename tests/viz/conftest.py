"""Shared by the plot tests: tiny models' results, and a check that a figure renders."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest

from arrakis.tools import WriteReadAnalyzer
from tests.conftest import shared


def rendered(fig) -> np.ndarray:
    """Render a figure to PNG bytes and decode them: a real image, not a blank canvas."""
    from matplotlib.image import imread

    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=50)
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    buffer.seek(0)
    pixels = imread(buffer, format="png")  # [height, width, rgba] in 0..1
    assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
    assert pixels[..., :3].var() > 1e-3, "the image is uniform"
    return pixels


def main_axes(fig):
    """The plot's own axes (colour bars come after the subplots they belong to)."""
    return fig.axes[0]


@pytest.fixture(scope="package")
def llama() -> WriteReadAnalyzer:
    return WriteReadAnalyzer(shared("llama"))
