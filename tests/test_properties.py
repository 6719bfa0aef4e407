"""Property-based tests over the public functions' inputs.

Each test decides from the input alone, with its own rules (the ones docs/mathematics.md and the
docstrings state), whether the input is valid. Valid input must succeed and give the
numbers a brute-force formula written here gives; invalid input must raise a clear error
(ValueError, TypeError, or a KeyError) that names the argument at fault. Either way the
model is left exactly as it was (weights, training flag, hooks), in float32, bfloat16 and
float16, on eight families whose maths differ (FAMILIES), with random gains and biases.
``test_sabotaged_*`` check that these tests can fail: a public function that refuses every
input, or accepts what it should refuse, makes them fail.
"""

from __future__ import annotations

import math
import numbers
from functools import cache

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import Tensor

from arrakis import HookedAutoConfig, HookedAutoModel
from arrakis.tools import WriteReadAnalyzer
from tests.conftest import randomize_

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 5e-3}  # relative, against a float32 formula
N_LAYERS, N_HEADS, D_MODEL, D_VOCAB = 2, 4, 32, 64
CLEAR = (ValueError, TypeError, KeyError)
# derandomize: the same examples on every run, so CI cannot pass or fail by luck; no
# database: the sabotage tests' failures are not replayed into the real ones.
SETTINGS = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


# Families whose maths differ where these functions look: grouped-query attention (llama),
# Conv1D and learned positions (gpt2), interleaved q/k/v and partial rotary (gpt-neox), per-head
# q/k norms with (1 + w) gains and post-norms (gemma3), q/k norms over all heads and no ln1
# (olmo2), soft-capping and local layers (gemma2), a fused qkv_proj (phi3), LayerNorm (stable-lm).
FAMILIES = ("llama", "gpt2", "gpt-neox", "gemma3", "olmo2", "gemma2", "phi3", "stable-lm")
GQA = {"llama", "gemma3", "gemma2"}  # families that take n_kv_heads and d_head here


@cache
def tool(dtype: str, family: str = "llama") -> WriteReadAnalyzer:
    torch.manual_seed(0)
    shape = dict(n_layers=N_LAYERS, n_heads=N_HEADS, d_model=D_MODEL, d_mlp=64, d_vocab=D_VOCAB)
    if family in GQA:
        shape |= dict(n_kv_heads=2, d_head=8)
    model = randomize_(HookedAutoModel(HookedAutoConfig(family, **shape)))  # gains not 1, biases not 0
    model.hf_model.to(DTYPES[dtype])
    return WriteReadAnalyzer(model)


def state(model: HookedAutoModel) -> tuple:
    params = tuple((name, p.detach().clone()) for name, p in model.hf_model.named_parameters())
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return params, model.training, model.hf_model.training, hooks


def same_state(a: tuple, b: tuple) -> bool:
    return all(torch.equal(x, y) for (_, x), (_, y) in zip(a[0], b[0], strict=True)) and a[1:] == b[1:]


def check(dtype: str, family: str, call, fault: str | None, validate, names: tuple[str, ...] = ()) -> None:
    """``fault`` is None for valid input: ``call`` must succeed and pass ``validate``.
    Otherwise it says what is wrong, and ``call`` must raise a clear error whose message
    names one of ``names``. The model must not change either way."""
    t = tool(dtype, family)
    before = state(t.model)
    try:
        result = call(t)
    except CLEAR as err:
        message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        assert fault is not None, f"valid input was refused: {type(err).__name__}: {message}"
        assert any(name in message for name in names), f"{fault}: the error {message!r} names none of {names}"
    else:
        assert fault is None, f"invalid input ({fault}) was accepted and returned {result!r}"
        validate(result)
    assert same_state(before, state(t.model)), "the model changed"


# -- the rules, stated here --------------------------------------------------------------


def is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def layer_fault(layer: object) -> str | None:
    return None if is_int(layer) and 0 <= layer < N_LAYERS else f"layer {layer!r} is not in 0-{N_LAYERS - 1}"


def threshold_fault(threshold: object) -> str | None:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or math.isnan(threshold):
        return f"threshold {threshold!r} is not a number"
    return None if 0 < threshold <= 1 else f"threshold {threshold!r} is outside (0, 1]"


