"""plot_head_roles: three layer x head heatmaps, each the role's scores, top head outlined."""

from __future__ import annotations

import numpy as np

from arrakis.circuits.roles import ROLES
from tests.viz.conftest import rendered


def test_three_panels_hold_the_role_scores(llama):
    roles = llama.head_roles(seq_len=8)
    fig = roles.plot()
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 3
    for ax, role in zip(panels, ROLES, strict=True):
        (image,) = ax.images
        np.testing.assert_allclose(image.get_array(), roles.scores(role).numpy())
        assert image.get_clim() == (0.0, 1.0)  # one scale for every panel
        ((layer, head), _), *_ = roles.top(role, 1)
        (box,) = [p for p in ax.patches if p.get_gid() == "top"]
        assert (box.get_x() + 0.5, box.get_y() + 0.5) == (head, layer)
        assert f"L{layer}H{head}" in ax.get_title()
    rendered(fig)
