"""Attention knockout (Geva et al. 2023; docs/mathematics.md#information-flow) is the renormalised row, computed by
hand, for grouped-query and multi-query attention, local (gpt-neo) and sliding-window
(mistral, gemma2, gemma3) layers and soft-capped logits.

The independent computation: knocking out edge dst <- src of head h in layer l sets
A[h, dst, src] to 0 and renormalises the row, A'[h, dst, k] = A[h, dst, k] / (1 - A[h, dst, src]),
so only z[dst, h] = sum_j A'[h, dst, j] v_j changes in that layer. It is computed from the
clean cache's pattern and values, written over z[dst, h] where it enters Hugging Face's own
output projection (a forward pre-hook on that module, registered here), and the rest of the
forward pass is Hugging Face's. Windows are read from the Hugging Face config, not from the
library.
"""

from __future__ import annotations

from operator import attrgetter

import pytest
import torch

from arrakis import HookedAutoModel
from tests.conftest import VARIANTS as ALL_VARIANTS
from tests.conftest import shared

ATOL, RTOL = 1e-5, 1e-5
T = 20  # longer than twice every window below
# GQA (2 KV heads of 4), multi-query with biases, local layers, sliding windows, soft-capping
VARIANTS = ["llama", "llama-mqa-bias", "qwen2-mqa", "gpt-neo", "mistral", "gemma2", "gemma2-mqa-bias", "gemma3"]
WINDOWED = ["gpt-neo", "mistral", "gemma2", "gemma3"]


def window(model: HookedAutoModel, layer: int) -> int | None:
    """The local attention window of ``layer`` from the Hugging Face config (query i sees keys
    i - window < j <= i), or None for a global layer."""
    config = model.hf_model.config
    if getattr(config, "attention_layers", None) is not None:  # gpt-neo: "global" / "local"
        return config.window_size if config.attention_layers[layer] == "local" else None
    if getattr(config, "layer_types", None) is not None:  # gemma2, gemma3
        return config.sliding_window if config.layer_types[layer] == "sliding_attention" else None
    return getattr(config, "sliding_window", None)  # mistral: every layer


