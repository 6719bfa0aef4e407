"""User errors found in review (issue #14): each gets one clear message naming the problem
and what is valid, and leaves nothing changed."""

from __future__ import annotations

import pytest
import torch

from arrakis import HookedAutoConfig, HookedAutoModel
from arrakis.tools import WriteReadAnalyzer
from tests.conftest import shared


@pytest.mark.parametrize(("field", "value"), [("n_layers", 0), ("n_heads", -2), ("d_model", 1.5), ("d_vocab", True)])
def test_a_shape_that_is_not_a_positive_int_is_refused(field, value):
    with pytest.raises(ValueError, match=f"{field} must be a positive int, got {value!r}"):
        HookedAutoConfig("llama", **{field: value})


def test_empty_input_ids_say_they_are_empty():
    with pytest.raises(ValueError, match="input_ids is empty; pass at least one token id"):
        shared("llama").run_with_cache([])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": -1}, "top_k must be a positive int, got -1"),
        ({"top_k": 0}, "top_k must be a positive int, got 0"),
        ({"writer_role": "induction", "role_threshold": 5}, r"role_threshold must be in \(0, 1\]"),
    ],
)
def test_circuits_refuse_what_would_silently_drop_edges(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WriteReadAnalyzer(shared("llama")).circuits("K", **kwargs)


def test_head_roles_read_as_a_summary_not_three_tensors():
    roles = WriteReadAnalyzer(shared("llama")).head_roles(seq_len=8, n_sequences=2)
    text = repr(roles)
    assert text.startswith("HeadRoles(2 layers x 4 heads") and "tensor(" not in text and len(text.splitlines()) == 4
    best = roles.top("induction", 1)[0][0]
    assert f"L{best[0]}H{best[1]}" in text.splitlines()[3]
    assert torch.equal(roles.induction, roles.scores("induction"))


@pytest.mark.parametrize(
    ("field", "key"),
    [("rotary_pct", "partial_rotary_factor"), ("rotary_emb_base", "rope_theta"), ("rope_theta", "rope_theta")],
)
def test_a_transformers_4_rotary_field_says_to_use_rope_parameters(field, key):
    with pytest.raises(ValueError, match=rf"{field}.*pass rope_parameters=\{{'{key}': 0.5\}}"):
        HookedAutoConfig("gpt-neox", **{field: 0.5})
    # ... and what it says to pass does what was asked
    config = HookedAutoConfig("gpt-neox", rope_parameters={key: 0.5})
    assert config.hf_config.rope_parameters[key] == 0.5


@pytest.mark.parametrize("dim", [[0, 3], range(0, 2)])
def test_a_list_for_dim_idx_hints_that_a_tuple_names_a_writer_head(dim):
    tool = WriteReadAnalyzer(shared("llama"))
    with pytest.raises(TypeError, match=r"got .*; for the output of head L0H\d pass the tuple \(0, \d\)"):
        tool.identify_read_heads(1, dim_idx=dim)
    writer = tuple(dim)  # the hint is right: the tuple reads the writer's output subspace
    assert tool.identify_read_heads(1, dim_idx=writer).method == "composition-qkv"


def test_a_tiny_threshold_selects_the_strongest_head():
    """The smallest set whose shares reach 1e-7 is the one strongest head, never an empty set."""
    tool = WriteReadAnalyzer(shared("llama"))
    for layer in range(tool.cfg.n_layers):
        w = tool.model.head_weights()
        norms = (w.W_V[layer] @ w.W_O[layer]).flatten(-2).norm(dim=-1)  # ||OV[h]||_F, by hand
        selection = tool.identify_write_heads(layer, threshold=1e-7)
        assert list(selection) == [(layer, int(norms.argmax()))]


@pytest.fixture(scope="module")
def streamed(tmp_path_factory) -> WriteReadAnalyzer:
    folder = tmp_path_factory.mktemp("llama")
    shared("llama").hf_model.save_pretrained(folder)
    return WriteReadAnalyzer(HookedAutoModel.from_pretrained(folder, weights_only=True))


def test_weights_only_circuits_without_a_role_filter_need_no_forward_pass(streamed):
    circuit = streamed.circuits("K", min_ratio=1.0, top_k=None)
    comp = WriteReadAnalyzer(shared("llama")).composition_scores("K")
    expected = sorted(
        (tuple(i[:2]), tuple(i[2:])) for i in (comp.tensor >= comp.baseline).nonzero().tolist()
    )  # every pair at or above the baseline, from the in-memory model's composition scores
    assert sorted((e.writer, e.reader) for e in circuit) == expected and expected
    assert all(e.writer_roles == {} and e.reader_roles == {} for e in circuit)


@pytest.mark.parametrize("kwargs", [{"writer_role": "previous_token"}, {"verify": True}])
def test_weights_only_circuits_that_need_prompts_say_so(streamed, kwargs):
    with pytest.raises(RuntimeError, match="weights_only=True: weight-based analyses work, but it has no forward"):
        streamed.circuits("K", **kwargs)


@pytest.mark.parametrize(
    ("knockout", "message"),
    [
        ({0: [(1.5, 5, 2)]}, r"knockout layer 0: head 1.5 is out of range \(an int 0-3, or None\)"),
        ({0: [(1, 5, 2.0)]}, "knockout layer 0: positions must be ints, got 5 -> 2.0"),
        ({0: [(1, 5, 9)]}, "knockout layer 0: edge 5 -> 9 must satisfy 0 <= key <= query < 8"),
    ],
)
def test_a_bad_knockout_names_the_head_or_edge_and_leaves_no_hook(knockout, message):
    model = shared("llama")
    ids = torch.tensor([[5, 7, 9, 7, 5, 9, 7, 11]])
    with pytest.raises((ValueError, TypeError), match=message):
        model.run_with_attention_knockout(ids, knockout)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.hf_model.modules())


