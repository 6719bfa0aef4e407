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


def test_an_attribution_flow_shows_the_metric_heads_layers_and_paths_escaped():
    tool = WriteReadAnalyzer(shared("llama"))
    ids = torch.tensor([[5, 7, 9, 7, 5, 9, 7, 11]])
    flow = tool.trace_information_flow(ids, src_pos=1, dst_pos=6, verify=True)
    flow.str_tokens = ["<s>", " a", " b", "&", " c", " d", "</s>", " e"]
    flow.metric = {**flow.metric, "target_str": "<&>"}
    html = flow._repr_html_()
    assert "InformationFlow (attribution)" in html
    assert "src 1 (&#x27; a&#x27;) -&gt; dst 6 (&#x27;&lt;/s&gt;&#x27;)" in html and "</s>" not in html
    metric = flow.metric
    assert f"metric: log p(target | dst), target {metric['target']} (&#x27;&lt;&amp;&gt;&#x27;)" in html
    assert f"clean {metric['clean']:.3f}" in html and "<&>" not in html
    for layer, head in flow.top_heads:
        assert f"L{layer}H{head} {flow.score(layer, head):+.3f}" in html
    for layer, head in flow.suppressors:
        assert f"L{layer}H{head} {flow.score(layer, head):+.3f}" in html
    assert html.count("<tr>") == (1 + len(flow.layers)) + (1 + len(flow.paths))  # never the whole tensor
    for lf in flow.layers:  # layer, estimate, exact, strongest head with its signed estimate
        best = max(lf.heads, key=lambda h: abs(h.score))
        cells = [lf.layer, f"{lf.flow:+.3f}", f"{lf.exact:+.3f}", f"L{lf.layer}H{best.head} {best.score:+.3f}"]
        assert "".join(f'<td style="padding:1px 8px;text-align:right">{c}</td>' for c in cells) in html
    assert ">exact</th>" in html
    every = flow.verification["all_layers"]
    assert f"all layers at once: estimate {every['estimate']:+.3f}, exact {every['exact']:+.3f}" in html
    assert f"Spearman heads {flow.verification['spearman_heads']:.2f}" in html
    assert flow.paths and flow.paths[0].describe().replace(">", "&gt;") in html
    # unverified: no exact column, no verification line
    plain = tool.trace_information_flow(ids, src_pos=1, dst_pos=6)._repr_html_()
    assert ">exact</th>" not in plain and "Spearman" not in plain and "estimate f_l" in plain


def test_a_routes_flow_shows_flows_residual_shares_top_heads_and_paths():
    tool = WriteReadAnalyzer(shared("llama"))
    flow = tool.trace_information_flow(torch.tensor([[5, 7, 9, 7, 5, 9, 7, 11]]), src_pos=1, dst_pos=6, method="routes")
    flow.str_tokens = ["<s>", " a", " b", "&", " c", " d", "</s>", " e"]
    html = flow._repr_html_()
    assert "InformationFlow (routes)" in html
    assert "src 1 (&#x27; a&#x27;) -&gt; dst 6 (&#x27;&lt;/s&gt;&#x27;)" in html and "</s>" not in html
    for lf in flow.layers:
        best = max(lf.heads, key=lambda h: h.score)
        assert f"{lf.flow:.3f}" in html and f"{lf.residual_share:.3f}" in html
        assert f"L{lf.layer}H{best.head} {best.score:.3f}" in html
    for layer, head in flow.top_heads:
        assert f"L{layer}H{head}" in html
    assert flow.paths and flow.paths[0].describe().replace(">", "&gt;") in html
