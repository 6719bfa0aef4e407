"""Edge attribution and routes against brute force: the closed form of the renormalised
knockout's first-order effect, the exact maximin routes, Spearman's rank correlation."""

from __future__ import annotations

import itertools

import pytest
import torch

from arrakis.circuits.attribution import edge_attributions, spearman, strongest_routes


def test_edge_attribution_is_the_first_order_effect_of_the_renormalised_knockout():
    """-sum_k g[i, k] dA[i, k] with dA from zeroing A[i, j] and renormalising the row."""
    g = torch.Generator().manual_seed(0)
    pattern = torch.softmax(torch.randn(3, 5, 5, generator=g), -1)
    grad = torch.randn(3, 5, 5, generator=g)
    fast = edge_attributions(pattern, grad)
    for h, i, j in itertools.product(range(3), range(5), range(5)):
        row = pattern[h, i]
        knocked = row.clone()
        knocked[j] = 0
        knocked = knocked / knocked.sum()  # what softmax gives with the score at -inf
        brute = -(grad[h, i] * (knocked - row)).sum()
        torch.testing.assert_close(fast[h, i, j], brute, atol=1e-5, rtol=1e-4)


def test_edge_attribution_of_a_linear_metric_is_exact():
    """For m = <G, A> the first order is everything: estimate == exact change."""
    g = torch.Generator().manual_seed(1)
    pattern = torch.softmax(torch.randn(2, 4, 4, generator=g), -1)
    weights = torch.randn(2, 4, 4, generator=g)
    estimate = edge_attributions(pattern, weights)
    h, i, j = 1, 2, 3
    knocked = pattern.clone()
    knocked[h, i, j] = 0
    knocked[h, i] /= knocked[h, i].sum()
    exact = (weights * pattern).sum() - (weights * knocked).sum()
    torch.testing.assert_close(estimate[h, i, j], exact, atol=1e-5, rtol=1e-5)


def brute_force_routes(edges: list[torch.Tensor]) -> list[tuple[float, list]]:
    """Every route from row 0 to the last row (hops climb in layer and in row), by enumeration."""
    n_heads, n_rows, _ = edges[0].shape
    found = []

    def extend(layer: int, row: int, strength: float, hops: list) -> None:
        if row == n_rows - 1 and hops:
            found.append((strength, list(hops)))
            return
        for index in range(layer, len(edges)):
            for h, target in itertools.product(range(n_heads), range(row + 1, n_rows)):
                score = float(edges[index][h, target, row])
                if score > 0:
                    extend(index + 1, target, min(strength, score), [*hops, (index, h, row, target)])

    extend(0, 0, float("inf"), [])
    return sorted(found, key=lambda r: -r[0])


@pytest.mark.parametrize("seed", range(6))
def test_strongest_routes_equal_brute_force_enumeration(seed):
    g = torch.Generator().manual_seed(seed)
    n_layers, n_heads, n_rows = 3, 2, 4
    edges = [torch.randn(n_heads, n_rows, n_rows, generator=g) for _ in range(n_layers)]
    expected = brute_force_routes(edges)
    for n in (1, 3, 8):
        routes = strongest_routes(edges, n, budget=17 if seed % 2 else 1 << 20)  # a small budget: row chunks
        assert [s for s, _ in routes] == pytest.approx([s for s, _ in expected[:n]])
        for strength, hops in routes:  # a real route whose strength is its weakest edge
            assert hops[0][2] == 0 and hops[-1][3] == n_rows - 1
            assert all(a[3] == b[2] and a[0] < b[0] for a, b in itertools.pairwise(hops))
            assert strength == pytest.approx(min(float(edges[i][h, t, s]) for i, h, s, t in hops))


def test_routes_ignore_non_positive_and_backward_edges():
    edges = [torch.zeros(1, 3, 3), torch.zeros(1, 3, 3)]
    edges[0][0, 0, 1] = 5.0  # backward (target before source): never an edge
    edges[1][0, 2, 0] = -1.0  # works against the metric: not a carrying edge
    assert strongest_routes(edges, 3) == []
    edges[1][0, 2, 0] = 0.5
    assert strongest_routes(edges, 3) == [(0.5, [(1, 0, 0, 2)])]


def test_spearman_against_its_definition():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    # ties take their average rank: ranks of y are [1.5, 1.5, 3, 4, 5]
    y = torch.tensor([2.0, 2.0, 5.0, 7.0, 9.0])
    rx, ry = torch.tensor([1, 2, 3, 4, 5.0]), torch.tensor([1.5, 1.5, 3, 4, 5])
    expected = float(torch.corrcoef(torch.stack([rx, ry]))[0, 1])
    assert spearman(x, y) == pytest.approx(expected)
    assert spearman(x, torch.ones(5)) != spearman(x, torch.ones(5))  # NaN for a constant
