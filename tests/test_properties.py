"""Property-based tests over the public functions' inputs: every input gives either a
correct result or a clear error (ValueError, TypeError or a KeyError naming the problem),
never a crash deep inside torch or a silent wrong answer, and the model is left exactly as
it was (weights, training flag, hooks), in float32, bfloat16 and float16."""

from __future__ import annotations

import math
from functools import cache

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arrakis import HookedAutoConfig, HookedAutoModel
from arrakis.tools import WriteReadAnalyzer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
N_LAYERS, N_HEADS, D_MODEL, D_VOCAB = 2, 4, 32, 64
CLEAR = (ValueError, TypeError, KeyError)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@cache
def tool(dtype: str) -> WriteReadAnalyzer:
    torch.manual_seed(0)
    config = HookedAutoConfig(
        "llama", n_layers=N_LAYERS, n_heads=N_HEADS, n_kv_heads=2, d_model=D_MODEL, d_head=8, d_mlp=64, d_vocab=D_VOCAB
    )
    model = HookedAutoModel(config)
    model.hf_model.to(DTYPES[dtype])
    return WriteReadAnalyzer(model)


def state(model: HookedAutoModel) -> tuple:
    params = tuple((name, p.detach().clone()) for name, p in model.hf_model.named_parameters())
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return params, model.training, model.hf_model.training, hooks


def same_state(a: tuple, b: tuple) -> bool:
    return all(torch.equal(x, y) for (_, x), (_, y) in zip(a[0], b[0], strict=True)) and a[1:] == b[1:]


def check(dtype: str, call, validate) -> None:
    """Run ``call``; it must either pass ``validate`` or raise a clear error; the model must
    not change either way."""
    t = tool(dtype)
    before = state(t.model)
    try:
        result = call(t)
    except CLEAR as err:
        assert str(err), "an error must say what is wrong"
    else:
        validate(result)
    assert same_state(before, state(t.model))


def valid_selection(selection, threshold=None) -> None:
    assert all(math.isfinite(s) and s >= 0 for s in selection.scores)
    assert len(selection.scores) == N_HEADS and len(set(selection)) == len(selection)
    assert all(layer == selection.layer and 0 <= head < N_HEADS for layer, head in selection)
    if threshold is not None and sum(selection.scores) > 0:
        assert selection.covered() >= threshold - 1e-6


dtypes = st.sampled_from(list(DTYPES))
layers = st.integers(-3, N_LAYERS + 2)
thresholds = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 3), st.none(), st.text(max_size=3)
)


@SETTINGS
@given(dtype=dtypes, layer=layers, threshold=thresholds)
def test_write_heads(dtype, layer, threshold):
    check(dtype, lambda t: t.identify_write_heads(layer, threshold), lambda s: valid_selection(s, threshold))


directions = st.one_of(
    st.integers(-3, D_MODEL + 3),
    st.tuples(st.integers(-2, N_LAYERS + 1), st.integers(-2, N_HEADS + 1)),
    st.builds(
        lambda n, dtype, scale: torch.randn(n).to(dtype) * scale,
        st.sampled_from([D_MODEL, D_MODEL - 1, 1]),
        st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.int64]),
        st.sampled_from([1.0, 0.0, float("nan"), 1e30]),
    ),
    st.floats(),
    st.lists(st.integers(), max_size=3),
)


@SETTINGS
@given(dtype=dtypes, layer=layers, dim=directions, channel=st.sampled_from(["q", "k", "v", "qkv", "o", "Q", ""]))
def test_read_heads(dtype, layer, dim, channel):
    check(dtype, lambda t: t.identify_read_heads(layer, dim, channel=channel), valid_selection)


@SETTINGS
@given(dtype=dtypes, direction=directions)
def test_write_heads_along_a_direction(dtype, direction):
    check(dtype, lambda t: t.identify_write_heads(1, direction=direction), valid_selection)


input_ids = st.one_of(
    st.builds(
        lambda shape, dtype, high: torch.randint(-2, high, shape).to(dtype),
        st.sampled_from([(1, 5), (2, 3), (5,), (1, 0), (1, 1, 4), ()]),
        st.sampled_from([torch.int64, torch.int32, torch.float32, torch.bool, torch.uint8]),
        st.sampled_from([D_VOCAB, D_VOCAB + 5]),
    ),
    st.lists(st.integers(-1, D_VOCAB), max_size=6),
    st.text(max_size=4),
)


@SETTINGS
@given(dtype=dtypes, ids=input_ids)
def test_forward_and_data_write_scores(dtype, ids):
    def validate(selection) -> None:
        valid_selection(selection)
        assert selection.method == "data"

    check(dtype, lambda t: t.identify_write_heads(0, input_ids=ids), validate)


@SETTINGS
@given(
    dtype=dtypes, src=st.integers(-2, 10), dst=st.integers(-2, 10), n_layers=st.one_of(st.none(), st.integers(-1, 4))
)
def test_information_flow_positions(dtype, src, dst, n_layers):
    ids = torch.tensor([[3, 5, 7, 5, 9, 11, 5, 13]])

    def validate(flow) -> None:
        assert flow.src_pos == src and flow.dst_pos == dst and 0 <= src < dst < 8
        assert all(0 <= f <= 1 + 1e-5 for f in flow)
        for lf in flow.layers:
            total = lf.residual_share + lf.bias_share + sum(h.importance_total for h in lf.heads)
            assert total == pytest.approx(1.0, abs=1e-4) or total == 0

    check(
        dtype,
        lambda t: t.trace_information_flow(ids, src_pos=src, dst_pos=dst, n_layers=n_layers, method="routes"),
        validate,
    )


@SETTINGS
@given(
    dtype=dtypes, src=st.integers(-2, 10), dst=st.integers(-2, 10), n_layers=st.one_of(st.none(), st.integers(-1, 4))
)
def test_information_flow_attribution(dtype, src, dst, n_layers):
    ids = torch.tensor([[3, 5, 7, 5, 9, 11, 5, 13]])

    def validate(flow) -> None:
        assert flow.src_pos == src and flow.dst_pos == dst and 0 <= src < dst < 8
        assert torch.isfinite(flow.head_scores).all()
        assert list(flow) == pytest.approx(flow.head_scores.sum(1).tolist(), abs=1e-5)
        assert all(0 <= h.attention <= 1 + 1e-5 for lf in flow.layers for h in lf.heads)

    check(dtype, lambda t: t.trace_information_flow(ids, src_pos=src, dst_pos=dst, n_layers=n_layers), validate)


@SETTINGS
@given(dtype=dtypes, mode=st.text(max_size=2))
def test_composition_modes(dtype, mode):
    def validate(scores) -> None:
        assert mode.upper() in "QKV" and mode
        assert torch.isfinite(scores.tensor).all() and (scores.tensor >= 0).all() and (scores.tensor <= 1 + 1e-5).all()

    check(dtype, lambda t: t.composition_scores(mode), validate)


@SETTINGS
@given(dtype=dtypes, names=st.lists(st.text(max_size=30), max_size=3))
def test_hook_names(dtype, names):
    def validate(result) -> None:
        _, cache = result
        assert set(cache) == set(names)

    check(dtype, lambda t: t.model.run_with_cache(torch.tensor([[1, 2, 3]]), names=names), validate)
