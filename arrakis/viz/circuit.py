"""A circuit as a graph: heads placed by layer (x) and head index (y), writer -> reader arrows.

An arrow's width grows with its composition score. A head's colour is its strongest role
(previous-token, duplicate-token, induction) when that role's score reaches
``min_role_score``, grey ("no clear role") otherwise: the roles come from the edges'
``writer_roles`` / ``reader_roles``, so the picture needs nothing but the circuit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from arrakis.circuits.roles import ROLES
from arrakis.viz.common import head_name, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from arrakis.tools.results import Circuit

EDGE = "edge"  # gid of the arrows
ROLE_COLORS = {
    **dict(zip(ROLES, ("tab:blue", "tab:orange", "tab:green"), strict=True)),
    None: "0.6",  # no role reaches min_role_score
}
ROLE_NAMES = {role: role.replace("_", "-") for role in ROLES}


def strongest_role(roles: dict[str, float], min_role_score: float) -> str | None:
    """The role with the highest score, or None when none reaches ``min_role_score``."""
    if not roles:
        return None
    role = max(sorted(roles), key=lambda name: roles[name])  # ties: alphabetical
    return role if roles[role] >= min_role_score else None


def plot_circuit(circuit: Circuit, *, min_role_score: float = 0.3) -> Figure:
    """Writer -> reader arrows (width ~ score) between heads coloured by their strongest role.

    ``min_role_score`` defaults to the role threshold ``circuits()`` filters with.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch

    roles: dict[tuple[int, int], dict[str, float]] = {}
    for edge in circuit:
        roles.setdefault(tuple(edge.writer), edge.writer_roles)
        roles.setdefault(tuple(edge.reader), edge.reader_roles)
    layers = sorted({layer for layer, _ in roles})
    n_heads = max((head for _, head in roles), default=0) + 1
    fig = new_figure(max(5.0, 1.2 * (len(layers) or 1) + 3), max(3.5, 0.35 * n_heads + 1.5))
    ax = fig.add_subplot()
    ax.set_title(
        f"{circuit.mode}-composition circuit: {len(circuit)} edges >= {circuit.min_ratio:g} x baseline "
        f"{circuit.baseline:.3g}"
    )
    if not circuit:
        ax.text(0.5, 0.5, "no edges", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig

    top = max(edge.score for edge in circuit)
    for edge in reversed(circuit):  # weakest first, so the strongest are drawn on top
        ax.add_patch(
            FancyArrowPatch(
                tuple(edge.writer),
                tuple(edge.reader),
                arrowstyle="-|>",
                mutation_scale=12,
                linewidth=0.6 + 3.4 * edge.score / top,
                color="0.3",
                alpha=0.75,
                connectionstyle="arc3,rad=0.12",  # a slight bend keeps parallel arrows apart
                shrinkA=9,
                shrinkB=9,
                gid=EDGE,
                zorder=1,
            )
        )
    by_role: dict[str | None, list[tuple[int, int]]] = {}
    for head, head_roles in roles.items():
        by_role.setdefault(strongest_role(head_roles, min_role_score), []).append(head)
    handles = []
    for role, color in ROLE_COLORS.items():
        heads = by_role.get(role)
        if not heads:
            continue
        ax.scatter(
            [layer for layer, _ in heads],
            [head for _, head in heads],
            s=260,
            color=color,
            edgecolors="black",
            zorder=2,
            gid=f"role:{role}",
        )
        label = ROLE_NAMES.get(role, "no clear role")
        handles.append(Line2D([], [], marker="o", linestyle="", color=color, markeredgecolor="black", label=label))
    for head in roles:
        ax.annotate(head_name(head), head, xytext=(0, 11), textcoords="offset points", ha="center", fontsize=7)
    fig.legend(handles=handles, title=f"strongest role\n(>= {min_role_score:g})", loc="outside right upper", fontsize=8)
    ax.set_xticks(layers)
    ax.set_xlim(layers[0] - 0.6, layers[-1] + 0.6)
    ax.set_ylim(-0.8, n_heads - 0.2)
    ax.set(xlabel="layer", ylabel="head")
    ax.grid(alpha=0.2)
    return fig
