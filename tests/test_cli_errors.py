"""Every user error in the command line exits with code 2, prints nothing on stdout and exactly one
line on stderr ("arrakis: error: ...") that names the problem and what is valid; errors in the
arguments are caught before any model is loaded. Unreadable model files raise a library error
that names the file, in Python too."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from arrakis import HookedAutoModel, cli
from arrakis.cli import commands, main
from arrakis.models import UnsupportedArchitectureError, disk_cache, load_model, loading, packaged
from arrakis.models.load_errors import ModelLoadError, ModelNotFoundError
from tests.conftest import shared

ARRAKIS = Path(sys.executable).with_name("arrakis")  # the console script installed beside python


def one_error_line(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run the command line in-process; it must exit 2 with one line on stderr and none on stdout."""
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert (code, out) == (2, ""), (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("arrakis: error: "), err
    return lines[0]


def refuse(*args, **kwargs):
    raise AssertionError("model loaded")


@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load a model fails the test."""
    monkeypatch.setattr(commands, "load_model", refuse)
    monkeypatch.setattr(loading, "load_gguf", refuse)
    monkeypatch.setattr(loading, "load_hf_folder", refuse)
    monkeypatch.setattr(HookedAutoModel, "from_pretrained", refuse)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(disk_cache.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


# -- errors in the arguments: refused at parse time, no model loaded ------------------------------

ARGUMENT_ERRORS = {
    "no command": ([], ["a command is needed", "models", "heads", "report"]),
    "unknown option, no command": (["--bogus"], ["unrecognized arguments: --bogus", "heads", "summary"]),
    "unknown option of a command": (["heads", "--bogus"], ["unrecognized arguments: --bogus", "--threshold"]),
    "unknown command": (["frobnicate"], ["invalid choice: 'frobnicate'", "models"]),
    "threshold above 1": (["heads", "--threshold", "1.5"], ["argument --threshold", "(0, 1]", "'1.5'"]),
    "threshold 0": (["heads", "--threshold", "0"], ["argument --threshold", "(0, 1]"]),
    "threshold nan": (["heads", "--threshold", "nan"], ["argument --threshold", "(0, 1]"]),
    "threshold not a number": (["heads", "--threshold", "lots"], ["argument --threshold", "(0, 1]", "'lots'"]),
    "negative layer": (["heads", "--layer", "-1"], ["argument --layer", "0..n_layers-1", "'-1'"]),
    "layer not an int": (["heads", "--layer", "two"], ["argument --layer", "0..n_layers-1"]),
    "negative top-k": (["circuits", "--top-k", "-1"], ["argument --top-k", "positive int", "'-1'"]),
    "top-k 0": (["circuits", "--top-k", "0"], ["argument --top-k", "positive int"]),
    "negative min-ratio": (["circuits", "--min-ratio", "-1"], ["argument --min-ratio", "> 0"]),
    "infinite min-ratio": (["circuits", "--min-ratio", "inf"], ["argument --min-ratio", "finite"]),
    "unknown mode": (["circuits", "--mode", "X"], ["argument --mode", "Q, K, V", "'X'"]),
    "unknown writer role": (
        ["circuits", "--writer-role", "writer"],
        ["argument --writer-role", "previous_token, duplicate_token, induction"],
    ),
    "unknown reader role": (["circuits", "--reader-role", "nope"], ["argument --reader-role", "induction"]),
    "layers 0": (
        ["flow", "--prompt", "a b", "--src", "a", "--dst", "b", "--layers", "0"],
        ["argument --layers", "positive int", "'all'"],
    ),
    "layers not a number": (
        ["flow", "--prompt", "a b", "--src", "a", "--dst", "b", "--layers", "many"],
        ["argument --layers", "'all'", "'many'"],
    ),
    "flow without src and dst": (["flow", "--prompt", "hi"], ["required: --src, --dst"]),
    "unknown flow method": (
        ["flow", "--prompt", "a b", "--src", "a", "--dst", "b", "--method", "magic"],
        ["argument --method", "attribution", "integrated", "routes"],
    ),
    "steps 0": (
        ["flow", "--prompt", "a b", "--src", "a", "--dst", "b", "--method", "integrated", "--steps", "0"],
        ["argument --steps", "positive int"],
    ),
    "pos not an int": (["attribute", "--prompt", "hi", "--pos", "last"], ["argument --pos", "an int"]),
    "report src without prompt": (
        ["report", "--out", "{tmp}/r.html", "--src", "nope"],
        ["--src and --dst need --prompt", "got --src without it"],
    ),
    "report dst without prompt": (["report", "--out", "{tmp}/r.html", "--dst", "x"], ["need --prompt", "--dst"]),
    "report src and dst without prompt": (
        ["report", "--out", "{tmp}/r.html", "--src", "a", "--dst", "b"],
        ["--src and --dst need --prompt"],
    ),
    "report into a missing folder": (["report", "--out", "{tmp}/missing/r.html"], ["argument --out", "does not exist"]),
    "report onto a folder": (["report", "--out", "{tmp}"], ["argument --out", "is a folder"]),
    "unknown family": (["summary", "bert"], ["unknown family 'bert'", "gpt2"]),
    "no experiment store": (
        ["experiments", "show", "writers", "--save-dir", "{tmp}/nothing"],
        ["no experiment store in", "nothing"],
    ),
    "export into a missing folder": (
        ["experiments", "export", "writers", "--out", "{tmp}/missing/w.jsonl"],
        ["argument --out", "does not exist"],
    ),
}


@pytest.mark.parametrize(("argv", "words"), ARGUMENT_ERRORS.values(), ids=ARGUMENT_ERRORS.keys())
def test_argument_errors_exit_2_with_one_line_before_any_model_loads(argv, words, capsys, tmp_path, no_loading):
    line = one_error_line(capsys, [arg.replace("{tmp}", str(tmp_path)) for arg in argv])
    for word in words:
        assert word in line, line


# -- model files that are missing or unreadable ---------------------------------------------------


def tiny_folder(path: Path, **config_changes) -> Path:
    """A tiny saved llama (config.json + model.safetensors), its config changed as asked (None
    removes a key)."""
    path.mkdir(parents=True)
    disk_cache.save_converted(shared("llama").hf_model, None, path)
    config = json.loads((path / "config.json").read_text()) | config_changes
    (path / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return path


def corrupt_gguf(path: Path) -> Path:
    """The embedded model's GGUF file cut after 3 MB: a valid header, a truncated body."""
    with open(packaged.embedded_model_path(), "rb") as f:
        path.write_bytes(f.read(3 << 20))
    return path


def make_model(kind: str, tmp_path: Path) -> Path:
    if kind == "missing":
        return tmp_path / "nonexistent"
    if kind == "text file":
        (tmp_path / "notes.txt").write_text("not a model")
        return tmp_path / "notes.txt"
    if kind == "empty folder":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty"
    if kind == "folder with a gguf":
        (tmp_path / "g").mkdir()
        (tmp_path / "g" / "m.gguf").write_bytes(b"GGUF")
        return tmp_path / "g"
    if kind == "not a gguf":
        (tmp_path / "m.gguf").write_text("hello")
        return tmp_path / "m.gguf"
    if kind == "corrupt gguf":
        return corrupt_gguf(tmp_path / "cut.gguf")
    if kind == "no model_type":
        return tiny_folder(tmp_path / "untyped", model_type=None)
    if kind == "unknown model_type":
        return tiny_folder(tmp_path / "mamba", model_type="mamba_xyz")
    if kind == "weights of other shapes":
        return tiny_folder(tmp_path / "wide", hidden_size=128)
    folder = tiny_folder(tmp_path / "model")
    if kind == "config not json":
        (folder / "config.json").write_text("{not json")
    elif kind == "truncated safetensors":
        weights = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    else:
        raise AssertionError(f"no model file of kind {kind!r}")
    return folder


MODEL_ERRORS = {
    "missing": ["no model at", "nonexistent", "local files only"],
    "text file": ["cannot read model file", "notes.txt", "not a model arrakis reads", ".gguf"],
    "empty folder": ["no config.json in", "empty", "found: nothing"],
    "folder with a gguf": ["no config.json in", "pass the file itself", "m.gguf"],
    "not a gguf": ["cannot read model file", "m.gguf", "not a GGUF file"],
    "corrupt gguf": ["cannot read model file", "cut.gguf", "GGUF", "truncated or corrupt"],
    "config not json": ["cannot read model file", "config.json", "not valid JSON"],
    "no model_type": ["cannot read model file", "config.json", "names no model_type", "'llama'"],
    "unknown model_type": ["config.json", "unsupported model family 'mamba_xyz'", "arrakis supports: gpt2"],
    "truncated safetensors": ["cannot read model file", "model.safetensors", "truncated or corrupt"],
    "weights of other shapes": ["cannot read model file", "model.safetensors", "shapes its config.json gives"],
}


@pytest.mark.parametrize(("kind", "words"), MODEL_ERRORS.items(), ids=MODEL_ERRORS.keys())
def test_a_model_that_cannot_be_read_exits_2_with_one_line(kind, words, capsys, tmp_path, cache):
    line = one_error_line(capsys, ["heads", "--model", str(make_model(kind, tmp_path))])
    for word in words:
        assert word in line, line
    assert not list(cache.rglob("*.safetensors"))  # nothing converted was cached


def test_a_corrupt_gguf_raises_a_load_error_naming_it_and_is_never_cached(tmp_path, cache):
    path = corrupt_gguf(tmp_path / "cut.gguf")
    with pytest.raises(ModelLoadError, match=r"cannot read model file .*cut\.gguf: the GGUF .* truncated or corrupt"):
        load_model(path)
    assert issubclass(ModelLoadError, ValueError)
    assert list((cache / "gguf").iterdir()) == []  # no entry, and no temporary folder left behind
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_model(make_model("not a gguf", tmp_path))


@pytest.mark.slow
def test_a_gguf_whose_body_is_garbage_is_refused_not_cached(tmp_path, cache):
    """GGUF has no checksum: a body of random bytes dequantises, into weights that are not finite."""
    source = packaged.embedded_model_path()
    path = tmp_path / "garbage.gguf"
    with open(source, "rb") as f:
        header = f.read(2 << 20)  # the metadata and the tensor table, and then some
    path.write_bytes(header + random.Random(0).randbytes(source.stat().st_size - len(header)))
    with pytest.raises(ModelLoadError, match=r"garbage\.gguf: the GGUF body is corrupt \(its weight .* not finite"):
        load_model(path)
    assert list((cache / "gguf").iterdir()) == []


def test_unreadable_folders_raise_load_errors_naming_the_file(tmp_path):
    with pytest.raises(ModelLoadError, match=r"cannot read model file .*config\.json: it is not valid JSON"):
        load_model(make_model("config not json", tmp_path))
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: it is truncated or corrupt"):
        load_model(make_model("truncated safetensors", tmp_path / "t"))
    with pytest.raises(ModelLoadError, match=r"notes\.txt: it is not a model arrakis reads"):
        load_model(make_model("text file", tmp_path))


def test_an_unknown_model_type_gets_the_supported_families_not_transformers_advice(tmp_path):
    folder = make_model("unknown model_type", tmp_path)
    with pytest.raises(UnsupportedArchitectureError) as info:
        load_model(folder)
    message = str(info.value)
    assert str(folder / "config.json") in message
    assert "unsupported model family 'mamba_xyz'; arrakis supports: gpt2 (model_type 'gpt2')" in message
    assert "Transformers" not in message
    with pytest.raises(UnsupportedArchitectureError, match="unsupported model family 'mamba_xyz'"):
        HookedAutoModel.from_pretrained(folder, weights_only=True)  # the streamed path says the same
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        HookedAutoModel.from_pretrained(make_model("config not json", tmp_path / "j"), weights_only=True)


def test_a_missing_model_is_still_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no model at"):
        load_model(tmp_path / "nonexistent")


# -- errors that need the model: checked right after it loads, before any analysis ----------------


def word_tokenizer(n: int = 512) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over "w0 ... w{n-1}" (nothing downloaded)."""
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(n)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", bos_token="w1", eos_token="w2")


@pytest.fixture
def tiny_model(monkeypatch) -> HookedAutoModel:
    """``load_model`` returns a tiny two-layer llama with a word tokenizer; analyses fail the test."""
    model = HookedAutoModel.from_hf(shared("llama").hf_model, tokenizer=word_tokenizer())
    monkeypatch.setattr(commands, "load_model", lambda *args, **kwargs: model)

    def analysis(*args, **kwargs):
        raise AssertionError("an analysis ran")

    monkeypatch.setattr(commands, "heads_table", analysis)
    monkeypatch.setattr("arrakis.report.Report.save", analysis)
    monkeypatch.setattr(commands.WriteReadAnalyzer, "logit_attribution", analysis)
    return model


AFTER_LOADING = {
    "layer beyond the model": (["heads", "--layer", "2"], ["argument --layer: 2 is out of range", "2 layers", "0..1"]),
    "layers beyond the model": (
        ["flow", "--prompt", "w3 w4 w5", "--src", "w3", "--dst", "w5", "--layers", "3"],
        ["argument --layers", "this model has 2 layers", "1..2 or 'all'"],
    ),
    "flow src not in the prompt": (
        ["flow", "--prompt", "w3 w4 w5", "--src", "w9", "--dst", "w5"],
        ["src_token 'w9'", "does not occur before dst"],
    ),
    "flow dst not in the prompt": (
        ["flow", "--prompt", "w3 w4 w5", "--src", "w3", "--dst", "w9"],
        ["dst_token 'w9'", "does not occur in the prompt"],
    ),
    "report src not in the prompt": (
        ["report", "--out", "{tmp}/r.html", "--prompt", "w3 w4 w5", "--src", "w9", "--dst", "w5"],
        ["src_token 'w9'", "does not occur before dst"],
    ),
    "report dst not in the prompt": (
        ["report", "--out", "{tmp}/r.html", "--prompt", "w3 w4 w5", "--dst", "w9"],
        ["dst_token 'w9'", "does not occur in the prompt"],
    ),
    "attribute pos beyond the prompt": (
        ["attribute", "--prompt", "w3 w4 w5", "--pos", "9"],
        ["pos 9 is out of range", "3 positions"],
    ),
}


@pytest.mark.parametrize(("argv", "words"), AFTER_LOADING.values(), ids=AFTER_LOADING.keys())
def test_errors_that_need_the_model_are_caught_before_the_analysis(argv, words, capsys, tmp_path, tiny_model):
    line = one_error_line(capsys, [arg.replace("{tmp}", str(tmp_path)) for arg in argv])
    for word in words:
        assert word in line, line


def test_an_internal_bug_still_shows_its_traceback(monkeypatch):
    def bug(*args, **kwargs):
        raise RuntimeError("a bug in arrakis")

    monkeypatch.setattr(commands, "load_model", bug)
    with pytest.raises(RuntimeError, match="a bug in arrakis"):
        main(["heads"])


# -- as a user sees it: the real console script ---------------------------------------------------


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    return subprocess.run([str(ARRAKIS), *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("case", ["corrupt gguf", "unknown option"])
def test_the_console_script_exits_2_with_one_line(case, tmp_path):
    if case == "corrupt gguf":
        path = corrupt_gguf(tmp_path / "cut.gguf")
        result = run("heads", "--model", str(path), env={disk_cache.CACHE_ENV: str(tmp_path / "cache")})
        words = ["cannot read model file", str(path), "truncated or corrupt"]
        assert not any((tmp_path / "cache").rglob("*.safetensors"))
    else:
        result = run("--bogus")
        words = ["unrecognized arguments: --bogus", "models", "heads"]
    assert result.returncode == 2 and result.stdout == "", result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("arrakis: error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


LIGHT = """
import sys
from arrakis.cli import main
code = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "transformers", "arrakis.models", "arrakis.cli.commands") if m in sys.modules)
print("EXIT", code, "LOADED", heavy)
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--bogus"],
        [],
        ["heads", "--threshold", "1.5"],
        ["circuits", "--top-k", "-1"],
        ["report", "--out", "r.html", "--src", "nope"],
        ["heads", "--bogus"],
    ],
)
def test_argument_errors_are_refused_before_torch_loads(argv, tmp_path):
    """The arguments are checked with the standard library alone (a fraction of a second):
    neither torch, transformers nor the models are imported to refuse them."""
    result = subprocess.run(
        [sys.executable, "-c", LIGHT, *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert "EXIT 2 LOADED []" in result.stdout, (result.stdout, result.stderr)
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("arrakis: error: "), result.stderr


def test_the_command_lines_names_are_the_librarys():
    from arrakis.circuits.composition import MODES
    from arrakis.circuits.roles import ROLES

    assert (cli.MODES, cli.ROLES) == (tuple(MODES), tuple(ROLES))
