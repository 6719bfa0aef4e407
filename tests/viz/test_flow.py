"""InformationFlow.plot: the routes over tokens x layers, the carrying heads named."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from arrakis.tools import InformationFlow, WriteReadAnalyzer
from arrakis.tools.information_flow import RESIDUAL
from tests.conftest import shared
from tests.tools.test_information_flow import copying_model
from tests.viz.conftest import rendered


def copying_flow() -> InformationFlow:
    tool = WriteReadAnalyzer(copying_model())
    return tool.trace_information_flow(torch.arange(20).unsqueeze(0) % 64, src_pos=9, dst_pos=10, n_layers=1)


def graph_axes(fig: Figure):
    return next(ax for ax in fig.axes if ax.get_title().startswith("routes"))


def test_the_head_that_copies_src_to_dst_is_named_on_its_edge():
    flow = copying_flow()
    assert flow.top_heads[0] == (0, 0)
    fig = flow.plot()
    assert isinstance(fig, Figure)
    ax = graph_axes(fig)
    labels = [t for t in ax.texts if t.get_gid() == "head-label"]
    assert any("L0H0" in t.get_text() for t in labels)
    # the label sits where L0H0's strongest edge arrives: x = 1 (after layer 0), y = dst
    (x, y) = next(t for t in labels if "L0H0" in t.get_text()).get_position()
    assert round(x) == 1 and y == flow.dst_pos
    rendered(fig)


def test_every_edge_is_drawn_with_width_growing_with_flow():
    tool = WriteReadAnalyzer(shared("llama"))
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(3))
    flow = tool.trace_information_flow(ids, src_pos=2, dst_pos=11, n_layers=None)
    fig = flow.plot()
    ax = graph_axes(fig)
    lines = {c.get_gid(): c for c in ax.collections if isinstance(c, LineCollection)}
    heads = [e for e in flow.edges if e["head"] != RESIDUAL]
    residual = [e for e in flow.edges if e["head"] == RESIDUAL]
    assert len(lines["heads"].get_segments()) == len(heads) and len(lines["residual"].get_segments()) == len(residual)
    for collection, edges in ((lines["heads"], heads), (lines["residual"], residual)):
        for segment, edge in zip(collection.get_segments(), edges, strict=True):
            x = [lf.layer for lf in flow.layers].index(edge["layer"])
            np.testing.assert_allclose(segment, [[x, edge["source"][1]], [x + 1, edge["target"][1]]])
        widths = collection.get_linewidths()
        order = np.argsort([e["flow"] for e in edges], kind="stable")
        assert np.all(np.diff(np.asarray(widths)[order]) >= 0)
    # positions src..dst on the y axis, src on top; the per-layer flow curve in its own panel
    assert [t.get_text().split(":")[0] for t in ax.get_yticklabels()] == [str(p) for p in range(2, 12)]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]
    curve = next(a for a in fig.axes if a.get_title() == "f_l(dst) per layer")
    np.testing.assert_allclose(curve.lines[0].get_ydata(), list(flow))
    carried = next(a for a in fig.axes if a.get_title().startswith("flow carried"))
    assert all(f"L{layer}H{head}" in carried.get_title() for layer, head in flow.top_heads)
    rendered(fig)


def test_string_tokens_label_positions_and_an_axes_can_be_given():
    flow = copying_flow()
    flow.str_tokens = [f"<t{i}>" for i in range(len(flow.tokens))]
    fig = Figure()
    ax = fig.add_subplot()
    assert flow.plot(ax=ax) is fig
    assert [t.get_text() for t in ax.get_yticklabels()] == ["9: <t9>", "10: <t10>"]
    rendered(fig)
