"""Composition scores through each of composition_scores' paths against the definition: grouped
K/V heads (the shared-head path), Grams from precomputed factors, and the band-by-band cast
used when the factors would not fit the memory budget; plus singular heads and bfloat16."""

from __future__ import annotations

import pytest
import torch

from arrakis.circuits.composition import MODES, composition_scores, composition_scores_brute_force


def grouped_weights(n_layers, n_heads, n_kv_heads, d_model, d_head, seed=0, dtype=torch.float32):
    """Random weights with K, V shared by blocks of n_heads / n_kv_heads query heads (expanded,
    as HeadWeights stacks them), each head with its own scale."""
    g = torch.Generator().manual_seed(seed)
    group = torch.arange(n_heads) // (n_heads // n_kv_heads)

    def draw(heads, *shape):
        scale = torch.randn(n_layers, heads, 1, 1, generator=g).exp()
        return torch.randn(n_layers, heads, *shape, generator=g) * scale

    W_Q, W_O = draw(n_heads, d_model, d_head), draw(n_heads, d_head, d_model)
    W_K, W_V = draw(n_kv_heads, d_model, d_head)[:, group], draw(n_kv_heads, d_model, d_head)[:, group]
    return tuple(w.to(dtype) for w in (W_Q, W_K, W_V, W_O))


def check(weights, **kwargs):
    fast = composition_scores(*weights, **kwargs)
    for mode in MODES:
        expected = composition_scores_brute_force(*weights, mode)
        torch.testing.assert_close(fast[mode], expected, atol=1e-5, rtol=0, msg=lambda m, mode=mode: f"{mode}: {m}")


# (n_layers, n_heads, n_kv_heads, d_model, d_head): shared-head path for K and V where
# 2 d_head^2 <= 1.25 d_model * group, Gram path otherwise
@pytest.mark.parametrize(
    "shape",
    [(3, 8, 2, 128, 8), (5, 6, 3, 64, 4), (4, 4, 1, 32, 4), (3, 4, 4, 32, 4), (7, 4, 2, 24, 8), (2, 6, 2, 40, 5)],
    ids=["group4", "group2-odd-layers", "one-kv-head", "no-groups", "gram-path-gqa", "two-layers"],
)
def test_grouped_heads_match_brute_force(shape):
    check(grouped_weights(*shape, seed=sum(shape)))


@pytest.mark.parametrize("band", [None, 5, 64])
def test_band_by_band_cast_when_factors_exceed_the_budget(band):
    """A budget too small for the float32 factors takes the older chunked-cast path."""
    weights = grouped_weights(5, 3, 3, 40, 8, seed=3)
    check(weights, band=band, memory_budget=1000, head_chunk=2)


def test_singular_and_zero_heads():
    """Rank-deficient W_V and a zero head: the Cholesky factor fails and the eigh fallback
    must give the same scores."""
    W_Q, W_K, W_V, W_O = grouped_weights(3, 4, 2, 32, 6, seed=5)
    W_V = W_V.clone()
    W_V[0, :, :, 0] = 0  # rank d_head - 1
    W_V[1] = 0
    W_O = W_O.clone()
    W_O[2, 1] = 0
    fast = composition_scores(W_Q, W_K, W_V, W_O)
    for mode in MODES:
        expected = composition_scores_brute_force(W_Q, W_K, W_V, W_O, mode)
        zero_norm = expected.isnan()  # 0 / 0 in the definition; composition_scores gives 0
        assert zero_norm.any() and (fast[mode][zero_norm] == 0).all()
        torch.testing.assert_close(fast[mode][~zero_norm], expected[~zero_norm], atol=1e-5, rtol=0)


def test_bfloat16_weights_score_as_their_float32_values():
    weights = grouped_weights(3, 8, 2, 128, 8, seed=7, dtype=torch.bfloat16)
    fast = composition_scores(*weights)
    exact = composition_scores(*(w.float() for w in weights))
    for mode in MODES:
        torch.testing.assert_close(fast[mode], exact[mode], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("n_layers", [6, 11, 13, 30])
def test_every_layer_pair_of_deep_models(n_layers):
    # the pair products split layers into halves of segments; one-layer segments are dropped,
    # leaving gaps between segments of equal size (30 layers: 13-15 and 16-18), which must not
    # be batched as if contiguous (that scored pairs such as L16 -> L17 wrongly)
    check(grouped_weights(n_layers, 2, 2, 16, 4, seed=n_layers))
