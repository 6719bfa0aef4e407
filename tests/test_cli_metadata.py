"""The command line answers what needs no model without loading torch: ``arrakis models`` and
``arrakis experiments`` read metadata, and arguments that cannot name a model or a prompt are
refused at parse time. What needs the tokenizer (a token string that is not a token of the
prompt, but would be with a leading space) is refused right after the model loads, with a hint.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from arrakis.cli import catalog, commands, main
from arrakis.models import disk_cache, packaged, supported_families

# Runs the command line in a fresh interpreter, then names the heavy modules it imported.
FRESH = """
import json, sys
from arrakis.cli import main
code = main(sys.argv[1:])
heavy = ("torch", "transformers", "numpy", "arrakis.models", "arrakis.cli.commands")
heavy = sorted(m for m in heavy if m in sys.modules)
print(json.dumps({"exit": code, "heavy": heavy}))
"""


def fresh(*argv: str, cwd) -> tuple[dict, subprocess.CompletedProcess]:
    result = subprocess.run([sys.executable, "-c", FRESH, *argv], capture_output=True, text=True, timeout=120, cwd=cwd)
    return json.loads(result.stdout.splitlines()[-1]), result


@pytest.fixture
def store_dir(tmp_path):
    """A save_dir whose experiment store holds two runs of one experiment."""
    from arrakis.bench.store import ExperimentStore

    store = ExperimentStore(tmp_path / "experiments")
    store.log("writers", {"layer": 3}, {"heads": [1, 2]})
    store.log("writers", {"layer": 4}, {"heads": [0]})
    return tmp_path / "experiments"


# -- metadata commands: answered with the standard library and SQLite ----------------------------


def test_models_answers_without_importing_torch(tmp_path):
    outcome, result = fresh("models", "--json", cwd=tmp_path)
    assert outcome == {"exit": 0, "heavy": []}, result.stderr
    data = json.loads(result.stdout[: result.stdout.rindex("\n{")])
    assert data["families"] == supported_families()  # the same names, in the registry's order
    assert data["embedded"]["path"] == str(packaged.embedded_model_path())


@pytest.mark.parametrize(
    "argv",
    [["experiments", "list"], ["experiments", "list", "writers"], ["experiments", "show", "writers"]],
    ids=["list", "list one", "show"],
)
def test_reading_the_experiment_store_does_not_import_torch(argv, store_dir, tmp_path):
    outcome, result = fresh(*argv, "--save-dir", str(store_dir), cwd=tmp_path)
    assert outcome == {"exit": 0, "heavy": []}, result.stderr
    assert "writers" in result.stdout
    if argv[1] == "list" and len(argv) == 2:
        assert "writers: 2 runs" in result.stdout


# -- the command line's copies of the library's names stay equal to them -------------------------


def test_the_families_read_from_the_adapter_files_are_the_registrys():
    assert catalog.families() == supported_families()
    assert len(set(catalog.families())) == len(catalog.families())


def test_the_packaged_models_and_the_cache_are_the_librarys(monkeypatch, tmp_path):
    for name in (
        "EMBEDDED_PACKAGE",
        "EMBEDDED_FILE",
        "EMBEDDED_NAMES",
        "GEMMA3_PACKAGES",
        "GEMMA3_FILE",
        "GEMMA3_NAMES",
    ):
        assert getattr(catalog, name) == getattr(packaged, name), name
    assert catalog.CACHE_ENV == disk_cache.CACHE_ENV
    assert catalog.embedded_model_path() == packaged.embedded_model_path()
    monkeypatch.setenv(disk_cache.CACHE_ENV, str(tmp_path / "c"))
    assert catalog.cache_dir() == disk_cache.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(disk_cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert catalog.cache_dir() == disk_cache.cache_dir() == tmp_path / "xdg" / "arrakis"


def test_models_reports_a_missing_embedded_package(monkeypatch, capsys):
    monkeypatch.setattr(catalog, "EMBEDDED_PACKAGE", "no_such_package_xyz")
    assert main(["models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["embedded"]["path"].startswith("not installed")


# -- refused at parse time: no model loads, torch is not imported --------------------------------


def refuse(*args, **kwargs):
    raise AssertionError("a model was loaded")


PARSE_ERRORS = {
    "empty flow prompt": (["flow", "--prompt", "", "--src", "a", "--dst", "b"], ["argument --prompt", "''"]),
    "blank flow prompt": (["flow", "--prompt", "  \n", "--src", "a", "--dst", "b"], ["argument --prompt", "some text"]),
    "empty attribute prompt": (["attribute", "--prompt", ""], ["argument --prompt", "some text"]),
    "blank report prompt": (["report", "--out", "{tmp}/r.html", "--prompt", " "], ["argument --prompt", "some text"]),
    "empty src": (["flow", "--prompt", "a b", "--src", "", "--dst", "b"], ["argument --src", "' Paris'"]),
    "empty target": (["flow", "--prompt", "a b", "--src", "a", "--dst", "b", "--target", ""], ["argument --target"]),
    "empty token": (["attribute", "--prompt", "a b", "--token", ""], ["argument --token"]),
    "missing model": (
        ["heads", "--model", "{tmp}/nonexistent"],
        ["argument --model", "no model at", "nonexistent", "local files only", "smollm2", "gemma3-270m"],
    ),
    "missing model of flow": (
        ["flow", "--model", "/nonexistent", "--prompt", "a b", "--src", "a", "--dst", "b"],
        ["argument --model", "no model at '/nonexistent'"],
    ),
    "unknown family": (["summary", "gpt2", "bert"], ["unknown family 'bert'", "gpt2", "llama"]),
}


@pytest.mark.parametrize(("argv", "words"), PARSE_ERRORS.values(), ids=PARSE_ERRORS.keys())
def test_bad_prompts_and_models_are_refused_before_any_model_loads(argv, words, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(commands, "load_model", refuse)
    assert main([arg.replace("{tmp}", str(tmp_path)) for arg in argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("arrakis: error: "), err
    for word in words:
        assert word in err, err


@pytest.mark.parametrize(
    "argv",
    [["flow", "--prompt", "", "--src", "a", "--dst", "b"], ["heads", "--model", "/nonexistent"], ["summary", "bert"]],
    ids=["empty prompt", "missing model", "unknown family"],
)
def test_bad_prompts_and_models_are_refused_without_importing_torch(argv, tmp_path):
    outcome, result = fresh(*argv, cwd=tmp_path)
    assert outcome == {"exit": 2, "heavy": []}, result.stderr
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("arrakis: error: "), result.stderr


def test_packaged_names_and_existing_paths_pass_the_model_check(monkeypatch, tmp_path):
    from arrakis.cli import parse

    for name in (*packaged.EMBEDDED_NAMES, *packaged.GEMMA3_NAMES, "Default", "GEMMA3-270M", str(tmp_path)):
        assert parse(["heads", "--model", name]).model == name
    assert parse(["heads"]).model is None


# -- a token string that would be a token of the prompt with a leading space ----------------------


@pytest.fixture(scope="module")
def embedded():
    from arrakis import load_model

    return load_model()


HINTS = {
    "src without its space": (
        ["flow", "--src", "Alice", "--dst", " to"],
        "argument --src: 'Alice' is not a token of the prompt; did you mean ' Alice' (with its leading space)?",
    ),
    "dst with a space too many": (
        ["flow", "--src", " Alice", "--dst", " When"],
        "argument --dst: ' When' is not a token of the prompt; did you mean 'When' (without its spaces)?",
    ),
    "target of two tokens": (
        ["flow", "--src", " Alice", "--dst", " to", "--target", "Tokyo"],
        "argument --target: 'Tokyo' is 2 tokens; did you mean ' Tokyo' (with its leading space)?",
    ),
    "report src": (
        ["report", "--out", "{tmp}/r.html", "--src", "Alice", "--dst", " to"],
        "argument --src: 'Alice' is not a token of the prompt; did you mean ' Alice'",
    ),
    "attribute token": (
        ["attribute", "--token", "drink"],
        "argument --token: 'drink' is 2 tokens; did you mean ' drink' (with its leading space)?",
    ),
}
PROMPT = "When Alice and Bob went to the store, Bob gave a drink to"


@pytest.mark.slow
@pytest.mark.parametrize(("argv", "line"), HINTS.values(), ids=HINTS.keys())
def test_a_token_missing_its_leading_space_gets_a_hint(argv, line, embedded, capsys, monkeypatch, tmp_path):
    def analysis(*args, **kwargs):
        raise AssertionError("an analysis ran")

    monkeypatch.setattr(commands, "load_model", lambda *args, **kwargs: embedded)
    monkeypatch.setattr(commands.WriteReadAnalyzer, "trace_information_flow", analysis)
    monkeypatch.setattr(commands.WriteReadAnalyzer, "logit_attribution", analysis)
    monkeypatch.setattr("arrakis.report.Report.save", analysis)
    argv = [argv[0], "--prompt", PROMPT, *(arg.replace("{tmp}", str(tmp_path)) for arg in argv[1:])]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "", out
    assert err.startswith(f"arrakis: error: {line}") and len(err.splitlines()) == 1, err


@pytest.mark.slow
def test_the_spelling_the_prompt_has_passes_the_check(embedded):
    ids = embedded.to_tokens(PROMPT)
    commands.check_token_strings(embedded, ids, {"--src": " Alice", "--dst": " to"}, {"--target": " Tokyo"})
    commands.check_token_strings(embedded, ids, {"--dst": "When"}, {"--foil": "Paris"})