def ids_for(model: HookedAutoModel, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, model.cfg.d_vocab, (1, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits_with_z(model: HookedAutoModel, ids: torch.Tensor, layer: int, head: int, pos: int, z: torch.Tensor):
    """Logits [pos, d_vocab] of a forward pass whose z[pos, head] in ``layer`` is ``z``."""
    d_head = model.cfg.d_head
    o_proj = attrgetter(model.adapter.o)(attrgetter(model.adapter.layers)(model.hf_model)[layer])

    def overwrite(module, args):
        merged = args[0].clone()  # [batch, pos, head * d_head], heads in order
        merged[0, pos, head * d_head : (head + 1) * d_head] = z
        return (merged, *args[1:])

    handle = o_proj.register_forward_pre_hook(overwrite)
    try:
        return model.hf_model(input_ids=ids, use_cache=False).logits[0].float()
    finally:
        handle.remove()


def renormalised_z(cache, layer: int, head: int, dst: int, src: int) -> torch.Tensor:
    """sum_j A'[h, dst, j] v_j with A' the row without src, renormalised (by hand)."""
    row = cache["pattern", layer][0, head, dst].double().clone()  # [key_pos]
    v = cache["v", layer][0, :, head].double()  # [key_pos, d_head], one slice per query head
    removed = float(row[src])
    row[src] = 0.0
    row = row / (1.0 - removed)
    return (row[:, None] * v).sum(0).float()


def strong_source(model: HookedAutoModel, cache, layer: int, head: int, dst: int) -> int:
    """The key dst attends to most among those below 0.9 (so that 1 - A is not tiny): an
    edge whose knockout matters. gpt-neo, without score scaling, has very peaked rows."""
    row = cache["pattern", layer][0, head, dst]
    return int(torch.where(row < 0.9, row, 0.0).argmax())


def edges_of(model: HookedAutoModel, cache) -> list[tuple[int, int, int, int]]:
    """(layer, head, dst, src) edges in every layer, several heads and destinations."""
    last = model.cfg.n_layers - 1
    picks = [(0, 0, 18), (0, 3, 11), (1, 1, 18), (1, 2, 14), (last, 0, 19)]
    return [(layer, head, dst, strong_source(model, cache, layer, head, dst)) for layer, head, dst in picks]


@pytest.mark.parametrize("variant", VARIANTS)
def test_knockout_is_the_renormalised_row_written_into_z(variant):
    model = shared(variant)
    ids = ids_for(model)
    clean, cache = model.run_with_cache(ids)
    edges = edges_of(model, cache)
    assert any(src != dst for _, _, dst, src in edges)
    for layer, head, dst, src in edges:
        assert cache["pattern", layer][0, head, dst, src] > 1e-2  # a real edge
        z = renormalised_z(cache, layer, head, dst, src)
        expected = logits_with_z(model, ids, layer, head, dst, z)
        knocked = model.run_with_attention_knockout(ids, {layer: [(head, dst, src)]}).logits[0].float()
        torch.testing.assert_close(knocked, expected, atol=ATOL, rtol=RTOL)
        assert (knocked[dst:] - clean.logits[0, dst:]).abs().amax() > 1e-4  # it changed something
        torch.testing.assert_close(knocked[:dst], clean.logits[0, :dst], atol=ATOL, rtol=RTOL)  # causal


@pytest.mark.parametrize("variant", ["llama", "llama-mqa-bias", "qwen2-mqa", "gemma2-mqa-bias"])
def test_grouped_values_are_the_kv_heads_shared_by_their_query_heads(variant):
    """Under GQA/MQA the values each query head mixes are its KV group's: hook_v (expanded) is
    the v projection's output, KV head h // (n_heads / n_kv_heads), as Hugging Face's
    repeat_kv pairs them. So the hand knockout above uses the values the model uses."""
    model = shared(variant)
    cfg = model.cfg
    assert cfg.n_kv_heads < cfg.n_heads
    ids = ids_for(model)
    block = attrgetter(model.adapter.layers)(model.hf_model)[1]
    captured = {}
    handle = attrgetter(model.adapter.v)(block).register_forward_hook(lambda m, a, out: captured.setdefault("v", out))
    try:
        _, cache = model.run_with_cache(ids)
    finally:
        handle.remove()
    v_kv = captured["v"][0].view(T, cfg.n_kv_heads, cfg.d_head)
    group = cfg.n_heads // cfg.n_kv_heads
    for h in range(cfg.n_heads):
        torch.testing.assert_close(cache["v", 1][0, :, h], v_kv[:, h // group], atol=0, rtol=0)


@pytest.mark.parametrize("variant", WINDOWED)
def test_clean_patterns_respect_the_window_of_the_config(variant):
    model = shared(variant)
    _, cache = model.run_with_cache(ids_for(model))
    i, j = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
    windows = [window(model, layer) for layer in range(model.cfg.n_layers)]
    assert any(w is not None and w < T // 2 for w in windows)  # a local layer this prompt exceeds
    for layer, w in enumerate(windows):
        A = cache["pattern", layer][0]  # [head, q, k]
        visible = (j <= i) & ((i - j < w) if w is not None else True)
        assert (A[:, ~visible] == 0).all(), layer
        assert (A[:, visible] > 0).all(), layer
        torch.testing.assert_close(A.sum(-1), torch.ones(A.shape[:2]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", WINDOWED)
def test_knockout_outside_the_window_is_a_no_op_and_inside_it_is_not(variant):
    model = shared(variant)
    ids = ids_for(model)
    clean, cache = model.run_with_cache(ids)
    dst = T - 2
    local = [(layer, w) for layer in range(model.cfg.n_layers) if (w := window(model, layer)) is not None]
    assert local
    for layer, w in local:
        outside, inside = dst - w, dst - w + 1  # the nearest key the window hides, the farthest it shows
        for head in range(model.cfg.n_heads):
            assert cache["pattern", layer][0, head, dst, outside] == 0
            knocked = model.run_with_attention_knockout(ids, {layer: [(head, dst, outside)]}).logits[0]
            torch.testing.assert_close(knocked, clean.logits[0], atol=0, rtol=0)
        head = 1
        assert cache["pattern", layer][0, head, dst, inside] > 0
        knocked = model.run_with_attention_knockout(ids, {layer: [(head, dst, inside)]}).logits[0].float()
        expected = logits_with_z(model, ids, layer, head, dst, renormalised_z(cache, layer, head, dst, inside))
        torch.testing.assert_close(knocked, expected, atol=ATOL, rtol=RTOL)
        assert (knocked[dst] - clean.logits[0, dst]).abs().amax() > 1e-4


@pytest.mark.parametrize("variant", VARIANTS)
def test_batched_knockouts_with_the_cached_prefix_equal_single_runs_and_the_hand_computation(variant):
    """knockout_logits runs the clean prefix once (its key/value cache reused by every copy,
    sliding-window layers included) and many knocked-out copies per batch; each copy's logits
    at ``position`` equal its own full forward pass, and single edges equal the hand knockout."""
    model = shared(variant)
    ids = ids_for(model)
    _, cache = model.run_with_cache(ids)
    n_layers, position = model.cfg.n_layers, T - 3
    singles = [(0, 0, position, position - 2), (n_layers - 1, 2, position, position), (0, 3, 15, 13)]
    knockouts = [{layer: [(head, dst, src)]} for layer, head, dst, src in singles]
    knockouts += [
        {},
        {0: [(None, position, 3)], n_layers - 1: [(2, position, position - 1)]},
        {1: [(1, 14, 12), (None, position, 15)], 0: [(3, 16, 16)]},
        {layer: [(None, position, 0)] for layer in range(n_layers)},  # outside every window
    ]
    batched = model.knockout_logits(ids, knockouts, position, progress=False)
    alone = torch.stack([model.run_with_attention_knockout(ids, k).logits[0, position].float() for k in knockouts])
    torch.testing.assert_close(batched, alone, atol=ATOL, rtol=RTOL)
    for row, (layer, head, dst, src) in enumerate(singles):
        z = renormalised_z(cache, layer, head, dst, src)
        expected = logits_with_z(model, ids, layer, head, dst, z)[position]
        torch.testing.assert_close(batched[row], expected, atol=ATOL, rtol=RTOL)
    clean = batched[len(singles)]
    assert (batched[: len(singles)] - clean).abs().amax(-1).min() > 1e-4  # every single edge mattered


@pytest.mark.parametrize("variant", list(ALL_VARIANTS))
@pytest.mark.parametrize("max_copies", [512, 2])
def test_knockouts_in_dsts_row_run_as_copies_of_one_token_and_equal_the_hand_computation(
    variant, max_copies, monkeypatch
):
    """When every edge is in dst's row (flow verification), the copies run as query tokens of
    one sequence over one prefix cache, each masked from the others; their logits equal each
    knockout's own forward pass and, for single edges, the hand-renormalised row. With
    max_copies=2 they run in several passes over copies of the prefix cache."""
    import arrakis.models.interventions as interventions

    model = shared(variant)
    ids = ids_for(model)
    _, cache = model.run_with_cache(ids)
    monkeypatch.setattr(interventions, "MAX_COPIES", max_copies)
    used = []
    copies = interventions._knockout_copies
    monkeypatch.setattr(interventions, "_knockout_copies", lambda *a, **k: used.append(1) or copies(*a, **k))
    n_layers, position = model.cfg.n_layers, T - 1
    singles = [(0, 0, position), (n_layers - 1, model.cfg.n_heads - 1, position)]
    singles = [(layer, head, strong_source(model, cache, layer, head, position)) for layer, head, _ in singles]
    knockouts = [{layer: [(head, position, src)]} for layer, head, src in singles]
    knockouts += [
        {},
        {0: [(None, position, position)], n_layers - 1: [(1, position, position - 1), (2, position, 0)]},
        {layer: [(None, position, position - 4)] for layer in range(n_layers)},
    ]
    batched = model.knockout_logits(ids, knockouts, position, progress=False)
    assert bool(used) != model.adapter.masks_by_position  # gpt-neo masks by position: one copy per row
    alone = torch.stack([model.run_with_attention_knockout(ids, k).logits[0, position].float() for k in knockouts])
    torch.testing.assert_close(batched, alone, atol=ATOL, rtol=RTOL)
    for row, (layer, head, src) in enumerate(singles):
        expected = logits_with_z(model, ids, layer, head, position, renormalised_z(cache, layer, head, position, src))
        torch.testing.assert_close(batched[row], expected[position], atol=ATOL, rtol=RTOL)
