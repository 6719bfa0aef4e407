"""``task_circuit`` on the embedded model (SmolLM2-135M, 70,651 edges), IOI and induction tasks.

- Faithfulness is a ratio of exact runs: no edge kept is the corrupted run (0) and every edge
  kept the clean run (1), exactly.
- The top-scored circuits reach a much higher faithfulness than random circuits of the same
  size. Measured on IOI with 4 examples, EAP-IG: top 1218 edges 0.50 and top 9278 edges 0.90,
  against 0.00 for random circuits of those sizes; area under the curve 0.90 against 0.36.
- ``verify(20)`` (exact single-edge patching of the top 20 edges) ranks them as their scores
  do: Spearman 0.97 (IOI, 4 examples, EAP-IG; 0.95 with EAP on 8). On the induction task
  (log p, saturated: the corrupted run gives log p -13.9) it is 0.87 with EAP-IG and 0.53 with EAP.
- The induction task's circuit contains the previous-token -> induction K edges that
  ``circuits("K", ..., verify=True)`` finds from the weights and path-patches: measured ranks
  1, 3 and 54 of 70,651 (L16H0 -> L18KV2 (K), L17H8 -> L18KV2 (K), L16H0 -> L17KV1 (K)).
"""

from __future__ import annotations

import pytest

from arrakis import load_model, tasks
from arrakis.tools import WriteReadAnalyzer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def ioi_circuit(model):
    return WriteReadAnalyzer(model).task_circuit(tasks.ioi(model, 4), progress=False)  # EAP-IG, 5 steps


def test_no_edge_is_the_corrupted_run_and_every_edge_the_clean_run(ioi_circuit):
    runner = ioi_circuit.runner
    assert runner.clean_metric - runner.corrupted_metric > 3  # the corruption removes the behaviour
    none, every = ioi_circuit.faithfulness([0, ioi_circuit.n_edges])
    assert none == pytest.approx(0.0, abs=1e-4) and every == pytest.approx(1.0, abs=1e-4)


def test_top_circuits_beat_random_circuits_of_the_same_size(ioi_circuit):
    curve = ioi_circuit.curve(n_random=1)
    print(curve)
    assert curve.area > curve.random_area + 0.3
    for size, top, rand in zip(curve.sizes, curve.faithfulness, curve.random, strict=True):
        if 1000 <= size <= 10000:  # 1.4% to 14% of the edges
            assert top > rand + 0.3, (size, top, rand)


def test_the_top_edges_patched_alone_rank_as_their_scores(ioi_circuit):
    checked = ioi_circuit.verify(20)
    print(checked)
    assert checked.spearman >= 0.8
    heads = [edge.name for edge in ioi_circuit.top_edges(20) if edge.sender.startswith("L")]
    assert heads[0] == "L23H3 -> logits"  # the strongest head edge: the top name mover, into the logits


def test_the_induction_circuit_holds_the_composition_edges_path_patching_found(model):
    tool = WriteReadAnalyzer(model)
    composition = tool.circuits("K", writer_role="previous_token", reader_role="induction", verify=True)
    held = [edge for edge in composition if edge.ratio_to_null is not None and edge.ratio_to_null > 3]
    assert len(held) >= 3
    circuit = tool.task_circuit(tasks.induction(model, 4), method="attribution", progress=False)
    top = {edge.name for edge in circuit.top_edges(100)}
    group = model.cfg.n_heads // model.cfg.n_kv_heads  # K receivers are KV heads (grouped-query attention)
    for edge in held:
        (l1, h1), (l2, h2) = edge.writer, edge.reader
        assert f"L{l1}H{h1} -> L{l2}KV{h2 // group} (K)" in top, (edge.writer, edge.reader)