def direction_fault(u: object) -> str | None:
    if not isinstance(u, Tensor) or not u.dtype.is_floating_point or u.shape != (D_MODEL,):
        return f"{u!r} is not a float vector of size {D_MODEL}"
    if not torch.isfinite(u).all() or not u.abs().max() > 0:
        return "the direction is not finite and non-zero"
    return None


def first(*faults: str | None) -> str | None:
    return next((f for f in faults if f is not None), None)


# -- brute force ------------------------------------------------------------------------------


def weights32(t: WriteReadAnalyzer) -> dict[str, Tensor]:
    w = t.model.head_weights(folded=True)
    W_Q, W_K = w.qk_circuit()
    return {"Q": W_Q.float(), "K": W_K.float(), "V": w.W_V.float(), "O": w.W_O.float()}


def unit64(u: Tensor) -> Tensor:
    u = u.double()
    return u / u.norm()


def ov(w: dict[str, Tensor], layer: int, head: int) -> Tensor:
    return w["V"][layer, head].double() @ w["O"][layer, head].double()  # [D, D]


def qk(w: dict[str, Tensor], layer: int, head: int) -> Tensor:
    return w["Q"][layer, head].double() @ w["K"][layer, head].double().T


def valid_selection(selection, expected: list[float] | None, dtype: str, threshold: float | None = None) -> None:
    """Well formed, consistent with its own scores, and (given) equal to the brute force."""
    scores = selection.scores
    assert all(math.isfinite(s) and s >= 0 for s in scores)
    assert len(scores) == N_HEADS and len(set(selection)) == len(selection)
    assert all(layer == selection.layer and 0 <= head < N_HEADS for layer, head in selection)
    if threshold is not None and sum(scores) > 0:
        assert selection.covered() >= threshold - 1e-6 and len(selection) >= 1
        smaller = sorted(scores, reverse=True)[: len(selection) - 1]  # one head fewer would not do
        assert sum(smaller) / sum(scores) < threshold - 1e-6 or not smaller
    if expected is not None:
        assert scores == pytest.approx(expected, rel=TOLERANCE[dtype], abs=1e-6 * max(expected))


# -- strategies: valid input often, invalid input of every kind -----------------------------

dtypes = st.sampled_from(list(DTYPES))
families = st.sampled_from(FAMILIES)
# each strategy draws valid input about half the time, and invalid input of every kind otherwise
layers = st.one_of(st.integers(0, N_LAYERS - 1), st.one_of(st.integers(-3, N_LAYERS + 2), st.booleans(), st.floats()))
thresholds = st.one_of(
    st.floats(1e-9, 1.0),
    st.just(1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-2, 3),
    st.none(),
    st.text(max_size=3),
)
vectors = st.builds(
    lambda n, dtype, scale: (torch.randn(n) * scale).to(dtype),
    st.sampled_from([D_MODEL, D_MODEL, D_MODEL - 1, 1]),
    st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.int64]),
    st.sampled_from([1.0, 1e-3, 0.0, float("nan"), 1e30]),
)
writers = st.tuples(st.integers(-2, N_LAYERS + 1), st.integers(-2, N_HEADS + 1))
unit_vectors = st.builds(
    lambda seed: torch.randn(D_MODEL, generator=torch.Generator().manual_seed(seed)), st.integers(0, 99)
)
dims = st.one_of(
    st.one_of(st.integers(0, D_MODEL - 1), st.tuples(st.just(0), st.integers(0, N_HEADS - 1)), unit_vectors),
    st.one_of(st.integers(-3, D_MODEL + 3), writers, vectors, st.floats(), st.lists(st.integers(), max_size=3)),
)
channels = st.one_of(st.sampled_from(["q", "k", "v", "qkv", "Q", "QKV"]), st.sampled_from(["o", "", "KV", "qk"]))
modes = st.one_of(st.sampled_from(["Q", "k", "V", "q"]), st.text(max_size=2), st.integers())
HUGE, TINY = torch.randn(D_MODEL) * 1e30, torch.randn(D_MODEL) * 1e-30  # ||u|| over- and underflows in float32


