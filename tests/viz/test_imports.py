"""Importing arrakis, its tools and its plots does not load matplotlib (docs/architecture.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
import torch
import arrakis, arrakis.tools, arrakis.viz, arrakis.viz.html
from arrakis import HookedAutoConfig, HookedAutoModel
from arrakis.tools import WriteReadAnalyzer

tool = WriteReadAnalyzer(HookedAutoModel(HookedAutoConfig("gpt2", n_layers=2, d_model=32, n_heads=2, d_vocab=64)))
html = tool.identify_write_heads(0)._repr_html_() + tool.composition_scores("K")._repr_html_()
assert "<table" in html
loaded = sorted(m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib."))
print("LOADED", loaded)
"""


def test_importing_arrakis_and_rendering_html_does_not_load_matplotlib():
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout, result.stdout


def test_models_do_not_import_the_plots():
    """Not even inside a function (tests/test_import_direction.py checks every import)."""
    for path in (ROOT / "arrakis" / "models").rglob("*.py"):
        top_level = [line for line in path.read_text().splitlines() if line.startswith(("import ", "from "))]
        assert not any("arrakis.viz" in line or "matplotlib" in line for line in top_level), path


def test_the_plots_do_not_import_the_tools():
    """viz draws results; the results' types are imported for type checking only (docs/architecture.md)."""
    for path in (ROOT / "arrakis" / "viz").rglob("*.py"):
        top_level = [line for line in path.read_text().splitlines() if line.startswith(("import ", "from "))]
        assert not any("arrakis.tools" in line for line in top_level), path
