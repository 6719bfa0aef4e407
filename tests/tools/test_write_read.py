"""WriteReadAnalyzer: scores follow their definitions, the threshold rule is exact, planted
structure is found, and bad input gets errors that name the valid values."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from arrakis import HookedAutoConfig, HookedAutoModel
from arrakis.circuits.composition import composition_scores_brute_force
from arrakis.circuits.heads import select_by_share
from arrakis.tools import Circuit, CompositionScores, HeadRoles, HeadSelection, WriteReadAnalyzer
from tests.conftest import build, prompt, shared


@pytest.fixture(scope="module")
def llama() -> WriteReadAnalyzer:
    return WriteReadAnalyzer(shared("llama"))


# -- write heads -------------------------------------------------------------------------------


def test_write_scores_are_the_ov_frobenius_norms(llama):
    w = llama.model.head_weights(folded=True)
    for layer in range(llama.cfg.n_layers):
        selection = llama.identify_write_heads(layer)
        expected = [torch.linalg.norm(w.W_V[layer, h] @ w.W_O[layer, h]).item() for h in range(llama.cfg.n_heads)]
        assert selection.scores == pytest.approx(expected, rel=1e-5)
        assert sum(selection.shares) == pytest.approx(1.0)
        assert selection.method == "weights" and selection.threshold == 0.8
        assert selection.covered() >= 0.8 and all(layer_ == layer for layer_, _ in selection)


def test_scaling_a_heads_w_o_raises_its_write_share():
    model = build("gpt2")
    tool = WriteReadAnalyzer(model)
    before = tool.identify_write_heads(1, threshold=1.0)
    head = 2
    with torch.no_grad():  # c_proj is Conv1D [in = head * d_head, out = d_model]
        rows = slice(head * model.cfg.d_head, (head + 1) * model.cfg.d_head)
        model.hf_model.transformer.h[1].attn.c_proj.weight[rows] *= 10.0
    after = tool.identify_write_heads(1, threshold=0.5)
    assert after.scores[head] == pytest.approx(10 * before.scores[head], rel=1e-5)
    assert after.shares[head] > 0.5 > before.shares[head]
    assert list(after) == [(1, head)]


def test_data_write_scores_are_the_mean_size_of_what_heads_write(llama):
    ids = prompt(llama.cfg.d_vocab)
    selection = llama.identify_write_heads(1, input_ids=ids)
    _, cache = llama.model.run_with_cache(ids)
    z, W_O = cache["z", 1], llama.model.head_weights().W_O[1]
    expected = [(z[:, :, h] @ W_O[h]).norm(dim=-1).mean().item() for h in range(llama.cfg.n_heads)]
    assert selection.method == "data"
    assert selection.scores == pytest.approx(expected, rel=1e-5)


def test_write_scores_along_a_direction(llama):
    u = torch.randn(llama.cfg.d_model, generator=torch.Generator().manual_seed(3))
    w = llama.model.head_weights()
    by_weights = llama.identify_write_heads(0, direction=u)
    u_hat = u / u.norm()
    expected = [(w.W_V[0, h] @ w.W_O[0, h] @ u_hat).norm().item() for h in range(llama.cfg.n_heads)]
    assert by_weights.method == "weights-direction"
    assert by_weights.scores == pytest.approx(expected, rel=1e-4)
    ids = prompt(llama.cfg.d_vocab)
    by_data = llama.identify_write_heads(0, input_ids=ids, direction=u)
    _, cache = llama.model.run_with_cache(ids)
    z = cache["z", 0]
    expected = [(z[:, :, h] @ w.W_O[0, h] @ u_hat).abs().mean().item() for h in range(llama.cfg.n_heads)]
    assert by_data.method == "data-direction"
    assert by_data.scores == pytest.approx(expected, rel=1e-4)


# -- the threshold rule ------------------------------------------------------------------------


def smallest_covering_set(scores: list[float], threshold: float) -> list[int]:
    """Brute force: of all sets covering the threshold, the smallest; among those, the one
    with the largest total; ties by head index (strongest first)."""
    total = sum(scores)
    for size in range(1, len(scores) + 1):
        covering = [
            c
            for c in itertools.combinations(range(len(scores)), size)
            if sum(scores[h] for h in c) / total >= threshold
        ]
        if covering:
            best = max(covering, key=lambda c: (sum(scores[h] for h in c), [-h for h in c]))
            return sorted(best, key=lambda h: (-scores[h], h))
    raise AssertionError("unreachable")


@pytest.mark.parametrize("seed", range(20))
def test_threshold_selects_exactly_the_smallest_covering_set(seed):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(7, generator=generator)
    for threshold in (0.1, 0.5, 0.8, 0.95, 1.0):
        assert select_by_share(scores, threshold) == smallest_covering_set(scores.tolist(), threshold)


def test_ties_are_broken_by_head_index():
    assert select_by_share(torch.tensor([1.0, 2.0, 2.0, 1.0]), 0.5) == [1, 2]
    assert select_by_share(torch.tensor([1.0, 1.0, 1.0, 1.0]), 0.5) == [0, 1]
    assert select_by_share(torch.tensor([1.0, 1.0, 1.0, 1.0]), 1.0) == [0, 1, 2, 3]


# -- read heads --------------------------------------------------------------------------------


def test_a_head_built_to_read_one_dimension_gets_the_top_read_score():
    model = build("llama")
    i, head, d_head = 5, 3, model.cfg.d_head
    q_proj = model.hf_model.model.layers[1].self_attn.q_proj  # weight [head * d_head, d_model]
    with torch.no_grad():
        block = q_proj.weight[head * d_head : (head + 1) * d_head]
        keep = block[:, i].clone()
        block.zero_()
        block[:, i] = keep
    tool = WriteReadAnalyzer(model)
    selection = tool.identify_read_heads(1, dim_idx=i, channel="q", threshold=0.1)
    assert selection[0] == (1, head)
    assert selection.scores[head] == pytest.approx(math.sqrt(model.cfg.d_model), rel=1e-5)  # the maximum
    others = [s for h, s in enumerate(selection.scores) if h != head]
    assert max(others) < 3.0
    assert selection.baseline == 1.0 and selection.method == "direction-q"
    # the same head reads nothing of another dimension through Q
    assert abs(tool.identify_read_heads(1, dim_idx=i + 1, channel="q", threshold=1.0).scores[head]) < 1e-6


def test_read_scores_follow_the_definition_and_combine_by_root_mean_square(llama):
    u = torch.randn(llama.cfg.d_model, generator=torch.Generator().manual_seed(4))
    w = llama.model.head_weights()
    combined = llama.identify_read_heads(1, dim_idx=u)
    H = llama.cfg.n_heads
    per = {}
    for c in "qkv":
        W = getattr(w, f"W_{c.upper()}")[1]
        u_hat = u / u.norm()
        per[c] = [(u_hat @ W[h]).norm().item() / (W[h].norm().item() / math.sqrt(llama.cfg.d_model)) for h in range(H)]
        assert llama.identify_read_heads(1, dim_idx=u, channel=c).scores == pytest.approx(per[c], rel=1e-5)
    rms = [math.sqrt(sum(per[c][h] ** 2 for c in "qkv") / 3) for h in range(H)]
    assert combined.scores == pytest.approx(rms, rel=1e-5)
    assert any("grouped-query attention" in note for note in combined.notes)
    k_scores = combined.extra["per_channel"]["k"]
    assert k_scores[0] == pytest.approx(k_scores[1]) and k_scores[0] != pytest.approx(k_scores[2])


def test_reading_a_writer_head_is_its_composition_score(llama):
    w = llama.model.head_weights()
    selection = llama.identify_read_heads(1, dim_idx=(0, 2), channel="k", threshold=1.0)
    brute = composition_scores_brute_force(w.W_Q, w.W_K, w.W_V, w.W_O, "K")
    assert selection.scores == pytest.approx(brute[0, 2, 1].tolist(), abs=1e-5)
    assert selection.baseline == pytest.approx(1 / math.sqrt(llama.cfg.d_model))
    assert selection.method == "composition-k"


# -- composition and circuits ------------------------------------------------------------------


def test_composition_scores_are_a_labelled_tensor_computed_once(llama):
    scores = llama.composition_scores("q")
    assert isinstance(scores, CompositionScores) and isinstance(scores, torch.Tensor)
    assert scores.shape == (2, 4, 2, 4) and scores.mode == "Q" and scores.folded
    assert scores.baseline == pytest.approx(1 / 8)
    assert torch.equal(scores[1], torch.zeros(4, 2, 4))  # no writer in the last layer reads forward
    assert llama.composition_scores("Q") is scores
    w = llama.model.head_weights()
    torch.testing.assert_close(scores.tensor, composition_scores_brute_force(w.W_Q, w.W_K, w.W_V, w.W_O, "Q"))
    (_, _, value), *_ = scores.top(1)
    assert value == pytest.approx(scores.tensor.max().item())
    assert type(scores + 1) is torch.Tensor  # operations give plain tensors


def test_circuits_keep_edges_above_the_baseline_between_the_asked_roles(llama):
    n = llama.cfg.n_layers, llama.cfg.n_heads
    flagged = torch.zeros(n)
    flagged[0, 3] = 1.0  # pretend L0H3 is the only previous-token head
    induction = torch.zeros(n)
    induction[1, 1] = induction[1, 2] = 0.9
    roles = HeadRoles(flagged, torch.zeros(n), induction, n_tokens=10, n_sequences=1, source="test")
    circuit = llama.circuits("K", writer_role="previous_token", reader_role="induction", roles=roles, min_ratio=0.5)
    comp = llama.composition_scores("K")
    assert {(e.writer, e.reader) for e in circuit} == {((0, 3), (1, 1)), ((0, 3), (1, 2))}
    assert [e.score for e in circuit] == sorted((comp[0, 3, 1, h].item() for h in (1, 2)), reverse=True)
    assert all(e.ratio == pytest.approx(e.score / comp.baseline) for e in circuit)
    assert circuit[0].reader_roles["induction"] == pytest.approx(0.9)
    everything = llama.circuits("K", roles=roles, min_ratio=1e-9, top_k=None)
    assert len(everything) == 4 * 4  # every pair with the writer in layer 0
    strict = llama.circuits("K", roles=roles, min_ratio=10.0)
    assert all(e.score >= 10 * comp.baseline for e in strict)


# -- head roles --------------------------------------------------------------------------------


def planted_previous_token_model() -> HookedAutoModel:
    """GPT-2 whose head 0 of layer 0 attends to the previous position.

    Positions embed as (cos a i, sin a i, -cos a i, -sin a i, content_i) (mean zero, constant
    norm, so LayerNorm only rescales) and tokens embed as 0. Head 0's W_Q rotates by -a, so
    q_i . k_j = s cos(a (i - 1 - j)), largest at j = i - 1 for a * n_ctx < pi.
    """
    n_ctx, d_model = 32, 64
    torch.manual_seed(0)  # the other weights are Hugging Face's random init
    model = HookedAutoModel(
        HookedAutoConfig(
            "gpt2", n_layers=1, d_model=d_model, n_heads=4, d_vocab=64, n_ctx=n_ctx, d_mlp=64, tie_word_embeddings=False
        )
    )
    t = model.hf_model.transformer
    angle, scale = math.pi / (2 * n_ctx), 2000.0
    with torch.no_grad():
        t.wte.weight.zero_()
        i = torch.arange(n_ctx).float()
        t.wpe.weight.zero_()
        cos, sin = (angle * i).cos(), (angle * i).sin()
        t.wpe.weight[:, :4] = torch.stack([cos, sin, -cos, -sin], 1)
        # content: a centred unit vector per position in the other dimensions, so values
        # differ between positions while LayerNorm's scale stays the same everywhere
        content = torch.randn(n_ctx, d_model - 4, generator=torch.Generator().manual_seed(0))
        content -= content.mean(-1, keepdim=True)
        t.wpe.weight[:, 4:] = content / content.norm(dim=-1, keepdim=True)
        W = t.h[0].attn.c_attn.weight  # Conv1D [d_model, 3 * d_model]: columns [q | k | v]
        W[:, :16] = 0.0
        W[:, d_model : d_model + 16] = 0.0
        c, s = math.cos(angle), math.sin(angle)
        W[0:2, 0:2] = scale * torch.tensor([[c, -s], [s, c]])  # q = rotate(x) by -angle
        W[0:2, d_model : d_model + 2] = torch.eye(2)  # k = x
    return model


def test_head_roles_find_a_planted_previous_token_head():
    tool = WriteReadAnalyzer(planted_previous_token_model())
    roles = tool.head_roles(seq_len=12, n_repeats=2)
    (head, score), (_, runner_up) = roles.top("previous_token", 2)
    assert head == (0, 0)
    assert score > 0.9  # (T - 1) / T = 0.958 for a perfect head on 24 positions
    assert runner_up < 0.5
    assert roles.n_tokens == 24 and roles.n_sequences == 4
    assert roles.heads("previous_token", 0.9) == [(0, 0)]


def test_role_patterns_match_their_definitions():
    from arrakis.circuits.roles import duplicate_token_pattern, induction_pattern, previous_token_pattern

    tokens = torch.tensor([[7, 3, 9, 7, 3, 5]])
    T = tokens.shape[1]
    prev, dup, ind = previous_token_pattern(tokens)[0], duplicate_token_pattern(tokens)[0], induction_pattern(tokens)[0]
    for i, j in itertools.product(range(T), range(T)):
        assert prev[i, j] == (j == i - 1)
        assert dup[i, j] == (j < i and tokens[0, j] == tokens[0, i])
        assert ind[i, j] == (1 <= j <= i and tokens[0, j - 1] == tokens[0, i] and j - 1 < i)
    assert ind[3, 1] == 1 and ind[4, 2] == 1 and ind.sum() == 2


# -- results survive JSON ----------------------------------------------------------------------


def test_results_survive_a_json_round_trip(llama):
    selection = llama.identify_read_heads(1, dim_idx=(0, 1))
    back = HeadSelection.from_dict(json.loads(json.dumps(selection.to_dict())))
    assert back == selection and back.scores == selection.scores and back.method == selection.method
    assert back.extra == selection.extra and back.notes == selection.notes
    scores = llama.composition_scores("V")
    back = CompositionScores.from_dict(json.loads(json.dumps(scores.to_dict())))
    assert torch.equal(back.tensor, scores.tensor) and back.mode == "V" and back.baseline == scores.baseline
    roles = llama.head_roles(seq_len=8)
    back = HeadRoles.from_dict(json.loads(json.dumps(roles.to_dict())))
    assert torch.equal(back.induction, roles.induction) and back.source == roles.source
    circuit = llama.circuits("K", roles=roles, min_ratio=1e-9, top_k=5)
    back = Circuit.from_dict(json.loads(json.dumps(circuit.to_dict())))
    assert back == circuit and back.mode == "K"


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda t: t.identify_write_heads(2),
            ValueError,
            r"layer_idx 2 is out of range: this model has 2 layers \(0-1\)",
        ),
        (lambda t: t.identify_write_heads(-1), ValueError, "layer_idx -1 is out of range"),
        (lambda t: t.identify_write_heads(1.0), TypeError, "layer_idx must be an int"),
        (lambda t: t.identify_write_heads(0, 0.0), ValueError, r"threshold must be in \(0, 1\]"),
        (lambda t: t.identify_write_heads(0, 1.5), ValueError, r"threshold must be in \(0, 1\] .*, got 1.5"),
        (lambda t: t.identify_write_heads(0, direction=torch.ones(3)), ValueError, r"shape \(64,\) \(d_model\)"),
        (lambda t: t.identify_write_heads(0, direction=torch.zeros(64)), ValueError, "finite and non-zero"),
        (lambda t: t.identify_write_heads(0, input_ids=torch.rand(1, 4)), TypeError, "integer token ids"),
        (lambda t: t.identify_write_heads(0, input_ids=torch.ones(1, 2, 3).long()), ValueError, r"\[batch, pos\]"),
        (lambda t: t.identify_read_heads(1, 64), ValueError, r"dim_idx 64 is out of range: .* \(0-63\)"),
        (lambda t: t.identify_read_heads(1, torch.ones(65)), ValueError, r"dim_idx must have shape \(64,\)"),
        (lambda t: t.identify_read_heads(1, (1, 0)), ValueError, r"writer layer 1 is out of range: .*layers before"),
        (lambda t: t.identify_read_heads(0, (0, 0)), ValueError, "layer 0 has no earlier layer"),
        (lambda t: t.identify_read_heads(1, (0, 4)), ValueError, r"writer head 4 is out of range: .* \(0-3\)"),
        (lambda t: t.identify_read_heads(1, 0, channel="o"), ValueError, "unknown channel 'o'; expected one of 'q'"),
        (lambda t: t.identify_read_heads(1, " Paris"), ValueError, "this model has no tokenizer"),
        (
            lambda t: t.composition_scores("X"),
            ValueError,
            "unknown composition mode 'X'; expected one of 'Q', 'K'",
        ),
        (lambda t: t.circuits("K", writer_role="copy"), ValueError, "unknown head role 'copy'"),
        (lambda t: t.head_roles(seq_len=0), ValueError, "seq_len must be a positive int"),
    ],
)
def test_bad_input_is_refused_by_name(llama, call, error, message):
    with pytest.raises(error, match=message):
        call(llama)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in llama.model.modules()) == 0