@SETTINGS
@given(family=families, dtype=dtypes, layer=layers, threshold=thresholds)
def test_write_heads(family, dtype, layer, threshold):
    fault = first(layer_fault(layer), threshold_fault(threshold))

    def validate(selection) -> None:
        w = weights32(tool(dtype, family))
        expected = [float(ov(w, layer, h).norm()) for h in range(N_HEADS)]  # ||OV[h]||_F
        valid_selection(selection, expected, dtype, threshold)

    check(dtype, family, lambda t: t.identify_write_heads(layer, threshold), fault, validate, ("layer", "threshold"))


def read_fault(layer: object, dim: object, channel: object) -> str | None:
    if not isinstance(channel, str) or channel.lower() not in ("q", "k", "v", "qkv"):
        return f"channel {channel!r}"
    if layer_fault(layer):
        return layer_fault(layer)
    if isinstance(dim, tuple):  # a writer head of an earlier layer
        ok = is_int(dim[0]) and 0 <= dim[0] < layer and is_int(dim[1]) and 0 <= dim[1] < N_HEADS
        return None if ok else f"writer {dim} is not a head of a layer before {layer}"
    if isinstance(dim, Tensor):
        return direction_fault(dim)
    return None if is_int(dim) and 0 <= dim < D_MODEL else f"dim_idx {dim!r} is not in 0-{D_MODEL - 1}"


def read_expected(t: WriteReadAnalyzer, layer: int, dim: object, channel: str) -> list[float]:
    """docs/mathematics.md#read-heads, by hand: per channel, the read ratio of a direction, or the composition
    score of a writer; "qkv" is the root mean square of the three."""
    w = weights32(t)
    channels = ("Q", "K", "V") if channel.lower() == "qkv" else (channel.upper(),)
    scores = torch.zeros(len(channels), N_HEADS, dtype=torch.float64)
    for h in range(N_HEADS):
        for c, name in enumerate(channels):
            if isinstance(dim, tuple):
                writer = ov(w, *dim)
                reader = {"Q": qk(w, layer, h), "K": qk(w, layer, h).T, "V": ov(w, layer, h)}[name]
                scores[c, h] = (writer @ reader).norm() / (writer.norm() * reader.norm())
            else:
                u = unit64(dim) if isinstance(dim, Tensor) else torch.eye(D_MODEL, dtype=torch.float64)[dim]
                W = w[name][layer, h].double()
                scores[c, h] = (u @ W).norm() / (W.norm() / math.sqrt(D_MODEL))
    return scores.pow(2).mean(0).sqrt().tolist()


@SETTINGS
@given(
    family=families,
    dtype=dtypes,
    layer=layers,
    dim=dims,
    channel=st.sampled_from(["q", "k", "v", "qkv", "o", "Q", "", "KV"]),
)
@example(family="llama", dtype="float32", layer=1, dim=HUGE, channel="qkv")
@example(family="llama", dtype="float16", layer=0, dim=TINY, channel="k")
def test_read_heads(family, dtype, layer, dim, channel):
    fault = read_fault(layer, dim, channel)
    names = ("layer", "dim_idx", "writer", "channel", "direction")

    def validate(selection) -> None:
        valid_selection(selection, read_expected(tool(dtype, family), layer, dim, channel), dtype)

    check(dtype, family, lambda t: t.identify_read_heads(layer, dim, channel=channel), fault, validate, names)


@SETTINGS
@given(family=families, dtype=dtypes, direction=st.one_of(vectors, dims))
@example(family="llama", dtype="float32", direction=HUGE)
@example(family="llama", dtype="bfloat16", direction=TINY)
def test_write_heads_along_a_direction(family, dtype, direction):
    fault = direction_fault(direction)

    def validate(selection) -> None:
        w, u = weights32(tool(dtype, family)), unit64(direction)
        valid_selection(selection, [float((ov(w, 1, h) @ u).norm()) for h in range(N_HEADS)], dtype)  # ||OV u^||

    check(dtype, family, lambda t: t.identify_write_heads(1, direction=direction), fault, validate, ("direction",))


input_ids = st.one_of(
    st.builds(
        lambda shape, dtype, high: torch.randint(-2, high, shape).to(dtype),
        st.sampled_from([(1, 5), (2, 3), (5,), (1, 0), (1, 1, 4), ()]),
        st.sampled_from([torch.int64, torch.int32, torch.float32, torch.bool, torch.uint8]),
        st.sampled_from([D_VOCAB, D_VOCAB + 5]),
    ),
    st.builds(lambda shape: torch.randint(0, D_VOCAB, shape), st.sampled_from([(1, 5), (2, 3), (7,)])),
    st.lists(st.integers(-1, D_VOCAB), max_size=6),
    st.text(max_size=4),
)


