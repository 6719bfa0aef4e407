"""trace_information_flow: the parts add up, importances are a distribution, a head built to
copy src to dst carries the flow and its knockout removes it, and bad questions get clear
errors."""

from __future__ import annotations

import json

import networkx as nx
import pytest
import torch

from arrakis.circuits.flow import part_importances
from arrakis.tools import InformationFlow, WriteReadAnalyzer
from arrakis.tools.information_flow import RESIDUAL
from tests.conftest import VARIANTS, shared
from tests.tools.test_write_read import planted_previous_token_model


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_parts_add_up_to_the_post_attention_residual(variant):
    """residual + sum_h sum_j A[h, i, j] v_j W_O[h] + b_O == resid_pre + attn_out, every row."""
    model = shared(variant)
    ids = torch.randint(0, model.cfg.d_vocab, (1, 10), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(ids)
    w = model.head_weights()
    for layer in range(model.cfg.n_layers):
        pattern, v = cache["pattern", layer][0], cache["v", layer][0]  # [head, q, k], [k, head, d_head]
        value_out = torch.einsum("khd,hdm->khm", v, w.W_O[layer])  # [k, head, D]
        # [head, q, k] x [k, head, D] -> [q, D]: every head's contribution from every key
        heads = torch.einsum("hqk,khm->qm", pattern, value_out)
        whole = cache["resid_pre", layer][0] + heads + w.b_O[layer]
        expected = cache["resid_pre", layer][0] + cache["attn_out", layer][0]
        torch.testing.assert_close(whole, expected, atol=1e-5, rtol=0)
        if not model.cfg.parallel_residual:
            torch.testing.assert_close(whole, cache["resid_mid", layer][0], atol=1e-5, rtol=0)


def test_importances_are_non_negative_and_sum_to_one_and_follow_proximity():
    g = torch.Generator().manual_seed(0)
    residual, value_out, b_O = (
        torch.randn(3, 8, generator=g),
        torch.randn(5, 2, 8, generator=g),
        torch.randn(8, generator=g),
    )
    pattern = torch.softmax(torch.randn(2, 3, 5, generator=g), -1)
    y = residual + torch.einsum("hqk,khm->qm", pattern, value_out) + b_O
    res, heads, bias = part_importances(y, residual, pattern, value_out, b_O)
    assert (res >= 0).all() and (heads >= 0).all() and (bias >= 0).all()
    torch.testing.assert_close(res + heads.sum((0, 2)) + bias, torch.ones(3))
    # brute force for one part: max(||y||_1 - ||y - z||_1, 0) / sum over parts
    parts = [residual[1], b_O] + [pattern[h, 1, j] * value_out[j, h] for h in range(2) for j in range(5)]
    prox = torch.stack([(y[1].abs().sum() - (y[1] - z).abs().sum()).clamp_min(0) for z in parts])
    torch.testing.assert_close(res[1], prox[0] / prox.sum())
    torch.testing.assert_close(heads[1, 1, 4], prox[2 + 5 + 4] / prox.sum())


def test_layer_detail_importances_form_a_distribution():
    tool = WriteReadAnalyzer(shared("llama"))
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(1))
    flow = tool.trace_information_flow(ids, src_pos=3, dst_pos=10, n_layers=None)
    assert isinstance(flow, InformationFlow) and len(flow) == 2 and list(flow) == [lf.flow for lf in flow.layers]
    for lf in flow.layers:
        total = lf.residual_share + lf.bias_share + sum(h.importance_total for h in lf.heads)
        assert total == pytest.approx(1.0, abs=1e-5)
        assert all(0 <= h.importance <= h.importance_total + 1e-7 for h in lf.heads)
        assert 0 <= lf.flow <= 1
    # flow at layer 0 is exactly what the heads carry directly from src
    assert flow[0] == pytest.approx(sum(h.importance for h in flow.layers[0].heads), abs=1e-6)


