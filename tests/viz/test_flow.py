"""InformationFlow.plot: the routes over tokens x layers, the carrying heads named, the value
per layer and every head's score, for both methods (attribution: signed drops; routes: flow)."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from arrakis.circuits.flow import RESIDUAL
from arrakis.tools import InformationFlow, WriteReadAnalyzer
from arrakis.viz.flow import HEAD_COLOR, SUPPRESSING_COLOR
from tests.conftest import shared
from tests.tools.test_information_flow import copying_model
from tests.viz.conftest import rendered

IDS = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(3))


def copying_flow(method: str = "attribution") -> InformationFlow:
    tool = WriteReadAnalyzer(copying_model())
    ids = torch.arange(20).unsqueeze(0) % 64
    return tool.trace_information_flow(ids, src_pos=9, dst_pos=10, n_layers=1, method=method)


@pytest.fixture(scope="module")
def llama() -> WriteReadAnalyzer:
    return WriteReadAnalyzer(shared("llama"))


def graph_axes(fig: Figure):
    return next(ax for ax in fig.axes if ax.get_title().startswith("routes"))


def curve_axes(fig: Figure):
    return next(ax for ax in fig.axes if "per layer" in ax.get_title())


def heads_axes(fig: Figure):
    return next(ax for ax in fig.axes if "top heads" in ax.get_title())


def line_collections(ax) -> dict[str, LineCollection]:
    return {c.get_gid(): c for c in ax.collections if isinstance(c, LineCollection)}


def x_of(flow: InformationFlow, layer: int) -> int:
    return flow.layer_ids.index(layer)


def assert_segments_are_the_edges(flow: InformationFlow, collection: LineCollection, edges: list[dict]) -> None:
    assert len(collection.get_segments()) == len(edges)
    for segment, edge in zip(collection.get_segments(), edges, strict=True):
        x = x_of(flow, edge.layer)
        np.testing.assert_allclose(segment, [[x, edge.source[1]], [x + 1, edge.target[1]]])


def assert_widths_grow_with_score(collections: list[LineCollection], edges: list[dict]) -> None:
    widths = np.concatenate([np.broadcast_to(c.get_linewidths(), len(c.get_segments())) for c in collections])
    order = np.argsort([abs(e.score) for e in edges], kind="stable")
    assert np.all(np.diff(widths[order]) >= 0)


def assert_path_follows_its_hops(flow: InformationFlow, ax) -> None:
    (line,) = [line for line in ax.lines if line.get_gid() == "path"]
    points = list(zip(line.get_xdata(), line.get_ydata(), strict=True))
    assert points[0] == (0, flow.src_pos) and points[-1] == (len(flow.layers), flow.dst_pos)
    for hop in flow.paths[0].hops:  # each hop a segment, x of its layer -> x + 1
        x = x_of(flow, hop.layer)
        hop_segment = ((x, hop.source), (x + 1, hop.target))
        assert any(pair == hop_segment for pair in pairwise(points)) or (
            hop.head == RESIDUAL and hop.source == hop.target
        )


@pytest.mark.parametrize("method", ["attribution", "routes"])
def test_the_head_that_copies_src_to_dst_is_named_on_its_edge(method):
    flow = copying_flow(method)
    assert flow.top_heads[0] == (0, 0)
    fig = flow.plot()
    assert isinstance(fig, Figure)
    ax = graph_axes(fig)
    labels = [t for t in ax.texts if t.get_gid() == "head-label"]
    assert any("L0H0" in t.get_text() for t in labels)
    # the label sits where L0H0's dst <- src edge arrives: x = 1 (after layer 0), y = dst
    (x, y) = next(t for t in labels if "L0H0" in t.get_text()).get_position()
    assert round(x) == 1 and y == flow.dst_pos
    # it carries what dst needs: a positive (blue) edge, the heatmap's strongest cell
    assert flow.score(0, 0) > 0
    assert any(tuple(s[0]) == (0, 9) and tuple(s[1]) == (1, 10) for s in line_collections(ax)["heads"].get_segments())
    image = heads_axes(fig).images[0]
    assert np.unravel_index(np.argmax(image.get_array()), image.get_array().shape) == (0, 0)  # [head, layer]
    rendered(fig)


def test_attribution_edges_are_coloured_by_sign_and_sized_by_the_drop(llama):
    flow = llama.trace_information_flow(IDS, src_pos=2, dst_pos=11, verify=True)
    assert flow.method == "attribution" and flow.verification is not None
    fig = flow.plot()
    ax = graph_axes(fig)
    lines = line_collections(ax)
    assert "residual" not in lines  # staying in the residual stream is free: no residual edges
    carrying = [e for e in flow.edges if e.score >= 0]
    suppressing = [e for e in flow.edges if e.score < 0]
    assert all(e.head != RESIDUAL for e in flow.edges) and carrying and suppressing
    assert_segments_are_the_edges(flow, lines["heads"], carrying)
    assert_segments_are_the_edges(flow, lines["suppressing"], suppressing)
    assert len(lines["heads"].get_segments()) + len(lines["suppressing"].get_segments()) == len(flow.edges)
    # positive edges blue, negative ones red; width (and opacity) grow with |score|
    for gid, color in (("heads", HEAD_COLOR), ("suppressing", SUPPRESSING_COLOR)):
        np.testing.assert_allclose(
            lines[gid].get_colors()[:, :3], np.tile(to_rgb(color), (len(lines[gid].get_segments()), 1))
        )
    assert_widths_grow_with_score([lines["suppressing"], lines["heads"]], suppressing + carrying)
    assert_path_follows_its_hops(flow, ax)
    assert all(hop.head != RESIDUAL for path in flow.paths for hop in path.hops)
    assert "log p(target | dst)" in ax.get_title()
    assert [t.get_text().split(":")[0] for t in ax.get_yticklabels()] == [str(p) for p in range(2, 12)]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # src on top

    # the per-layer estimate, signed, on axes that fit it, with the exact knockouts beside it
    curve = curve_axes(fig)
    assert curve.get_title().startswith("estimated drop in log p(target | dst) per layer")
    estimate, exact = (line for line in curve.lines if line.get_gid() != "zero")
    np.testing.assert_allclose(estimate.get_xdata(), flow.layer_ids)
    np.testing.assert_allclose(estimate.get_ydata(), list(flow))
    assert exact.get_label() == "exact knockout"
    np.testing.assert_allclose(exact.get_ydata(), [lf.exact for lf in flow.layers])
    assert curve.get_legend() is not None
    low, high = curve.get_ylim()
    shown = [*flow, *(lf.exact for lf in flow.layers), 0.0]
    assert low <= min(shown) and max(shown) <= high
    assert high - low < 2 * (max(shown) - min(shown))  # fitted, not a fixed (0, 1.05)
    assert any(line.get_gid() == "zero" and list(line.get_ydata()) == [0, 0] for line in curve.lines)

    # every head's estimate on a scale symmetric around 0, top heads outlined and named
    heads = heads_axes(fig)
    (image,) = heads.images
    vmin, vmax = image.get_clim()
    assert vmin == -vmax and vmax == pytest.approx(float(flow.head_scores.abs().max()))
    assert image.get_cmap().name == "RdBu"
    np.testing.assert_allclose(image.get_array(), flow.head_scores.T.numpy())
    assert heads.get_title().startswith("estimated drop per head")
    assert all(f"L{layer}H{head}" in heads.get_title() for layer, head in flow.top_heads)
    assert len([p for p in heads.patches if p.get_gid() == "top-head"]) == len(flow.top_heads)
    rendered(fig)


def test_routes_draw_residual_and_head_edges_with_width_growing_with_flow(llama):
    flow = llama.trace_information_flow(IDS, src_pos=2, dst_pos=11, method="routes")
    fig = flow.plot()
    ax = graph_axes(fig)
    lines = line_collections(ax)
    assert "suppressing" not in lines
    heads = [e for e in flow.edges if e.head != RESIDUAL]
    residual = [e for e in flow.edges if e.head == RESIDUAL]
    assert heads and residual and all(e.score >= 0 for e in flow.edges)
    for collection, edges in ((lines["heads"], heads), (lines["residual"], residual)):
        assert_segments_are_the_edges(flow, collection, edges)
        assert_widths_grow_with_score([collection], edges)
    assert_path_follows_its_hops(flow, ax)
    assert [t.get_text().split(":")[0] for t in ax.get_yticklabels()] == [str(p) for p in range(2, 12)]
    curve = next(a for a in fig.axes if a.get_title() == "f_l(dst) per layer")
    np.testing.assert_allclose(curve.lines[0].get_ydata(), list(flow))
    low, high = curve.get_ylim()
    assert low <= 0 and max(flow) <= high < 1.0  # fits the values (here all small)
    carried = heads_axes(fig)
    assert carried.get_title().startswith("flow carried")
    assert carried.images[0].get_cmap().name == "viridis"
    assert all(f"L{layer}H{head}" in carried.get_title() for layer, head in flow.top_heads)
    rendered(fig)


def test_skipped_layers_count_on_x(llama):
    flow = llama.trace_information_flow(IDS, src_pos=2, dst_pos=11, layers=[1])
    fig = flow.plot()
    ax = graph_axes(fig)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2"]
    for segment in (s for c in line_collections(ax).values() for s in c.get_segments()):
        assert list(segment[:, 0]) == [0, 1]
    np.testing.assert_allclose(curve_axes(fig).lines[0].get_xdata(), [1])
    if flow.paths:
        assert_path_follows_its_hops(flow, ax)
    rendered(fig)


def test_string_tokens_label_positions_and_an_axes_can_be_given():
    flow = copying_flow()
    flow.str_tokens = [f"<t{i}>" for i in range(len(flow.tokens))]
    fig = Figure()
    ax = fig.add_subplot()
    assert flow.plot(ax=ax) is fig
    assert [t.get_text() for t in ax.get_yticklabels()] == ["9: <t9>", "10: <t10>"]
    rendered(fig)