def ids_fault(ids: object) -> str | None:
    if isinstance(ids, str):
        return "a string, and this model has no tokenizer"
    if isinstance(ids, list) and not ids:
        return "no token ids"
    values = torch.as_tensor(ids) if isinstance(ids, list) else ids
    if values.dtype in (torch.bool, torch.float32):
        return f"dtype {values.dtype} is not integer"
    if values.dim() not in (1, 2) or values.numel() == 0:
        return f"shape {tuple(values.shape)} is not [batch, pos] with pos >= 1"
    if values.min() < 0 or values.max() >= D_VOCAB:
        return f"token ids outside 0-{D_VOCAB - 1}"
    return None


@SETTINGS
@given(family=families, dtype=dtypes, ids=input_ids)
def test_forward_and_data_write_scores(family, dtype, ids):
    fault = ids_fault(ids)

    def validate(selection) -> None:
        assert selection.method == "data"
        t = tool(dtype, family)
        _, cache = t.model.run_with_cache(torch.as_tensor(ids).long().reshape(-1, torch.as_tensor(ids).shape[-1]))
        written = torch.einsum("bphd,hdm->bphm", cache["blocks.0.attn.hook_z"].float(), weights32(t)["O"][0])
        valid_selection(selection, written.norm(dim=-1).mean((0, 1)).tolist(), dtype)  # mean ||z W_O|| per head

    names = ("input_ids", "token id", "tokenizer")
    check(dtype, family, lambda t: t.identify_write_heads(0, input_ids=ids), fault, validate, names)


PROMPT = torch.tensor([[3, 5, 7, 5, 9, 11, 5, 13]])
edges = st.one_of(
    st.tuples(st.integers(0, 6), st.integers(1, 7)).filter(lambda e: e[0] < e[1]),
    st.tuples(st.integers(-2, 10), st.integers(-2, 10)),
)
n_layers_choices = st.one_of(st.none(), st.integers(1, N_LAYERS), st.integers(-1, N_LAYERS + 2), st.just(True))


def flow_fault(src: int, dst: int, n_layers: object) -> str | None:
    if not (0 <= src < dst < PROMPT.shape[1]):
        return f"positions {src} -> {dst} are not 0 <= src < dst < {PROMPT.shape[1]}"
    if n_layers is not None and not (is_int(n_layers) and 1 <= n_layers <= N_LAYERS):
        return f"n_layers {n_layers!r} is not in 1-{N_LAYERS}"
    return None


FLOW_NAMES = ("src", "dst", "position", "n_layers")


@SETTINGS
@given(family=families, dtype=dtypes, edge=edges, n_layers=n_layers_choices)
def test_information_flow_routes(family, dtype, edge, n_layers):
    src, dst = edge

    def validate(flow) -> None:
        assert (flow.src_pos, flow.dst_pos) == (src, dst) and len(flow) == (n_layers or N_LAYERS)
        assert all(0 <= f <= 1 + 1e-5 for f in flow)
        for lf in flow.layers:
            total = lf.residual_share + lf.bias_share + sum(h.importance_total for h in lf.heads)
            assert total == pytest.approx(1.0, abs=1e-4) or total == pytest.approx(0.0, abs=1e-6)

    check(
        dtype,
        family,
        lambda t: t.trace_information_flow(PROMPT, src_pos=src, dst_pos=dst, n_layers=n_layers, method="routes"),
        flow_fault(src, dst, n_layers),
        validate,
        FLOW_NAMES,
    )


@SETTINGS
@given(family=families, dtype=dtypes, edge=edges, n_layers=n_layers_choices)
def test_information_flow_attribution(family, dtype, edge, n_layers):
    src, dst = edge

    def validate(flow) -> None:
        assert (flow.src_pos, flow.dst_pos) == (src, dst) and len(flow) == (n_layers or N_LAYERS)
        assert torch.isfinite(flow.head_scores).all()
        assert list(flow) == pytest.approx(flow.head_scores.sum(1).tolist(), abs=1e-5)
        _, cache = tool(dtype, family).model.run_with_cache(PROMPT)
        for lf in flow.layers:  # each head's attention on the edge is the clean pattern's
            pattern = cache[f"blocks.{lf.layer}.attn.hook_pattern"][0, :, dst, src].float()
            assert [h.attention for h in lf.heads] == pytest.approx(pattern.tolist(), abs=1e-3)

    check(
        dtype,
        family,
        lambda t: t.trace_information_flow(PROMPT, src_pos=src, dst_pos=dst, n_layers=n_layers),
        flow_fault(src, dst, n_layers),
        validate,
        FLOW_NAMES,
    )