def copying_model():
    """The planted previous-token model (L0H0 attends i -> i - 1), with a large OV for
    head 0 and no OV for the other heads: only head 0 can move anything."""
    model = planted_previous_token_model()
    d_model = model.cfg.d_model
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        attn = model.hf_model.transformer.h[0].attn
        attn.c_attn.weight[:, 2 * d_model :] = 0.0  # every head's W_V ...
        attn.c_attn.weight[:, 2 * d_model : 2 * d_model + 16] = 3.0 * torch.randn(d_model, 16, generator=g)
        attn.c_attn.bias.zero_()
        attn.c_proj.weight[:16] = 3.0 * torch.randn(16, d_model, generator=g)  # ... and head 0's W_O
        model.hf_model.lm_head.weight.mul_(100.0)  # a peaked next-token distribution, so changes show
    return model


def test_a_head_built_to_copy_src_to_dst_carries_the_flow_and_its_knockout_removes_it():
    tool = WriteReadAnalyzer(copying_model())
    ids = torch.arange(20).unsqueeze(0) % 64
    flow = tool.trace_information_flow(ids, src_pos=9, dst_pos=10, n_layers=1, verify=True)
    (layer,) = flow.layers
    assert flow.top_heads[0] == (0, 0)
    head0 = layer.heads[0]
    assert head0.attention > 0.99 and head0.carried > 0.3 and flow[0] == pytest.approx(head0.carried, abs=1e-3)
    assert all(h.carried == 0 for h in layer.heads[1:])  # no OV, nothing carried
    knock = flow.knockout
    head_effect = {(h["layer"], h["head"]): h for h in knock["heads"]}[(0, 0)]
    assert head_effect["kl"] > 1.0 and knock["layers"][0]["kl"] == pytest.approx(head_effect["kl"], rel=1e-4)
    # blocking an edge the flow does not use changes nothing
    other = tool.model.run_with_attention_knockout(ids, {0: [(1, 10, 9)]}).logits[0, 10]
    torch.testing.assert_close(other, tool.model(ids)[0].logits[0, 10])
    # and the strongest path is the one hop through L0H0
    assert flow.paths[0].heads() == [(0, 0)] and flow.paths[0].hops[0].source == 9


def test_knockout_equals_masking_the_pre_softmax_score():
    """Blocking edge dst -> src renormalises the rest of the row: z' = (z - A v_src) / (1 - A)."""
    model = shared("gpt2")
    ids = torch.randint(0, 512, (1, 8), generator=torch.Generator().manual_seed(2))
    dst, src, head = 6, 2, 1
    _, clean = model.run_with_cache(ids)
    store = {}
    handle = model.hf_model.transformer.h[0].attn.c_proj.register_forward_pre_hook(
        lambda m, args: store.setdefault("z", args[0].detach().clone())
    )
    try:
        model.run_with_attention_knockout(ids, {0: [(head, dst, src)]})
    finally:
        handle.remove()
    z = store["z"].view(1, 8, model.cfg.n_heads, model.cfg.d_head)
    a = clean["pattern", 0][0, head, dst, src]
    expected = (clean["z", 0][0, dst, head] - a * clean["v", 0][0, src, head]) / (1 - a)
    torch.testing.assert_close(z[0, dst, head], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(z[0, dst, head + 1], clean["z", 0][0, dst, head + 1])  # other heads untouched


def test_paths_graph_and_json_round_trip():
    tool = WriteReadAnalyzer(shared("qwen2"))
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(3))
    flow = tool.trace_information_flow(ids, src_pos=2, dst_pos=11, n_layers=None, n_paths=3, verify=True)
    assert 1 <= len(flow.paths) <= 3
    scores = [p.score for p in flow.paths]
    assert scores == sorted(scores, reverse=True)
    for path in flow.paths:  # contiguous hops from src to dst, one per analysed layer
        assert [h.layer for h in path.hops] == [0, 1]
        assert path.hops[0].source == 2 and path.hops[-1].target == 11
        assert all(a.target == b.source for a, b in zip(path.hops, path.hops[1:], strict=False))
        assert all(h.source == h.target for h in path.hops if h.head == RESIDUAL)
    graph = flow.graph
    assert isinstance(graph, nx.DiGraph) and graph.graph["src"] == 2
    assert all(graph.edges[e]["flow"] >= 0.01 for e in graph.edges)
    assert (0, 2) in graph  # src's residual stream entering layer 0
    back = InformationFlow.from_dict(json.loads(json.dumps(flow.to_dict())))
    assert list(back) == list(flow) and back.top_heads == flow.top_heads and back.knockout == flow.knockout
    assert back.paths[0].describe() == flow.paths[0].describe()


