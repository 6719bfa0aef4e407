"""profile_model, test_hypothesis and plot_results: right numbers, no hooks left, real Figures."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from scipy import stats

from arrakis.bench import BaseInterpretabilityBench, HypothesisTest, ProfiledRun
from tests.conftest import build, prompt, shared


def hook_counts(model) -> dict[str, tuple[int, int, int]]:
    return {
        name: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._forward_hooks_with_kwargs))
        for name, m in model.hf_model.named_modules()
    }


# -- profile_model ----------------------------------------------------------------------------


def test_profile_has_one_entry_per_layer_with_its_output_bytes(tmp_path):
    bench = BaseInterpretabilityBench(shared("llama"), save_dir=tmp_path)
    ids = prompt()  # [batch 2, pos 12]

    @bench.profile_model
    def two_passes(input_ids):
        bench.model(input_ids)
        return bench.model(input_ids)[0].logits.argmax(-1)

    profiled = two_passes(ids)
    assert isinstance(profiled, ProfiledRun) and profiled.granularity == "layer"
    assert torch.equal(profiled.result, bench.model(ids)[0].logits.argmax(-1))
    assert [p.name for p in profiled.layers] == ["L0", "L1"] and [p.layer for p in profiled.layers] == [0, 1]
    resid_bytes = 2 * 12 * 64 * 4  # each layer outputs the residual stream [batch, pos, d_model], float32
    for p in profiled.layers:
        assert p.calls == 2 and p.output_bytes == 2 * resid_bytes and p.peak_output_bytes == resid_bytes
        assert p.time_s > 0
    assert profiled.layer_time_s <= profiled.wall_time_s
    record = profiled.to_dict()
    assert record["layers"][1] == {
        "name": "L1",
        "layer": 1,
        "component": "layer",
        "calls": 2,
        "time_s": profiled.layers[1].time_s,
        "output_bytes": 2 * resid_bytes,
        "peak_output_bytes": resid_bytes,
    }


def test_profile_by_component_and_layers_never_reached():
    bench = BaseInterpretabilityBench(shared("gpt2"))

    @bench.profile_model("component")
    def nothing():
        return "no forward pass"

    profiled = nothing()
    assert profiled.result == "no forward pass"
    assert [p.name for p in profiled.layers] == ["L0.attn", "L0.mlp", "L1.attn", "L1.mlp"]
    assert all(p.calls == 0 and p.output_bytes == 0 and p.time_s == 0 for p in profiled.layers)
    with pytest.raises(ValueError, match="unknown granularity 'head'; expected one of 'layer', 'component'"):
        bench.profile_model("head")


def test_profile_hooks_are_removed_also_when_the_function_raises():
    model = build("gpt2")
    bench = BaseInterpretabilityBench(model)
    before = hook_counts(model)
    seen_during = []

    @bench.profile_model()
    def crashes(input_ids):
        seen_during.append(hook_counts(model) != before)  # the hooks are really there while it runs
        model(input_ids)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        crashes(prompt())
    assert seen_during == [True]
    assert hook_counts(model) == before
    assert all(counts == (0, 0, 0) for counts in before.values())

    @bench.profile_model
    def fine():
        return model(prompt())[0].logits.shape

    assert fine().result == (2, 12, 512)
    assert hook_counts(model) == before


def test_a_logged_profile_records_the_result_and_the_profile(tmp_path):
    bench = BaseInterpretabilityBench(shared("gpt2"), save_dir=tmp_path)

    @bench.log_experiment("profiled")
    @bench.profile_model
    def profiled(n):
        return [n, bench.model(prompt())[0].logits.shape[-1]]

    out = profiled(3)
    run = bench.get_version("profiled", bench.list_versions("profiled")[0])
    assert run.args == {"n": 3}
    assert run.result["result"] == [3, 512] and len(run.result["layers"]) == 2
    assert run.result["layers"][0]["output_bytes"] == out.layers[0].output_bytes == 2 * 12 * 64 * 4


# -- test_hypothesis --------------------------------------------------------------------------

# Unequal sizes and variances, so Welch's test and Student's pooled one give different answers
# (here p = 0.040 and 0.075: only Welch's rejects at alpha = 0.05).
A = [19.8, 20.4, 19.6, 17.8, 18.5, 18.9, 18.3, 18.9, 19.5, 22.0]
B = [28.2, 26.6, 20.1, 23.3, 25.2, 22.1, 17.7, 27.6, 20.6, 13.7, 23.2, 17.5, 20.6, 18.0, 23.9]


def test_hypothesis_numbers_are_welchs_t_test():
    bench = BaseInterpretabilityBench(shared("gpt2"))

    @bench.test_hypothesis(alpha=0.05)
    def samples():
        return A, torch.tensor(B, dtype=torch.float64)

    result = samples()
    expected = stats.ttest_ind(A, B, equal_var=False)
    assert isinstance(result, HypothesisTest)
    assert result.statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-12)
    # by hand: t = (mean_a - mean_b) / sqrt(va + vb), va = var_a / n_a (unbiased variances), and
    # Welch-Satterthwaite degrees of freedom (va + vb)^2 / (va^2 / (n_a - 1) + vb^2 / (n_b - 1))
    a, b = np.array(A), np.array(B)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    t = (a.mean() - b.mean()) / np.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    assert result.statistic == pytest.approx(t, rel=1e-12) and result.statistic < 0
    assert result.p_value == pytest.approx(2 * stats.t.sf(abs(t), dof), rel=1e-9)
    assert result.p_value == pytest.approx(0.0398, abs=1e-4)
    assert stats.ttest_ind(A, B, equal_var=True).pvalue > 0.05  # Student's would keep the null
    assert result.reject_null and result.alpha == 0.05
    assert (result.mean_a, result.mean_b) == (pytest.approx(a.mean()), pytest.approx(b.mean()))
    assert (result.n_a, result.n_b) == (10, 15)
    assert result.to_dict()["test"] == "welch_t"

    @bench.test_hypothesis(alpha=0.01)
    def stricter():
        return A, B

    assert not stricter().reject_null  # p ~ 0.021 is not below 0.01


def test_an_obvious_difference_is_found_and_no_difference_is_not():
    bench = BaseInterpretabilityBench(shared("gpt2"))
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(200, generator=generator)

    @bench.test_hypothesis
    def shifted():
        return noise[:100], noise[100:] + 3.0

    @bench.test_hypothesis
    def reordered():
        return noise, noise.flip(0)

    found = shifted()
    assert found.reject_null and found.p_value < 1e-30 and found.statistic < -15
    kept = reordered()
    assert not kept.reject_null and kept.statistic == pytest.approx(0, abs=1e-9) and kept.p_value == pytest.approx(1)

    @bench.test_hypothesis(alternative="greater")
    def one_sided():
        return noise[100:] + 3.0, noise[:100]

    assert one_sided().p_value == pytest.approx(found.p_value / 2, rel=1e-6)


def test_hypothesis_refuses_what_is_not_two_samples():
    bench = BaseInterpretabilityBench(shared("gpt2"))
    with pytest.raises(ValueError, match=r"alpha must be a number in \(0, 1\)"):
        bench.test_hypothesis(alpha=1.5)
    with pytest.raises(ValueError, match="unknown alternative 'bigger'"):
        bench.test_hypothesis(alternative="bigger")

    @bench.test_hypothesis
    def three():
        return [1, 2], [3, 4], [5, 6]

    @bench.test_hypothesis
    def tiny():
        return [1.0], [2.0, 3.0]

    @bench.test_hypothesis
    def with_nan():
        return [1.0, float("nan")], [2.0, 3.0]

    with pytest.raises(TypeError, match="must return two samples"):
        three()
    with pytest.raises(ValueError, match="sample a needs at least 2 observations"):
        tiny()
    with pytest.raises(ValueError, match="sample a holds NaN"):
        with_nan()


# -- plot_results -----------------------------------------------------------------------------


def test_plot_results_draws_each_series_as_given():
    from matplotlib.figure import Figure

    bench = BaseInterpretabilityBench(shared("gpt2"))
    data = {"attn": [0.1, 0.5, 0.2], "mlp": torch.tensor([1.0, -2.0, 3.0, 4.0])}

    @bench.plot_results(xlabel="layer")
    def per_layer():
        return data

    fig = per_layer()
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.lines] == ["attn", "mlp"]
    assert ax.lines[0].get_ydata().tolist() == [0.1, 0.5, 0.2]
    assert ax.lines[1].get_ydata().tolist() == [1.0, -2.0, 3.0, 4.0]
    assert ax.lines[1].get_xdata().tolist() == [0, 1, 2, 3]
    assert ax.get_title() == "per_layer" and ax.get_xlabel() == "layer"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["attn", "mlp"]

    @bench.plot_results(kind="bar", title="bars")
    def bars():
        return data

    ax = bars().axes[0]
    assert [[p.get_height() for p in c] for c in ax.containers] == [[0.1, 0.5, 0.2], [1.0, -2.0, 3.0, 4.0]]
    assert ax.get_title() == "bars"


def test_plot_results_tensors_one_and_two_dimensional():
    bench = BaseInterpretabilityBench(shared("gpt2"))
    matrix = torch.arange(12.0).view(3, 4)

    @bench.plot_results
    def curve():
        return matrix[1]

    @bench.plot_results
    def heatmap():
        return matrix

    @bench.plot_results(kind="line")
    def rows():
        return matrix

    (line,) = curve().axes[0].lines
    assert line.get_ydata().tolist() == [4.0, 5.0, 6.0, 7.0]
    fig = heatmap()
    (image,) = fig.axes[0].images
    assert np.asarray(image.get_array()).tolist() == matrix.tolist()
    assert len(fig.axes) == 2  # the heatmap and its colour bar
    assert [line.get_ydata().tolist() for line in rows().axes[0].lines] == matrix.tolist()


def test_plotting_libraries_and_bad_data_are_refused_with_the_fix():
    bench = BaseInterpretabilityBench(shared("gpt2"))
    with pytest.raises(ValueError, match="unsupported plotting library 'plotly'; supported: matplotlib"):
        bench.set_plotting_lib("plotly")
    bench.set_plotting_lib("matplotlib")
    with pytest.raises(ValueError, match="unknown plot kind 'pie'"):
        bench.plot_results(kind="pie")

    @bench.plot_results
    def cube():
        return torch.zeros(2, 2, 2)

    @bench.plot_results
    def words():
        return {"a": ["x", "y"]}

    with pytest.raises(ValueError, match=r"got shape \(2, 2, 2\)"):
        cube()
    with pytest.raises(TypeError, match="series 'a' must be numbers"):
        words()


def test_plot_results_leaves_pyplot_alone():
    bench = BaseInterpretabilityBench(shared("gpt2"))
    open_before = sys.modules["matplotlib.pyplot"].get_fignums() if "matplotlib.pyplot" in sys.modules else []

    @bench.plot_results
    def simple():
        return [1.0, 2.0]

    simple()
    if "matplotlib.pyplot" in sys.modules:  # another test may have imported it; we opened nothing there
        assert sys.modules["matplotlib.pyplot"].get_fignums() == open_before