@SETTINGS
@given(
    family=families,
    dtype=dtypes,
    mode=st.one_of(st.sampled_from(["Q", "k", "V", "q"]), st.text(max_size=2), st.integers()),
)
def test_composition_modes(family, dtype, mode):
    valid = isinstance(mode, str) and mode.upper() in ("Q", "K", "V")

    def validate(scores) -> None:
        t = tool(dtype, family)
        w, name = weights32(t), mode.upper()
        for h1 in range(N_HEADS):  # writer layer 0 -> reader layer 1, by the formula of docs/mathematics.md#composition
            writer = ov(w, 0, h1)
            for h2 in range(N_HEADS):
                reader = {"Q": qk(w, 1, h2), "K": qk(w, 1, h2).T, "V": ov(w, 1, h2)}[name]
                expected = float((writer @ reader).norm() / (writer.norm() * reader.norm()))
                assert float(scores.tensor[0, h1, 1, h2]) == pytest.approx(expected, rel=TOLERANCE[dtype])
        assert (scores.tensor[1, :, 0, :] == 0).all() and (scores.tensor[0, :, 0, :] == 0).all()  # l1 >= l2

    check(dtype, family, lambda t: t.composition_scores(mode), None if valid else f"mode {mode!r}", validate, ("mode",))


@cache
def all_hooks(family: str) -> tuple[str, ...]:
    _, cache_ = tool("float32", family).model.run_with_cache(torch.tensor([[1, 2, 3]]))
    return tuple(sorted(cache_))


@cache
def hooks_of_any_family() -> tuple[str, ...]:
    return tuple(sorted({name for family in FAMILIES for name in all_hooks(family)}))


hook_names = st.deferred(lambda: st.sampled_from(hooks_of_any_family()))  # built when first drawn


@SETTINGS
@given(family=families, dtype=dtypes, names=st.lists(st.one_of(hook_names, st.text(max_size=30)), max_size=3))
def test_hook_names(family, dtype, names):
    unknown = [n for n in names if n not in all_hooks(family)]  # e.g. hook_resid_mid of a parallel block

    def validate(result) -> None:
        _, cache = result
        assert set(cache) == set(names)

    fault = f"unknown hook names {unknown}" if unknown else None
    call = lambda t: t.model.run_with_cache(torch.tensor([[1, 2, 3]]), names=names)  # noqa: E731
    check(dtype, family, call, fault, validate, tuple(repr(n) for n in unknown) or ("hook",))


# -- the tests above can fail -----------------------------------------------------------------


def refuse(*args, **kwargs):
    raise ValueError("refused (sabotage)")


@pytest.mark.parametrize(
    ("target", "test"),
    [
        ("identify_write_heads", test_write_heads),
        ("identify_read_heads", test_read_heads),
        ("composition_scores", test_composition_modes),
        ("trace_information_flow", test_information_flow_attribution),
    ],
)
def test_sabotaged_functions_that_refuse_everything_fail_the_properties(monkeypatch, target, test):
    monkeypatch.setattr(WriteReadAnalyzer, target, refuse)
    with pytest.raises(AssertionError, match=r"valid input was refused|names none of"):
        test()


def test_a_sabotaged_check_that_accepts_bad_thresholds_fails_the_properties(monkeypatch):
    monkeypatch.setattr("arrakis.tools.write_read.check_threshold", float)
    with pytest.raises((AssertionError, *CLEAR)):
        test_write_heads()


def test_sabotaged_scores_fail_the_properties(monkeypatch):
    import arrakis.circuits.heads as head_math

    ov_norms = head_math.ov_norms
    monkeypatch.setattr(head_math, "ov_norms", lambda W_V, W_O: ov_norms(W_V, W_O).flip(-1))  # heads swapped
    with pytest.raises(AssertionError):
        test_write_heads()