def test_tokens_and_strings_pick_the_last_occurrences():
    tool = WriteReadAnalyzer(shared("llama"))
    ids = torch.tensor([[5, 7, 9, 7, 5, 9, 7, 11]])
    flow = tool.trace_information_flow(ids, 7, 9, n_layers=1)
    assert (flow.src_pos, flow.dst_pos) == (3, 5)  # dst: last 9; src: last 7 before it
    flow = tool.trace_information_flow(ids, 5, 7)
    assert (flow.src_pos, flow.dst_pos) == (4, 6) and len(flow) == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"src_token": 5, "dst_token": 42}, ValueError, r"dst_token 42 \(id 42\) does not occur in the prompt"),
        ({"src_token": 11, "dst_token": 9}, ValueError, "does not occur before dst"),
        ({"src_pos": 5, "dst_pos": 3}, ValueError, "src_pos 5 must come before dst_pos 3"),
        ({"src_pos": 1, "dst_pos": 8}, ValueError, r"dst_pos 8 is out of range: .* \(0-7\)"),
        ({"src_token": "a", "dst_token": 9}, ValueError, "no tokenizer"),
        ({"src_pos": 1, "dst_pos": 3, "n_layers": 3}, ValueError, r"n_layers must be between 1 and 2"),
        ({"src_pos": 1, "dst_pos": 3, "layers": [2]}, ValueError, r"layer 2 is out of range"),
        ({"src_pos": 1, "dst_pos": 3, "top_k": 0}, ValueError, "top_k must be a positive int"),
        ({"dst_pos": 3}, ValueError, "give src_token"),
    ],
)
def test_bad_questions_get_clear_errors(kwargs, error, message):
    tool = WriteReadAnalyzer(shared("llama"))
    with pytest.raises(error, match=message):
        tool.trace_information_flow(torch.tensor([[5, 7, 9, 7, 5, 9, 7, 11]]), **kwargs)


def test_a_batch_needs_a_batch_index():
    tool = WriteReadAnalyzer(shared("llama"))
    ids = torch.tensor([[5, 7, 9, 1], [1, 2, 3, 4]])
    with pytest.raises(ValueError, match="a batch of 2 sequences; pass batch_index"):
        tool.trace_information_flow(ids, src_pos=0, dst_pos=2)
    second = tool.trace_information_flow(ids, src_pos=0, dst_pos=2, batch_index=1)
    alone = tool.trace_information_flow(ids[1:], src_pos=0, dst_pos=2)
    assert list(second) == pytest.approx(list(alone)) and second.tokens == [1, 2, 3, 4]


def test_the_plot_draws(tmp_path):
    """A smoke test; tests/viz/test_flow.py checks what the figure shows."""
    pytest.importorskip("matplotlib")
    tool = WriteReadAnalyzer(shared("llama"))
    flow = tool.trace_information_flow(torch.tensor([[5, 7, 9, 7, 5, 9, 7, 11]]), src_pos=1, dst_pos=6)
    fig = flow.plot()
    fig.savefig(tmp_path / "flow.png")
    assert (tmp_path / "flow.png").stat().st_size > 1000
