"""Every ```python block of README.md runs as written, top to bottom in one namespace (as a
user pasting them into one session would), on the embedded SmolLM2 where a block loads it;
then the numbers the README quotes in its comments and prose are checked against what ran.

Slow (the blocks load the embedded model and path-patch the induction circuit: about 30 s on
two idle cores once the converted weights are cached, a first run adds the ~20 s conversion),
but run in CI like tests/test_embedded_model.py.
"""

from __future__ import annotations

import ast
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")  # a block that plots never opens a window

import pytest
import torch

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"


@dataclass
class Block:
    index: int
    line: int  # the README line of the block's first line of code (1-based)
    source: str

    @property
    def title(self) -> str:
        first = next((line for line in self.source.splitlines() if line.strip()), "")
        return f"README.md block {self.index} (line {self.line}: {first.strip()!r})"


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks, in order: an opening fence line, then everything up to the next
    line that is a bare closing fence."""
    blocks = []
    for match in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, re.S | re.M):
        line = text.count("\n", 0, match.start(1)) + 1
        blocks.append(Block(len(blocks), line, match.group(1)))
    return blocks


def fence_counts(text: str) -> tuple[int, int]:
    """Counted line by line, independently of ``python_blocks``: fences that open a Python
    block (```python, ```py, ```Python3, ...: any of them the extractor would have to run),
    and all fence lines."""
    fences = [line.strip() for line in text.splitlines() if line.lstrip().startswith("```")]
    python = [f for f in fences if re.fullmatch(r"```\s*py(thon)?3?\b.*", f, re.I)]
    return len(python), len(fences)


TEXT = README.read_text(encoding="utf-8")
BLOCKS = python_blocks(TEXT)


def test_the_readme_has_python_blocks_and_every_one_is_extracted():
    n_python, n_fences = fence_counts(TEXT)
    assert n_python > 0, "README.md has no ```python block"
    assert n_fences % 2 == 0, f"README.md has {n_fences} fence lines: one is not closed"
    assert len(BLOCKS) == n_python, (
        f"{n_python} Python fences in README.md but {len(BLOCKS)} blocks extracted: "
        "a fence is malformed (write ```python, and close it with a bare ```)"
    )
    assert all(block.source.strip() for block in BLOCKS), "an empty ```python block"


@dataclass
class Session:
    """One namespace for all the blocks; ``snapshots[i]`` is the namespace after block i."""

    namespace: dict[str, Any] = field(default_factory=lambda: {"__name__": "__readme__"})
    snapshots: dict[int, dict[str, Any]] = field(default_factory=dict)
    failed: Block | None = None

    def run_through(self, index: int) -> dict[str, Any]:
        """Run every block up to ``index`` not run yet, in order (so a block selected alone
        still sees what the blocks before it defined); the namespace after block ``index``."""
        for block in BLOCKS[: index + 1]:
            if block.index in self.snapshots:
                continue
            if self.failed is not None:
                pytest.fail(f"{BLOCKS[index].title} not run: {self.failed.title} failed before it")
            try:
                # padded to its place in README.md, so that tracebacks and syntax errors name its lines
                padded = "\n" * (block.line - 1) + block.source
                exec(compile(padded, str(README), "exec"), self.namespace)
            except Exception as err:
                self.failed = block
                raise AssertionError(f"{block.title} raised {type(err).__name__}: {err}") from err
            self.snapshots[block.index] = dict(self.namespace)
        return self.snapshots[index]

    def after_first(self, name: str) -> dict[str, Any]:
        """The namespace after the first block that assigns ``name`` at its top level."""
        for block in BLOCKS:
            if name in assigned_names(block.source):
                return self.run_through(block.index)
        pytest.fail(f"no README block assigns {name!r} any more: update this test with the README")


def assigned_names(source: str) -> set[str]:
    """The names a block's top-level statements assign (``a = ...``, ``a, b = ...``)."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """The blocks run in a scratch folder (a bench's save_dir, tempfile.mkdtemp() land there);
    the folder and tempfile's default are restored afterwards."""
    scratch = tmp_path_factory.mktemp("readme")
    previous_dir, previous_tempdir = Path.cwd(), tempfile.tempdir
    os.chdir(scratch)
    tempfile.tempdir = str(scratch)
    try:
        yield Session()
    finally:
        os.chdir(previous_dir)
        tempfile.tempdir = previous_tempdir


@pytest.mark.parametrize("index", [block.index for block in BLOCKS], ids=[f"block{b.index}" for b in BLOCKS])
def test_block_runs(session, index):
    session.run_through(index)


# -- what the README says the blocks give (on the embedded SmolLM2-135M-Instruct) -------------
# The head indices and numbers below are regression pins of what the README quotes: they
# catch a README gone stale, not an error in the library. What makes those numbers right is
# checked independently in tests/test_embedded_model.py (Hugging Face's forward pass, exact
# knockouts, a hand computation of L29H0's attribution, path patching against random
# pairs); here, "they add up" and "as if alone" are real checks.


def test_the_prompt_splits_as_quoted(session):
    ns = session.after_first("ids")
    assert ns["model"].to_str_tokens(ns["ids"]) == ["The", " capital", " of", " France", " is"]


def test_write_heads_and_the_induction_circuit(session):
    ns = session.after_first("circuit")
    write_read = ns["write_read"]
    assert ns["model"].cfg.n_layers == 30, "these blocks run on the embedded model"
    layer0 = write_read.identify_write_heads(0)  # the weights: "[(0, 2), (0, 6), ...]: 80% of layer 0's writing"
    assert list(layer0[:2]) == [(0, 2), (0, 6)]
    assert layer0.covered() >= 0.8
    circuit = ns["circuit"]  # "move their readers 266x-5600x the null"; summary: how many held
    ratios = [edge.ratio_to_null for edge in circuit]
    assert len(circuit) > 0 and all(r is not None and r > 3 for r in ratios)
    assert len(circuit) == 4 and "4 of 4 edges move their reader > 3x" in circuit.summary()
    assert min(ratios) == pytest.approx(266, rel=0.1) and max(ratios) == pytest.approx(5600, rel=0.1)


def test_logit_attribution_of_paris(session):
    ns = session.after_first("paris")
    paris = ns["paris"]
    assert paris.writers[:3] == [(23, 4), (29, 1), (29, 2)]
    assert paris.suppressors[:1] == [(29, 0)]
    assert paris.heads[29, 0].item() == pytest.approx(-1.61, abs=0.005)
    assert paris.total == pytest.approx(paris.logit, abs=1e-3)  # "they add up"
    assert paris.logit == pytest.approx(17.371, abs=0.0005)
    layer29 = ns["write_read"].identify_write_heads(29, input_ids=ns["ids"], token=" Paris")
    assert set(layer29) <= set(paris.writers)
    assert (29, 0) in layer29.extra["suppressors"]


def test_information_flow_from_mary(session):
    ns = session.after_first("flow")  # the first flow block, on the name-mover prompt alone
    flow = ns["flow"]
    assert flow.metric["target_str"] == " Mary"  # the clean top prediction
    assert flow.top_heads[:3] == [(23, 0), (28, 1), (23, 5)]
    assert flow.suppressors[:1] == [(24, 4)]
    route = re.fullmatch(r"1 -L23H0-> 13 \(([0-9.]+)\)", flow.paths[0].describe())
    assert route is not None, flow.paths[0].describe()
    assert float(route.group(1)) == pytest.approx(0.0374, abs=0.0005)
    assert flow.verification is not None


def test_a_padded_batch_runs_each_prompt_as_if_alone(session):
    ns = session.after_first("mask")
    model, ids, mask = ns["model"], ns["ids"], ns["mask"].bool()
    assert not mask.all(), "the batch's prompts should differ in length, so that one is padded"
    batched = ns["output"].logits  # "each prompt as if it ran alone"
    for row in range(ids.shape[0]):
        alone = model(ids[row : row + 1, mask[row]])[0].logits[0]
        torch.testing.assert_close(batched[row, mask[row]], alone, atol=1e-4, rtol=1e-4)
    alone_flow = session.after_first("flow")["flow"]
    assert ns["flow"].top_heads == alone_flow.top_heads  # the batched trace (batch_index=1)


def test_the_ioi_task_circuit(session):
    ns = session.after_first("ioi_circuit")
    circuit = ns["ioi_circuit"]
    assert [edge.name for edge in circuit.top_edges(3)] == ["L23H3 -> logits", "MLP0 -> L23KV1 (V)", "L24H4 -> logits"]
    small, large = circuit.faithfulness([1000, 10000])
    assert small == pytest.approx(0.58, abs=0.01) and large == pytest.approx(0.93, abs=0.01)
    assert circuit.faithfulness(0) == pytest.approx(0.0, abs=1e-4)  # every edge patched: the corrupted run
    assert circuit.faithfulness(circuit.n_edges) == pytest.approx(1.0, abs=1e-4)  # none: the clean run
    checked = circuit.verify(5)  # a real check: the exact single-edge runs agree with the estimates
    assert checked.spearman > 0.9 and checked.largest_error < 0.1
    readers = [name for name, _ in circuit.readers("L24H4")["L24H4"]["q"][:2]]
    assert readers == ["L23H3", "L23H0"]
