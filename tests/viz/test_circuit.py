"""plot_circuit: one arrow per edge, width growing with score, heads coloured by their role."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import to_rgba
from matplotlib.patches import FancyArrowPatch

from arrakis.tools import Circuit, CircuitEdge
from arrakis.viz.circuit import EDGE, ROLE_COLORS, strongest_role
from tests.viz.conftest import main_axes, rendered

PREV = {"previous_token": 0.9, "duplicate_token": 0.1, "induction": 0.0}
INDUCTION = {"previous_token": 0.0, "duplicate_token": 0.2, "induction": 0.7}
NONE = {"previous_token": 0.1, "duplicate_token": 0.05, "induction": 0.1}


def induction_circuit() -> Circuit:
    edges = [
        CircuitEdge((0, 1), (1, 2), 0.6, 6.0, PREV, INDUCTION),
        CircuitEdge((0, 1), (1, 0), 0.3, 3.0, PREV, NONE),
        CircuitEdge((0, 3), (1, 2), 0.2, 2.0, NONE, INDUCTION),
    ]
    return Circuit(edges, mode="K", baseline=0.1, min_ratio=2.0)


def test_one_arrow_per_edge_and_nodes_coloured_by_their_strongest_role():
    circuit = induction_circuit()
    fig = circuit.plot()
    ax = main_axes(fig)
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch) and p.get_gid() == EDGE]
    assert len(arrows) == len(circuit)
    # drawn weakest first; each arrow runs writer -> reader, width growing with the score
    by_width = sorted(arrows, key=lambda a: a.get_linewidth())
    assert [tuple(a._posA_posB) for a in by_width] == [(e.writer, e.reader) for e in reversed(circuit)]
    nodes = {}
    for collection in ax.collections:
        role = collection.get_gid().removeprefix("role:")
        color = collection.get_facecolors()[0]
        for x, y in collection.get_offsets():
            nodes[(int(x), int(y))] = (role, color)
    assert set(nodes) == {(0, 1), (0, 3), (1, 0), (1, 2)}
    expected = {(0, 1): "previous_token", (1, 2): "induction", (0, 3): "None", (1, 0): "None"}
    for head, role in expected.items():
        assert nodes[head][0] == role
        np.testing.assert_allclose(nodes[head][1], to_rgba(ROLE_COLORS[None if role == "None" else role]))
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["previous-token", "induction", "no clear role"]
    labels = {t.get_text() for t in ax.texts}
    assert {"L0H1", "L1H2", "L0H3", "L1H0"} <= labels
    rendered(fig)


def test_strongest_role_needs_the_floor():
    assert strongest_role(PREV, 0.3) == "previous_token"
    assert strongest_role(NONE, 0.3) is None and strongest_role(NONE, 0.0) in ("induction", "previous_token")
    assert strongest_role({}, 0.0) is None


def test_a_real_circuit_and_an_empty_one(llama):
    circuit = llama.circuits("K", roles=llama.head_roles(seq_len=8), min_ratio=1e-9, top_k=5)
    ax = main_axes(circuit.plot())
    assert sum(p.get_gid() == EDGE for p in ax.patches) == len(circuit) == 5
    empty = Circuit([], mode="Q", baseline=0.1, min_ratio=5.0)
    fig = empty.plot()
    assert [t.get_text() for t in main_axes(fig).texts] == ["no edges"]
    rendered(fig)
