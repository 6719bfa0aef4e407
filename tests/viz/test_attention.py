"""plot_attention_pattern, of a pattern or of an activation cache: one head, tokens on both axes."""

from __future__ import annotations

import numpy as np
import pytest

from arrakis.viz import plot_attention_pattern
from tests.conftest import prompt
from tests.viz.conftest import main_axes, rendered


def test_the_cache_plots_one_heads_pattern_with_token_labels(llama):
    ids = prompt(llama.cfg.d_vocab, batch=2, pos=6)
    _, cache = llama.model.run_with_cache(ids)
    tokens = ["The", " cat", " sat", " on", " the", " mat"]
    fig = plot_attention_pattern(cache, tokens, layer=1, head=2, batch=1)
    ax = main_axes(fig)
    np.testing.assert_allclose(ax.images[0].get_array(), cache["pattern", 1][1, 2].numpy())
    assert [t.get_text() for t in ax.get_xticklabels()] == tokens  # keys
    assert [t.get_text() for t in ax.get_yticklabels()] == tokens  # queries
    assert ax.get_title() == "attention pattern L1H2"
    rendered(fig)


def test_patterns_of_several_heads_need_a_head_and_labels_stay_literal():
    pattern = np.tril(np.ones((3, 4, 4)))
    pattern = pattern / pattern.sum(-1, keepdims=True)  # [head, query_pos, key_pos]
    with pytest.raises(ValueError, match="pass head="):
        plot_attention_pattern(pattern)
    with pytest.raises(IndexError, match="out of range: the pattern has 3 heads"):
        plot_attention_pattern(pattern, head=3)
    with pytest.raises(ValueError, match="tokens has 2 entries"):
        plot_attention_pattern(pattern, ["a", "b"], head=0)
    ax = main_axes(plot_attention_pattern(pattern, ["$x", "\n", 7, "<s>"], head=1))
    assert [t.get_text() for t in ax.get_xticklabels()] == [r"\$x", "\\n", "7", "<s>"]


def test_a_cache_kept_with_a_transform_says_so(llama):
    ids = prompt(llama.cfg.d_vocab, batch=1, pos=5)
    _, cache = llama.model.run_with_cache(ids, names=lambda n: "pattern" in n, transform=lambda n, t: t[0])
    with pytest.raises(ValueError, match="without a transform"):
        plot_attention_pattern(cache, layer=0, head=0)
    with pytest.raises(ValueError, match="needs layer="):
        plot_attention_pattern(cache, head=0)