def test_circuits_check_n_null_before_any_work(monkeypatch):
    tool = WriteReadAnalyzer(shared("llama"))

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(tool, "head_roles", no_work)
    monkeypatch.setattr(tool, "composition_scores", no_work)
    with pytest.raises(ValueError, match="n_null must be a positive int, got 0"):
        tool.circuits("K", verify=True, n_null=0)


@pytest.mark.parametrize(
    ("pos", "n_pos", "message"), [(1, 1, r"has 1 position \(-1 to 0\)"), (-3, 2, r"has 2 positions \(-2 to 1\)")]
)
def test_a_position_out_of_range_names_the_valid_range(pos, n_pos, message):
    model = shared("llama")
    with pytest.raises(ValueError, match=rf"position {pos} is out of range: the prompt {message}"):
        model.knockout_logits(torch.arange(n_pos)[None] + 1, [{}], pos)


def test_an_empty_circuit_says_which_filter_emptied_it():
    tool = WriteReadAnalyzer(shared("llama"))
    comp = tool.composition_scores("K")
    later = comp.tensor[0]  # writer layer 0 -> reader layer 1: the only pairs of increasing layers
    best = max(((h1, h2) for h1 in range(4) for h2 in range(4)), key=lambda p: float(later[p[0], 1, p[1]]))
    ratio = float(later[best[0], 1, best[1]]) / comp.baseline
    circuit = tool.circuits("K", min_ratio=50)
    assert len(circuit) == 0 and circuit.notes == [
        f"the strongest K-composition the role filters allow is L0H{best[0]} -> L1H{best[1]}, "
        f"{ratio:.2f}x the baseline: below min_ratio 50"
    ]
    assert "note: the strongest" in repr(circuit)
    empty = tool.circuits("K", writer_role="induction", role_threshold=0.99)
    count = int((tool.head_roles().induction >= 0.99).sum())  # none on a random model
    assert empty.notes == [
        f"no pair of heads in increasing layers passes the role filters ({count} heads score >= 0.99 as induction)"
    ]
