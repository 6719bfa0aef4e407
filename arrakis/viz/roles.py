"""Head roles as three layer x head heatmaps: previous-token, duplicate-token, induction.

Each cell is the share of a head's attention that falls on the role's cells (0: none, 1:
all of it; see ``arrakis.circuits.roles``), on one colour scale from 0 to 1 for all three
panels, so that panels compare. The strongest head of each role is outlined.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from arrakis.circuits.roles import ROLES
from arrakis.viz.common import head_axes, mark_cells, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from arrakis.tools.results import HeadRoles

TITLES = {role: role.replace("_", "-") for role in ROLES}


def plot_head_roles(roles: HeadRoles) -> Figure:
    """Three [n_layers, n_heads] heatmaps of role scores, the top head of each outlined."""
    n_layers, n_heads = roles.previous_token.shape
    fig = new_figure(max(9.0, 3 * (0.3 * n_heads + 1.2) + 1.5), max(2.6, 0.22 * n_layers + 1.6))
    axes = fig.subplots(1, len(ROLES), sharey=True)
    for ax, role in zip(axes, ROLES, strict=True):
        scores = roles.scores(role).float().cpu().numpy()  # [layer, head]
        image = ax.imshow(scores, aspect="auto", cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
        (top, value), *_ = roles.top(role, 1)
        mark_cells(ax, [top], color="cyan", gid="top")
        head_axes(ax, n_heads, [str(layer) for layer in range(n_layers)], ylabel="layer" if ax is axes[0] else "")
        ax.set_title(f"{TITLES[role]}\ntop L{top[0]}H{top[1]} ({value:.2f})")
    fig.colorbar(image, ax=list(axes), label="attention on the role's cells", shrink=0.9)
    fig.suptitle(f"head roles from {roles.source}")
    return fig
