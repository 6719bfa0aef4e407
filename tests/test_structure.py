"""The shape of the code (docs/architecture.md), checked by reading the source with ``ast``:

- every module under ``arrakis/`` is short enough to read in one sitting (at most 400 lines);
- the modules import each other without a circle, counting imports at module level, inside
  functions and under ``TYPE_CHECKING`` alike. The one circle allowed: a result draws itself
  (``arrakis.tools.results`` imports ``arrakis.viz`` lazily, inside ``plot``) and the plots
  name the result types for type checking;
- no module reaches into another's private names: no ``from x import _name``, no
  ``module._name`` or ``obj._name`` on anything but ``self``/``cls`` (apart from a short,
  explained list of names that belong to torch, transformers or Python's protocols);
- nothing in the code, the tests or the README points to a file the repository does not
  hold, and every anchor named after a docs file (``#composition``) is a heading there.

Each check is also run on a small broken example, so that it is known to fail when it should.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "arrakis"
MAX_LINES = 400

# Private names of other libraries that the code has to touch, each with why.
FOREIGN_PRIVATE = {
    "_attn_implementation",  # transformers' config field for the attention kernel (no public getter)
    "_version",  # torch's in-place version counter of a tensor: how the weight cache sees in-place edits
    "_repr_html_",  # IPython's display protocol: a public method whose name starts with _
    "_forward_hooks",  # torch keeps hooks there; tests check that none is left behind
    "_forward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_make_subclass",  # torch's documented way to make a Tensor subclass share a tensor's storage
    "_C",  # torch._C.DisableTorchFunctionSubclass, the idiom torch's docs give for __torch_function__
}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, known: set[str]) -> list[tuple[str, bool]]:
    """(imported arrakis module, whether it is a lazy import inside a function) of one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((alias.name, inner) for alias in child.names if alias.name.startswith("arrakis"))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                if not base.startswith("arrakis"):
                    continue
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    found.append((sub if sub in known else base, inner))
            visit(child, inner)

    visit(tree, False)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the arrakis modules it imports, without the lazy plot imports of results."""
    known = {module_name(p) for p in modules()}
    graph: dict[str, set[str]] = {}
    for path in modules():
        this = module_name(path)
        targets = set()
        for target, lazy in imports(path, known):
            if lazy and this.startswith("arrakis.tools.results") and target.startswith("arrakis.viz"):
                continue  # a result draws itself when asked: the allowed circle
            if target != this and target in known:
                targets.add(target)
        graph[this] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph``, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def private_uses(source: str) -> list[tuple[int, str]]:
    """(line, name) of every reach into another module's or object's private name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("_") and a.name != "__version__"]
        elif isinstance(node, ast.Attribute):
            name = node.attr
            if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if name not in FOREIGN_PRIVATE:
                found.append((node.lineno, name))
    return found


# -- module length --------------------------------------------------------------------------


def test_every_module_is_short_enough_to_read_in_one_sitting() -> None:
    long = {str(p.relative_to(ROOT)): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


# -- import circles -------------------------------------------------------------------------


def test_no_import_circle_except_the_lazy_plot_imports_of_results() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_circle_and_the_graph_is_real() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    graph = import_graph()  # the graph is not empty: tools import the models
    assert any(t.startswith("arrakis.models") for t in graph["arrakis.tools.write_read"])


def test_imports_under_type_checking_and_relative_imports_are_read(tmp_path: Path) -> None:
    pkg = tmp_path / "arrakis" / "demo"
    pkg.mkdir(parents=True)
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from arrakis.models import x\nfrom . import y\n"
    (pkg / "mod.py").write_text(source)
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = imports(pkg / "mod.py", {"arrakis.demo.y"})
    finally:
        ROOT = saved
    assert ("arrakis.models", False) in found and ("arrakis.demo.y", False) in found


# -- private names ---------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["arrakis", "benchmarks"])
def test_no_private_name_is_used_across_modules(folder: str) -> None:
    uses = {
        str(path.relative_to(ROOT)): found
        for path in sorted((ROOT / folder).rglob("*.py"))
        if (found := private_uses(path.read_text()))
    }
    assert not uses, f"private names reached from outside their module or object: {uses}"


def test_the_private_name_check_catches_each_kind_of_reach() -> None:
    assert private_uses("from arrakis.models.loading import _tokenizer\n") == [(1, "_tokenizer")]
    assert private_uses("model._require_forward()\n") == [(1, "_require_forward")]
    assert private_uses("x = interventions._knockout_hook\n") == [(1, "_knockout_hook")]
    assert private_uses("self._cache = {}\ncls._x = 1\nobj.__class__\n") == []


# -- references to files ----------------------------------------------------------------------

REFERENCE = re.compile(r"(?<![\w/.-])((?:\.\./)*(?:[\w.-]+/)*[\w.-]+\.md)(#[\w-]+)?")
SOURCE_PATH = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)+[\w.-]+\.py)\b")  # a source file named by its path


