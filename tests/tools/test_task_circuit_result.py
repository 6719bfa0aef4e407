"""``TaskCircuit`` against fake runners on real edge graphs: an additive runner (patching a
set of edges drops the metric by the sum of their effects, so every faithfulness has a
closed form) and a saturating one (the drop is a tanh of that sum, so a curve computed from
the scores instead of from runs would be wrong). Every expected number is computed here by
hand from the fake effects."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import Tensor

from arrakis.models.config import ModelShape
from arrakis.models.edge_graph import EdgeGraph, edge_graph
from arrakis.tools.results.task_circuit import CircuitCurve, CircuitEdge, CircuitVerification, TaskCircuit

CLEAN = 3.0
SATURATION = 2.0


def shape(n_layers: int = 2, n_heads: int = 4, n_kv_heads: int = 4) -> ModelShape:
    return ModelShape(
        family="llama",
        model_type="llama",
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_model=64,
        d_head=16,
        d_mlp=128,
        d_vocab=512,
        n_ctx=None,
        norm="rmsnorm",
        norm_eps=1e-6,
        parallel_residual=False,
        positional="rotary",
    )


class FakeRunner:
    """metric(patched) = clean - drop(sum of the patched edges' effects); drop is the sum
    itself (additive) or total * tanh(k sum / total) / tanh(k) (saturating). Patching every
    edge gives the corrupted metric either way."""

    def __init__(self, graph: EdgeGraph, effects: Tensor, saturating: bool = False) -> None:
        self.graph, self.effects, self.saturating = graph, effects.double(), saturating
        self.total = float(self.effects.sum())
        self.clean_metric, self.corrupted_metric = CLEAN, CLEAN - self.total
        self.calls: list[int] = []

    def drop(self, summed: Tensor) -> Tensor:
        if not self.saturating:
            return summed
        return self.total * torch.tanh(SATURATION * summed / self.total) / math.tanh(SATURATION)

    def run(self, patched: Tensor, progress: bool = False) -> Tensor:
        assert patched.dtype == torch.bool and patched.shape[1] == self.graph.n_edges
        self.calls.append(patched.shape[0])
        return (CLEAN - self.drop((patched.double() * self.effects).sum(-1))).float()


def positive_effects(n: int, seed: int = 0) -> Tensor:
    """Distinct positive effects, a few large and many small."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=generator, dtype=torch.float64) ** 4 + torch.arange(n) * 1e-6


def make(scores: Tensor | None = None, saturating: bool = False, **kw: int) -> tuple[TaskCircuit, FakeRunner, Tensor]:
    graph = edge_graph(shape(**kw))
    effects = positive_effects(graph.n_edges)
    runner = FakeRunner(graph, effects, saturating)
    result = TaskCircuit(graph, effects.float() if scores is None else scores, runner, method="fake", task="toy")
    return result, runner, effects


def test_edges_are_ranked_by_absolute_score_with_ties_by_index() -> None:
    graph = edge_graph(shape())
    scores = torch.zeros(graph.n_edges)
    scores[[5, 7, 9, 3]] = torch.tensor([0.5, -2.0, 0.5, 1.0])
    result = TaskCircuit(graph, scores, FakeRunner(graph, positive_effects(graph.n_edges)), method="fake")
    edges = result.edges
    assert [e.index for e in edges[:5]] == [7, 3, 5, 9, 0]
    assert [e.index for e in edges] == sorted(range(graph.n_edges), key=lambda i: (-abs(float(scores[i])), i))
    top = edges[0]
    assert isinstance(top, CircuitEdge) and top.name == graph.edge_name(7) and top.score == -2.0
    assert str(top) == f"{graph.edge_name(7)}  -2.000"
    assert result.top_edges(3) == edges[:3]
    assert result.circuit(2).nonzero().flatten().tolist() == [3, 7]
    for edge in edges:  # channel split off the receiver's name, and back
        assert edge.name == graph.edge_name(edge.index)
        assert (edge.channel is None) == (graph.receivers[int(graph.edges[edge.index, 1])].channel is None)


def test_faithfulness_of_the_top_n_circuit_matches_the_additive_closed_form() -> None:
    # scores rank the edges in a different order than the effects, so the circuit is the
    # scores' top n but the metric comes from the effects: what runs, not what is estimated
    graph = edge_graph(shape())
    effects = positive_effects(graph.n_edges)
    scores = torch.flip(effects, [0]).float()
    runner = FakeRunner(graph, effects)
    result = TaskCircuit(graph, scores, runner, method="fake")
    sizes = [0, 1, 7, 30, graph.n_edges]
    got = result.faithfulness(sizes)
    assert runner.calls == [len(sizes)]
    total = float(effects.sum())
    for n, value in zip(sizes, got, strict=True):
        kept = torch.argsort(-scores.abs(), stable=True)[:n]
        outside = total - float(effects[kept].sum())
        assert value == pytest.approx(1 - outside / total, abs=1e-5)
    assert got[0] == pytest.approx(0.0, abs=1e-6) and got[-1] == pytest.approx(1.0, abs=1e-6)
    single = result.faithfulness(7)
    assert isinstance(single, float) and single == pytest.approx(got[2]) and runner.calls == [5, 1]


def test_curve_runs_everything_once_and_its_areas_are_the_trapezoid_rule() -> None:
    result, runner, effects = make()
    n_edges = result.n_edges
    curve = result.curve(n_random=4, seed=1)
    assert isinstance(curve, CircuitCurve)
    assert curve.sizes[0] == 0 and curve.sizes[-1] == n_edges and list(curve.sizes) == sorted(set(curve.sizes))
    assert 8 <= len(curve.sizes) <= 13
    # one runner call; equal circuits run once: the random circuits of 0 and of all edges are the top ones
    assert runner.calls == [(len(curve.sizes) - 2) * 5 + 2]
    assert curve.fractions == tuple(k / n_edges for k in curve.sizes)
    total = float(effects.sum())
    by_effect = torch.sort(effects, descending=True).values
    for n, value in zip(curve.sizes, curve.faithfulness, strict=True):
        assert value == pytest.approx(float(by_effect[:n].sum()) / total, abs=1e-5)
    for top, rand, draws in zip(curve.faithfulness, curve.random, curve.random_draws, strict=True):
        assert len(draws) == 4 and rand == pytest.approx(sum(draws) / 4)
        assert top >= rand - 1e-5  # the scores are the effects: no circuit of that size beats the top
    assert all(t > r + 0.02 for t, r in zip(curve.faithfulness[1:-1], curve.random[1:-1], strict=True))
    assert curve.random[0] == pytest.approx(0.0, abs=1e-5) and curve.random[-1] == pytest.approx(1.0, abs=1e-5)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    x = np.array(curve.fractions)
    top, rand = np.array(curve.faithfulness), np.array(curve.random)
    assert curve.area == pytest.approx(trapezoid(top, x))
    assert curve.area_between == pytest.approx(trapezoid(np.abs(1 - top), x))
    assert curve.random_area == pytest.approx(trapezoid(rand, x))
    assert curve.random_area_between == pytest.approx(trapezoid(np.abs(1 - rand), x))
    assert curve.area > curve.random_area and curve.area_between < curve.random_area_between
    again = result.curve(n_random=4, seed=1)
    assert again.random_draws == curve.random_draws  # seeded
    assert json.loads(json.dumps(curve.to_dict()))["sizes"] == list(curve.sizes)
    assert "size" in repr(curve) and f"{curve.area:.3f}" in repr(curve)


def test_a_saturating_runner_gives_the_curve_its_runs_give_not_the_scores_sum() -> None:
    result, runner, effects = make(saturating=True)
    curve = result.curve(sizes=[0, 3, 20, result.n_edges], n_random=0)
    assert runner.calls == [4] and curve.random_draws == ((), (), (), ())
    total = float(effects.sum())
    by_effect = torch.sort(effects, descending=True).values
    for n, value in zip(curve.sizes, curve.faithfulness, strict=True):
        outside = total - float(by_effect[:n].sum())
        drop = total * math.tanh(SATURATION * outside / total) / math.tanh(SATURATION)
        assert value == pytest.approx(1 - drop / total, abs=1e-5)
    additive = float(by_effect[:3].sum()) / total
    assert abs(curve.faithfulness[1] - additive) > 0.05  # saturation makes the difference


def test_verify_patches_each_top_edge_alone_and_ranks_against_the_scores() -> None:
    result, runner, effects = make()
    check = result.verify(k=10)
    assert isinstance(check, CircuitVerification) and runner.calls == [10]
    top = torch.argsort(-effects, stable=True)[:10]
    assert check.exact == pytest.approx(effects[top].tolist(), abs=1e-5)
    assert check.spearman == pytest.approx(1.0)
    assert [row[0] for row in check.rows] == [result.graph.edge_name(int(i)) for i in top]
    assert check.largest_error < 1e-5
    assert json.loads(json.dumps(check.to_dict()))["spearman"] == pytest.approx(1.0)
    assert "Spearman 1.000" in repr(check)
    # scores ranking the same edges in reverse: exact drops still the effects, Spearman -1
    graph, scores = result.graph, torch.zeros(result.n_edges)
    scores[top] = torch.linspace(1.0, 2.0, 10)
    reversed_check = TaskCircuit(graph, scores, runner, method="fake").verify(k=10)
    assert reversed_check.spearman == pytest.approx(-1.0)


def test_readers_lists_each_heads_senders_per_channel() -> None:
    result, _, _ = make(n_layers=4)
    assert result.n_edges > 200
    readers = result.readers()
    graph = result.graph
    top = result.edges[:200]
    heads_in_top = {e.receiver for e in top if e.channel}
    assert set(readers) == heads_in_top
    for name, channels in readers.items():
        for channel, senders in channels.items():
            expected = [(e.sender, e.score) for e in top if e.receiver == name and e.channel == channel][:5]
            assert senders == expected
    # a head whose edges are all outside the top 200 is only listed when asked for
    scores = result.scores.clone()
    into = [i for i in range(graph.n_edges) if graph.receivers[int(graph.edges[i, 1])].name.startswith("L3H1 ")]
    scores[into] = 1e-9 * (1 + torch.arange(len(into), dtype=torch.float32))
    quiet = TaskCircuit(graph, scores, result.runner, method="fake")
    assert "L3H1" not in quiet.readers()
    only = quiet.readers("L3H1")
    assert list(only) == ["L3H1"] and len(only["L3H1"]["k"]) == 5
    with pytest.raises(ValueError, match=r"head must be .*0\.\.3.*'L9H0'"):
        quiet.readers("L9H0")


def test_readers_lists_a_kv_heads_edges_under_every_query_head_of_its_group() -> None:
    result, _, _ = make(n_layers=2, n_heads=4, n_kv_heads=2)
    assert any("grouped-query" in note for note in result.notes)
    readers = result.readers()
    assert set(readers) == {f"L{layer}H{h}" for layer in range(2) for h in range(4)}  # 82 edges, all in the top 200
    for layer in range(2):
        for h in range(4):
            group = h // 2  # 4 query heads, 2 KV heads: heads 0, 1 read KV head 0; heads 2, 3 KV head 1
            for channel in ("k", "v"):
                kv = [
                    (e.sender, e.score)
                    for e in result.edges
                    if (e.receiver, e.channel) == (f"L{layer}KV{group}", channel)
                ]
                assert readers[f"L{layer}H{h}"][channel] == kv[:5]
            q = [(e.sender, e.score) for e in result.edges if e.receiver == f"L{layer}H{h}" and e.channel == "q"]
            assert readers[f"L{layer}H{h}"]["q"] == q[:5]
    assert readers["L1H0"]["k"] != readers["L1H2"]["k"]


def test_plots_draw_the_top_edges_and_the_curve() -> None:
    from matplotlib.figure import Figure

    result, _, _ = make(n_kv_heads=2)
    fig = result.plot("graph", n=12)
    assert isinstance(fig, Figure)
    lines = [line for line in fig.axes[0].get_lines() if line.get_gid() == "edge"]
    assert len(lines) == 12
    curve = result.curve(n_random=1)
    fig = result.plot("curve", curve=curve)
    assert fig.axes[0].get_xscale() == "log" and f"{curve.area:.3f}" in fig.axes[0].get_title()
    assert isinstance(curve.plot(), Figure)
    with pytest.raises(ValueError, match="kind must be 'graph' or 'curve'"):
        result.plot("bars")


def test_to_dict_summary_and_repr() -> None:
    result, _, _ = make(n_layers=3, n_kv_heads=2)
    assert result.n_edges > 100
    data = json.loads(json.dumps(result.to_dict()))
    assert data["method"] == "fake" and data["task"] == "toy" and data["n_edges"] == result.n_edges
    assert data["clean_metric"] == CLEAN and len(data["top_edges"]) == 100
    assert data["top_edges"][0]["edge"] == result.edges[0].name and data["notes"] == result.notes
    summary = result.summary()
    assert "fake" in summary and str(result.edges[0]) in summary and str(result.edges[9]) in summary
    assert str(result.edges[10]) not in summary
    assert "note: grouped-query" in repr(result)


def test_bad_input_is_refused_with_the_valid_range() -> None:
    result, runner, _ = make()
    n = result.n_edges
    for bad in (-1, n + 1):
        with pytest.raises(ValueError, match=rf"n must be in 0\.\.{n}"):
            result.circuit(bad)
    for bad in (2.0, True, "3"):
        with pytest.raises(TypeError, match=rf"n must be an int in 0\.\.{n}"):
            result.circuit(bad)
    with pytest.raises(ValueError, match=rf"n must be in 0\.\.{n}"):
        result.faithfulness([1, n + 5])
    with pytest.raises(ValueError, match=rf"k must be in 1\.\.{n}"):
        result.verify(0)
    with pytest.raises(ValueError, match=rf"sizes must be in 0\.\.{n}"):
        result.curve(sizes=[1, -2])
    with pytest.raises(ValueError, match=r"scores must have shape"):
        TaskCircuit(result.graph, torch.zeros(3), runner, method="fake")
    with pytest.raises(TypeError, match=r"scores must be a tensor"):
        TaskCircuit(result.graph, [0.0] * n, runner, method="fake")
    with pytest.raises(ValueError, match="finite"):
        TaskCircuit(result.graph, torch.full((n,), float("nan")), runner, method="fake")
    assert runner.calls == []
    runner.corrupted_metric = runner.clean_metric
    with pytest.raises(ValueError, match="does not move the metric"):
        result.faithfulness(3)
    with pytest.raises(ValueError, match="does not move the metric"):
        result.curve()
    assert runner.calls == []
