"""The command line: the light commands through the real console script (a subprocess, as a
user runs it); the commands that load the embedded model through ``main`` in this process, as
the console script calls it (a subprocess spends about 5 s importing torch and transformers
before it starts, which these tests would pay a dozen times).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from arrakis.cli import main

ARRAKIS = Path(sys.executable).with_name("arrakis")  # the console script installed beside python


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([str(ARRAKIS), *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def cli(capsys):
    """``cli(*args)``: main(args) in this process, as a CompletedProcess-like result."""

    def call(*args: str) -> SimpleNamespace:
        capsys.readouterr()  # drop what came before
        code = main(list(args))
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return call


def test_models_lists_the_families_and_the_embedded_model():
    result = run("models", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert sorted(data["families"]) == [
        "gemma",
        "gemma2",
        "gemma3",
        "gpt-neo",
        "gpt-neox",
        "gpt2",
        "llama",
        "mistral",
        "olmo2",
        "phi3",
        "qwen2",
        "qwen3",
        "stable-lm",
    ]
    assert data["embedded"]["path"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("frobnicate",), "invalid choice: 'frobnicate'"),
        (("heads", "--threshold", "lots"), "argument --threshold: must be a number in (0, 1]"),
        (("heads", "--threshold", "1.5"), "argument --threshold: must be a number in (0, 1]"),
        (("flow", "--prompt", "hi"), "the following arguments are required: --src, --dst"),
        (("summary", "bert"), "unknown family 'bert'"),
        (("heads", "--model", "/nonexistent/model"), "no model at '/nonexistent/model'"),
        ((), "a command is needed, one of models, analyze, heads"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message):
    result = run(*args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("arrakis: error: ") and message in lines[0], result.stderr
    assert result.stdout == ""


def test_summary_prints_shapes_and_hook_names(capsys):
    assert main(["summary", "gpt-neox", "llama"]) == 0
    out = capsys.readouterr().out
    assert "gpt-neox (gpt_neox): 4 layers, 8 heads, 8 KV heads, d_model 256, d_head 32" in out
    assert "parallel residual" in out
    assert "blocks.0.attn.hook_pattern       [1, 8, 16, 16]" in out
    assert "logits                           [1, 16, 50257]" in out


@pytest.mark.slow
def test_heads_and_circuits_on_the_embedded_model(cli):
    result = cli("heads", "--layer", "16", "--threshold", "0.5", "--json")
    assert result.returncode == 0, result.stderr
    (layer,) = json.loads(result.stdout)["layers"]
    assert layer["layer"] == 16 and layer["write_heads"]["threshold"] == 0.5
    assert layer["previous_token"]["0"] > 0.7  # L16H0, the strongest previous-token head
    result = cli("circuits", "--json")
    edges = json.loads(result.stdout)["edges"]
    assert result.returncode == 0 and edges and all(e["ratio"] >= 2.0 for e in edges)
    assert all(e["reader_roles"]["induction"] >= 0.3 for e in edges)
    text = cli("heads", "--layer", "200")
    assert (
        text.returncode == 2
        and "argument --layer: 200 is out of range: this model has 30 layers, so 0..29" in text.stderr
    )


@pytest.mark.slow
def test_attribute_names_the_writers_and_suppressors_of_a_token(cli):
    result = cli("attribute", "--prompt", "The capital of France is", "--token", " Paris", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["token_str"] == " Paris" and data["total"] == pytest.approx(data["logit"], abs=1e-3)
    assert [29, 0] in data["suppressors"][:3] and [29, 0] not in data["writers"]
    bad = cli("attribute", "--prompt", "The capital of France is", "--pos", "9")
    assert bad.returncode == 2 and "pos 9 is out of range: the prompt has 5 positions" in bad.stderr


@pytest.mark.slow
def test_flow_traces_a_prompt_and_verifies_it(cli):
    prompt = "When Mary and John went to the store, John gave a drink to"
    result = cli("flow", "--prompt", prompt, "--src", " Mary", "--dst", " to", "--verify", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["src_pos"], data["dst_pos"]) == (1, 13)
    assert data["method"] == "attribution" and len(data["flows"]) == 30  # every layer by default
    assert data["metric"]["target_str"] == " Mary"
    # the name movers of layer 23 carry Mary to the end; blocking dst <- src everywhere loses
    # most of p(' Mary') (measured: log p falls by 1.40, from -0.08)
    assert data["top_heads"][0][0] == 23
    assert data["verification"]["all_layers"]["exact"] > 0.7
    assert data["verification"]["spearman_heads"] > 0.8
    routes = cli("flow", "--prompt", prompt, "--src", " Mary", "--dst", " to", "--method", "routes")
    assert routes.returncode == 0 and "method routes" in routes.stdout
    integrated = cli(
        "flow", "--prompt", prompt, "--src", " Mary", "--dst", " to", "--method", "integrated", "--steps", "2", "--json"
    )
    assert integrated.returncode == 0, integrated.stderr
    assert json.loads(integrated.stdout)["method"] == "integrated"
    bad = cli("flow", "--prompt", prompt, "--src", " Bob", "--dst", " to")
    assert bad.returncode == 2 and "does not occur before dst" in bad.stderr


def test_experiments_lists_shows_and_exports_the_bench_store(tmp_path):
    from arrakis.bench import BaseInterpretabilityBench
    from tests.conftest import shared

    bench = BaseInterpretabilityBench(shared("gpt2"), save_dir=tmp_path / "runs")

    @bench.log_experiment("writers")
    @bench.use_tools("write_read")
    def writers(layer, write_read):
        return write_read.identify_write_heads(layer)

    writers(0)
    writers(1)
    versions = bench.list_versions("writers")
    listed = run("experiments", "list", "--save-dir", str(tmp_path / "runs"), "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"experiments": {"writers": 2}}
    shown = run("experiments", "show", "writers", versions[0][:8], "--save-dir", str(tmp_path / "runs"), "--json")
    data = json.loads(shown.stdout)
    assert data["version"] == versions[0] and data["args"] == {"layer": 0} and data["result"]["layer"] == 0
    out = tmp_path / "writers.jsonl"
    exported = run("experiments", "export", "writers", "--out", str(out), "--save-dir", str(tmp_path / "runs"))
    assert exported.returncode == 0 and len(out.read_text().splitlines()) == 2
    missing = run("experiments", "list", "--save-dir", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no experiment store" in missing.stderr
    unknown = run("experiments", "show", "writers", "ffffffff", "--save-dir", str(tmp_path / "runs"))
    assert unknown.returncode == 2 and "writers" in unknown.stderr


@pytest.mark.slow
def test_report_writes_a_self_contained_page(cli, tmp_path):
    """One report of the embedded model (about a minute): the page, what it finds, and the
    browser check."""
    from tests.test_report import check_in_browser

    out = tmp_path / "report.html"
    result = cli("report", "--out", str(out), "--prompt", "When Mary and John went to the store, John gave a drink to")
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    n_figures = text.count("<img class='figure'")
    assert n_figures >= 5 and "Prompt &#x27;When Mary and John" in text
    assert "L16H0" in text and "L18H6" in text  # the previous-token and induction heads
    task = text[text.index("<h2>Task: ioi</h2>") :]
    assert re.search(r"on (100|88|75)% of the 8 examples", task)  # the model does IOI
    assert "<td>L23H3</td>" in task  # a name mover among the top heads
    check_in_browser(out, tmp_path, n_figures)
    bad = cli("report", "--out", str(out), "--src", " Mary")
    assert bad.returncode == 2 and "--src and --dst need --prompt" in bad.stderr
