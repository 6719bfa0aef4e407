"""The HTML report: self-contained, and it renders in a real headless browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from arrakis.report import Report
from tests.conftest import shared

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def browse(path, tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    command = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, path.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def check_in_browser(path, tmp_path, n_figures: int) -> None:
    dom = browse(path, tmp_path, "--virtual-time-budget=5000", "--dump-dom").stdout
    status = re.search(r'id="figures-status" data-loaded="(\d+)" data-total="(\d+)"', dom)
    assert status, "the page's load script did not run"
    assert int(status.group(1)) == int(status.group(2)) == n_figures  # every figure decoded
    shot = tmp_path / "shot.png"
    browse(path, tmp_path, "--window-size=1200,2400", f"--screenshot={shot}")
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2400, 1200)
    assert pixels[..., :3].std() > 0.05  # not a blank page
    assert (pixels[..., :3].mean(-1) < 0.5).mean() > 0.01  # text and figures are drawn


def test_the_report_is_self_contained_and_renders(tmp_path):
    report = Report(shared("llama"))
    path = report.save(tmp_path / "report.html")
    text = path.read_text()
    assert "http://" not in text and "https://" not in text  # nothing to fetch
    n_figures = text.count("<img class='figure'")
    assert n_figures >= 4 and text.count("data:image/png;base64,") == n_figures
    titles = ("Model", "Write heads", "Head roles", "Composition and circuits", "Information flow", "Task: induction")
    titles += ("Task circuit: induction",)
    for title in titles:  # the task: induction, since the tiny model has no tokenizer for IOI
        assert f"<h2>{title}</h2>" in text
    assert "exact drop" in text and "Note: attribution estimates" in text
    check_in_browser(path, tmp_path, n_figures)
