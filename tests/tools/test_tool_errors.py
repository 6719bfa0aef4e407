"""Bad input to the tools (issue #18): each gets one clear error naming the argument and what
is valid, raised before any forward pass (or, for a custom metric, right after the clean one
and before any backward pass or knockout), and leaves the model as it was."""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch

from arrakis.bench import BaseInterpretabilityBench, VersionNotFoundError
from arrakis.tools import WriteReadAnalyzer
from tests.conftest import shared

IDS = torch.tensor([[5, 7, 9, 7, 5, 9, 7, 11]])  # 8 positions


@contextmanager
def forward_passes(model):
    """Counts the Hugging Face model's forward passes; checks that the parameters and the
    hooks are as they were afterwards."""
    params = [p.detach().clone() for p in model.hf_model.parameters()]
    calls = []
    handle = model.hf_model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()
    for before, after in zip(params, model.hf_model.parameters(), strict=True):
        assert torch.equal(before, after.detach())  # untouched: the very same values, not recomputed ones
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.hf_model.modules())


@pytest.fixture
def tool() -> WriteReadAnalyzer:
    return WriteReadAnalyzer(shared("llama"))


@pytest.mark.parametrize("verify", ["yes", 1, None])
def test_circuits_verify_must_be_a_bool(tool, verify):
    with forward_passes(tool.model) as calls, pytest.raises(TypeError, match=r"verify must be True or False, got"):
        tool.circuits("K", verify=verify)
    assert not calls


@pytest.mark.parametrize(
    ("probe", "message"),
    [("", "probe is an empty string"), ([], "probe is empty"), (3.5, "probe: input must be token ids")],
)
def test_circuits_blame_a_bad_probe_by_name(tool, probe, message):
    with forward_passes(tool.model) as calls, pytest.raises((TypeError, ValueError), match=message):
        tool.circuits("K", verify=True, probe=probe)
    assert not calls


@pytest.mark.parametrize("method", ["attribution", "routes"])
@pytest.mark.parametrize(
    ("metric", "message"),
    [
        (lambda logits: logits[0] * math.nan, "metric returned nan on the clean logits; it must be finite"),
        (lambda logits: logits[:2], r"metric must return a scalar tensor .* got \(2,\)"),
        (lambda logits: 1.0, "metric must return a scalar tensor .* got float"),
    ],
)
def test_a_metric_that_is_not_one_finite_number_stops_the_trace_after_the_clean_pass(tool, method, metric, message):
    with forward_passes(tool.model) as calls, pytest.raises(ValueError, match=message):
        tool.trace_information_flow(IDS, src_pos=1, dst_pos=6, method=method, metric=metric, verify=True)
    assert len(calls) == 1  # the clean pass only: no knockouts ran


@pytest.mark.parametrize(("name", "value"), [("foil", 3), ("pos", 2), ("pos", -1)])
def test_write_heads_take_foil_and_pos_only_with_a_token(tool, name, value):
    with forward_passes(tool.model) as calls, pytest.raises(ValueError, match=f"{name}= goes with token="):
        tool.identify_write_heads(0, input_ids=IDS, **{name: value})
    assert not calls


def test_write_heads_name_the_valid_positions(tool):
    with forward_passes(tool.model) as calls:
        with pytest.raises(ValueError, match=r"pos 8 is out of range: the prompt has 8 positions \(-8 to 7\)"):
            tool.identify_write_heads(0, input_ids=IDS, token=3, pos=8)
        with pytest.raises(TypeError, match=r"pos must be an int \(a position, -8 to 7\), got float 1.5"):
            tool.identify_write_heads(0, input_ids=IDS, token=3, pos=1.5)
        with pytest.raises(TypeError, match="pos must be an int"):
            tool.logit_attribution(IDS, 3, pos="2")
    assert not calls
    assert tool.identify_write_heads(0, input_ids=IDS, token=3, pos=2).extra["pos"] == 2  # a valid one runs


@pytest.mark.parametrize("call", ["identify_write_heads", "identify_read_heads"])
def test_a_layer_given_as_a_string_is_a_type_error(tool, call):
    args = ("0",) if call == "identify_write_heads" else ("1", 0)
    with forward_passes(tool.model) as calls, pytest.raises(TypeError, match="layer_idx must be an int, got str"):
        getattr(tool, call)(*args)
    assert not calls


def test_logit_attribution_without_input_ids_names_them(tool):
    with forward_passes(tool.model) as calls, pytest.raises(TypeError, match="input_ids is required: token ids"):
        tool.logit_attribution(None, 3)
    assert not calls


def test_get_version_of_an_experiment_never_logged_names_it_and_lists_the_logged_ones(tmp_path):
    bench = BaseInterpretabilityBench(shared("gpt2"), save_dir=tmp_path / "runs")

    @bench.log_experiment("logged")
    def logged(x):
        return x

    logged(1)
    for version in ("abc", bench.list_versions("logged")[0]):  # too short a prefix, and a real hash of another
        with pytest.raises(VersionNotFoundError, match=r"experiment 'nope' has no recorded runs .*'logged'"):
            bench.get_version("nope", version)
