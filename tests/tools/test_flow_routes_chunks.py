"""The routes method a few rows at a time (``arrakis.circuits.flow.chunked_importances``): the
default budget (4M floats of scratch) never splits a test prompt, so these tests shrink it
until every layer takes several chunks, check that it did, and compare with the brute force
of ``test_flow_routes_propagation`` and with the one-chunk result."""

from __future__ import annotations

import pytest
import torch

from arrakis.circuits import flow as flow_math
from arrakis.tools import WriteReadAnalyzer, flow_routes
from tests.tools.test_flow_routes_propagation import (
    N_LAYERS,
    TOL,
    assert_matches_brute_force,
    brute_force_paths,
    brute_force_routes,
    deep,
    rows,
)

ROWS_PER_CHUNK = 3


@pytest.fixture
def small_chunks(monkeypatch):
    """Routes computed ``ROWS_PER_CHUNK`` query rows at a time; records each layer's chunks."""
    original = flow_math.chunked_importances
    calls: list[list[slice]] = []

    def spy(y, residual, pattern, value_out, b_O, **kwargs):
        n_keys, d_model = pattern.shape[-1], y.shape[-1]
        kwargs["budget"] = ROWS_PER_CHUNK * n_keys * d_model  # the chunk size the budget allows
        calls.append([])
        for chunk in original(y, residual, pattern, value_out, b_O, **kwargs):
            calls[-1].append(chunk[0])
            yield chunk

    monkeypatch.setattr(flow_routes, "chunked_importances", spy)
    return calls


def trace(model, ids, src, dst, **kwargs):
    return WriteReadAnalyzer(model).trace_information_flow(ids, src_pos=src, dst_pos=dst, method="routes", **kwargs)


@pytest.mark.parametrize("variant", ["gpt2", "llama-mqa-bias", "gemma2"])
def test_many_chunks_give_the_brute_force_and_the_one_chunk_result(variant, small_chunks, monkeypatch):
    model = deep(variant)
    ids = rows(model.cfg.d_vocab, 20, seed=11)
    src, dst = 4, 18  # 15 rows: 5 chunks of 3 per layer, keys starting after src
    chunked = trace(model, ids, src, dst, n_paths=4)
    # it did run in several chunks, in order, covering every row once, in every layer
    assert len(small_chunks) == N_LAYERS
    for chunks in small_chunks:
        assert len(chunks) == 5
        assert [(c.start, c.stop) for c in chunks] == [(r, r + ROWS_PER_CHUNK) for r in range(0, 15, ROWS_PER_CHUNK)]
    brute = brute_force_routes(model, ids, src, dst)
    assert_matches_brute_force(chunked, brute, N_LAYERS)
    # the beam search across chunks finds the same best routes as an exhaustive search
    best = brute_force_paths(brute, src, dst, 4)
    assert [p.score for p in chunked.paths] == pytest.approx([score for score, _ in best], abs=TOL, rel=TOL)

    monkeypatch.undo()  # the default budget: one chunk
    whole = trace(model, ids, src, dst, n_paths=4)
    assert len(small_chunks) == N_LAYERS  # the spy is gone
    assert list(whole) == pytest.approx(list(chunked), abs=TOL)
    for a, b in zip(whole.layers, chunked.layers, strict=True):
        assert [h.score for h in a.heads] == pytest.approx([h.score for h in b.heads], abs=TOL)
        assert [h.importance for h in a.heads] == pytest.approx([h.importance for h in b.heads], abs=TOL)
        assert (a.residual_share, a.bias_share) == pytest.approx((b.residual_share, b.bias_share), abs=TOL)
    assert [p.score for p in whole.paths] == pytest.approx([p.score for p in chunked.paths], abs=TOL)
    assert [p.describe() for p in whole.paths] == [p.describe() for p in chunked.paths]

    def key(edge: dict) -> tuple:
        return edge.layer, edge.head, edge.source, edge.target

    assert sorted(map(key, whole.edges)) == sorted(map(key, chunked.edges))
    flows = {key(e): e.flow for e in whole.edges}
    assert all(e.flow == pytest.approx(flows[key(e)], abs=TOL) for e in chunked.edges)


def test_chunked_importances_equal_the_whole_computation_with_keys_after_an_offset():
    """The pure function: rows r = query positions first_key_row + r, each chunk given only
    the keys up to its last row; every chunk's numbers equal those of all rows at once, and
    the keys a chunk leaves out carry nothing (causal attention)."""
    g = torch.Generator().manual_seed(0)
    n_heads, n_rows, offset, d_model = 3, 7, 4, 8
    n_keys = offset + n_rows
    logits = torch.randn(n_heads, n_rows, n_keys, generator=g)
    causal = torch.arange(n_keys)[None, :] <= (offset + torch.arange(n_rows))[:, None]
    pattern = logits.masked_fill(~causal, float("-inf")).softmax(-1)
    residual, value_out = torch.randn(n_rows, d_model, generator=g), torch.randn(n_keys, n_heads, d_model, generator=g)
    for b_O in (torch.randn(d_model, generator=g), torch.randn(n_rows, d_model, generator=g)):  # shared, per row
        y = residual + torch.einsum("hqk,khm->qm", pattern, value_out) + b_O
        res, heads, bias = flow_math.part_importances(y, residual, pattern, value_out, b_O)
        chunks = list(
            flow_math.chunked_importances(
                y, residual, pattern, value_out, b_O, first_key_row=offset, budget=2 * n_keys * d_model
            )
        )
        assert [(c[0].start, c[0].stop) for c in chunks] == [(0, 2), (2, 4), (4, 6), (6, 7)]
        for rows_, c_res, c_heads, c_bias in chunks:
            keys = offset + rows_.stop
            assert c_heads.shape == (n_heads, rows_.stop - rows_.start, keys)
            torch.testing.assert_close(c_res, res[rows_])
            torch.testing.assert_close(c_bias, bias[rows_])
            torch.testing.assert_close(c_heads, heads[:, rows_, :keys])
            assert (heads[:, rows_, keys:] == 0).all()
        assert len(list(flow_math.chunked_importances(y, residual, pattern, value_out, b_O))) == 1  # the default
