"""_repr_html_: compact tables with the selected heads, top edges, roles, flows; text escaped."""

from __future__ import annotations

import torch

from arrakis.tools import Circuit, CircuitEdge, HeadSelection, WriteReadAnalyzer
from tests.conftest import shared


def test_a_selection_lists_its_heads_and_escapes_its_text():
    selection = HeadSelection(
        [(2, 3), (2, 0)],
        layer=2,
        scores=[2.0, 0.5, 0.5, 3.0],
        shares=[1 / 3, 1 / 12, 1 / 12, 1 / 2],
        method="direction-<q>",
        threshold=0.8,
        notes=["K & V <shared> by groups"],
    )
    html = selection._repr_html_()
    assert "L2H3, L2H0" in html and "cover 83%" in html
    assert html.count("<tr>") == 1 + 4  # a header and one row per head
    assert "#1" in html and "#2" in html  # the ranks of the selected heads
    assert "direction-&lt;q&gt;" in html and "K &amp; V &lt;shared&gt;" in html
    assert "<q>" not in html and "<shared>" not in html


def test_composition_roles_and_circuits_summarise():
    tool = WriteReadAnalyzer(shared("llama"))
    scores = tool.composition_scores("K")
    html = scores._repr_html_()
    (w, r, s), *_ = scores.top(1)
    assert (
        f"L{w[0]}H{w[1]}</td>" in html
        and f"L{r[0]}H{r[1]}</td>" in html
        and f"{s:.4f}" in html
        and f"{scores.baseline:.4f}" in html
    )
    assert html.count("<tr>") <= 11  # the top edges, never the whole tensor
    roles = tool.head_roles(seq_len=8)
    html = roles._repr_html_()
    for role in ("previous-token", "duplicate-token", "induction"):
        assert role in html
    ((layer, head), value), *_ = roles.top("induction", 1)
    assert f"L{layer}H{head} {value:.2f}" in html
    edge = CircuitEdge((0, 1), (1, 2), 0.6, 6.0, {"previous_token": 0.9}, {"induction": 0.7})
    html = Circuit(
        [edge], mode="K", baseline=0.1, min_ratio=2.0, reader_role="induction", role_threshold=0.3
    )._repr_html_()
    assert "L0H1" in html and "L1H2" in html and "previous-token 0.90" in html and "6.0x" in html
    assert "readers induction &gt;= 0.3" in html


def test_a_flow_shows_flows_top_heads_and_paths_escaped():
    tool = WriteReadAnalyzer(shared("llama"))
    flow = tool.trace_information_flow(torch.tensor([[5, 7, 9, 7, 5, 9, 7, 11]]), src_pos=1, dst_pos=6)
    flow.str_tokens = ["<s>", " a", " b", "&", " c", " d", "</s>", " e"]
    html = flow._repr_html_()
    assert "src 1 (&#x27; a&#x27;) -&gt; dst 6 (&#x27;&lt;/s&gt;&#x27;)" in html and "</s>" not in html
    for lf in flow.layers:
        assert f"{lf.flow:.3f}" in html
    for layer, head in flow.top_heads:
        assert f"L{layer}H{head}" in html
    assert flow.paths and flow.paths[0].describe().replace(">", "&gt;") in html