def anchors(markdown: str) -> set[str]:
    """The GitHub anchors of a markdown file's headings."""
    found = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            title = re.sub(r"[^\w\- ]", "", title)
            found.add(title.replace(" ", "-"))
    return found


def references(text: str) -> list[tuple[str, str | None]]:
    return [(m.group(1), m.group(2)[1:] if m.group(2) else None) for m in REFERENCE.finditer(text)]


def held(ref: str) -> bool:
    """Whether the repository holds the source file ``ref``, a path from its root or from a
    package folder (``adapters/base.py`` in a text about ``arrakis/models``)."""
    return (ROOT / ref).is_file() or any(any((ROOT / top).glob(f"**/{ref}")) for top in ("arrakis", "tests"))


def missing_references(files: list[Path]) -> list[str]:
    missing = []
    for path in files:
        text = path.read_text()
        missing += [
            f"{path.relative_to(ROOT)}: {m.group(1)}" for m in SOURCE_PATH.finditer(text) if not held(m.group(1))
        ]
        for ref, anchor in references(text):
            target = (ROOT / ref) if not ref.startswith("..") else (path.parent / ref)
            if not target.resolve().is_file():
                missing.append(f"{path.relative_to(ROOT)}: {ref}")
            elif anchor is not None and anchor not in anchors(target.read_text()):
                missing.append(f"{path.relative_to(ROOT)}: {ref}#{anchor} (no such heading)")
    return missing


def test_no_reference_to_a_file_the_repository_does_not_hold() -> None:
    files = [*modules(), *sorted((ROOT / "tests").rglob("*.py")), *sorted((ROOT / "benchmarks").rglob("*.py"))]
    files += [ROOT / "README.md", ROOT / "Makefile", *sorted((ROOT / "docs").glob("*.md"))]
    missing = missing_references(files)
    assert not missing, f"references to files or headings that are not in the repository: {missing}"


def test_the_reference_check_finds_missing_files_and_headings(tmp_path: Path) -> None:
    design, maths = "../shared/DESIGN" + ".md", "docs/mathematics" + ".md"  # split: this file is scanned too
    assert references(f"see {design} and {maths}#composition.") == [(design, None), (maths, "composition")]
    assert anchors("# Title\n## Direct logit attribution\n### Q/K norms, post-norms") >= {
        "direct-logit-attribution",
        "qk-norms-post-norms",
    }
    broken = tmp_path / "broken.py"
    gone = "arrakis/models/gone" + ".py"
    broken.write_text(f'"""As {design} says; see README' + f'.md#no-such-heading, {maths}#composition, {gone}."""\n')
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        (tmp_path / "README.md").write_text("# arrakis\n")
        (tmp_path / "docs").mkdir()
        (tmp_path / maths).write_text("## Composition\n")
        found = missing_references([broken])
    finally:
        ROOT = saved
    assert found == [
        f"broken.py: {gone}",
        f"broken.py: {design}",
        "broken.py: README" + ".md#no-such-heading (no such heading)",
    ]
