"""Imports follow the data flow and never run back (docs/architecture.md):

    cli, report, bench  ->  tools  ->  circuits math  ->  weights, cache  ->  models and adapters

Every import statement of every module under ``arrakis/`` is read with ``ast``: at module
level ("top": runs on import), inside a function ("lazy": runs when called), or under
``if TYPE_CHECKING:`` ("types": never runs). The rules, per package of the importing module:

- models (with adapters, weights, cache) import nothing of circuits, tools, viz, bench,
  report or the CLI, lazily neither ("models and adapters know nothing of tools, plots or
  the CLI"); types only under TYPE_CHECKING;
- circuits (the mathematics: pure functions on tensors, no model objects) import nothing of
  models, tools, viz, bench, report or the CLI, nor transformers; types only under
  TYPE_CHECKING;
- tasks (prompts with corrupted twins and their metrics: above the models, below the tools)
  import only the models, the progress bars and the lazy loader; models, circuits and viz
  import no tasks;
- tools import nothing of bench, report or the CLI, and plots only lazily (a result draws
  itself when asked: "the library imports matplotlib only when a plot is asked for");
- viz imports nothing of models, tools, bench, report or the CLI, lazily neither; the
  tools' result types only for type checking (under TYPE_CHECKING);
- bench and report import no CLI, and not each other; the CLI may import everything;
- no module imports matplotlib at module level (only under TYPE_CHECKING or lazily);
- ``arrakis.src`` holds compatibility re-exports only: imports and ``__all__``, no code; no
  other module imports it;
- ``arrakis.progress`` (the progress bars, which every layer may use) and ``arrakis.lazy`` (the
  packages' names loaded on first use) import nothing of arrakis;
- the package root (``arrakis/__init__.py``) imports only the models at module level (tools
  and bench load on first use).

A rule the code breaks is kept, and the one module breaking it is marked xfail(strict) with
the reason, so that it stays visible and the mark must go when the code is fixed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "arrakis"

LAYERS = ("models", "circuits", "tasks", "tools", "viz", "bench", "report", "cli", "src", "progress", "lazy")
# package of the importing module -> packages it must not import at run time (top or lazy)
FORBIDDEN = {
    "models": {"circuits", "tasks", "tools", "viz", "bench", "report", "cli", "src"},
    "circuits": {"models", "tasks", "tools", "viz", "bench", "report", "cli", "src"},
    "tasks": {"root", "circuits", "tools", "viz", "bench", "report", "cli", "src"},
    "tools": {"bench", "report", "cli", "src"},
    "viz": {"models", "tasks", "tools", "bench", "report", "cli", "src"},
    "bench": {"report", "cli", "src"},
    "report": {"bench", "cli", "src"},
    "cli": {"src"},
    "root": {"src"},
    "src": set(),
    "progress": {"root", "models", "circuits", "tasks", "tools", "viz", "bench", "report", "cli", "src"},
    "lazy": {"root", "models", "circuits", "tasks", "tools", "viz", "bench", "report", "cli", "src", "progress"},
}
# ... and must not import at module level (lazily is allowed)
FORBIDDEN_AT_TOP = {
    "tools": {"viz"},
    "viz": {"tools"},
    "root": {"circuits", "tasks", "tools", "viz", "bench", "report", "cli"},
}
# third-party modules a package must not import at run time
FORBIDDEN_EXTERNAL = {"circuits": {"transformers"}}

# Known breaches of the rules above, each visible as a strict xfail until the code is fixed.
# (ActivationCache.plot_pattern, models -> viz, was one: the plot now takes a cache instead.)
KNOWN_VIOLATIONS: dict[str, str] = {}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (for `from a import b`, a; b too where it is a module)
    line: int
    kind: str  # "top", "lazy" or "types"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> str | None:
    """models, circuits, tools, viz, bench, report, cli, src or root; None outside arrakis."""
    parts = module.split(".")
    if parts[0] != "arrakis":
        return None
    if len(parts) == 1:
        return "root"
    if parts[1] in ("cli", "__main__"):
        return "cli"
    return parts[1] if parts[1] in LAYERS else f"arrakis.{parts[1]}"


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.module, self.is_package = module, is_package
        self.kinds = ["top"]
        self.found: list[Import] = []

    def _visit_in(self, kind: str, nodes: list[ast.stmt]) -> None:
        self.kinds.append(kind)
        for node in nodes:
            self.visit(node)
        self.kinds.pop()

    def visit_If(self, node: ast.If) -> None:
        if is_type_checking(node.test):
            self._visit_in("types", node.body)
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for decorator in node.decorator_list:
            self.visit(decorator)
        self._visit_in("types" if self.kinds[-1] == "types" else "lazy", node.body)

    visit_AsyncFunctionDef = visit_FunctionDef

    def _add(self, target: str, line: int) -> None:
        self.found.append(Import(self.module, target, line, self.kinds[-1]))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:  # relative: resolve against this module's package
            base = self.module.split(".") if self.is_package else self.module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        self._add(source, node.lineno)
        for alias in node.names:  # `from arrakis import viz` imports the module arrakis.viz
            candidate = f"{source}.{alias.name}"
            if module_file(candidate) is not None:
                self._add(candidate, node.lineno)


def module_file(module: str) -> Path | None:
    if not module.startswith("arrakis"):
        return None
    path = ROOT.joinpath(*module.split("."))
    for found in (path.with_suffix(".py"), path / "__init__.py"):
        if found.exists():
            return found
    return None


def collect() -> dict[str, list[Import]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        collector = Collector(module, path.name == "__init__.py")
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        out[module] = collector.found
    return out


IMPORTS = collect()


def violations(module: str) -> list[str]:
    source = package_of(module)
    found = []
    for imp in IMPORTS[module]:
        if imp.kind == "types":
            continue
        target = package_of(imp.target)
        where = f"{module}:{imp.line} ({imp.kind}) imports {imp.target}"
        if target is not None and target != source:
            if target in FORBIDDEN.get(source, set()):
                found.append(where)
            elif imp.kind == "top" and target in FORBIDDEN_AT_TOP.get(source, set()):
                found.append(where + " at module level")
        top = imp.target.split(".")[0]
        if top in FORBIDDEN_EXTERNAL.get(source, set()):
            found.append(where)
        if top == "matplotlib" and imp.kind == "top":
            found.append(where + " at module level")
    return found


def test_every_module_is_read_and_belongs_to_a_layer():
    assert len(IMPORTS) > 40
    for module in IMPORTS:
        assert package_of(module) in (*LAYERS, "root"), module
    # the collector sees the three kinds: a sanity check on known lines of the code
    kinds = {imp.kind for imports in IMPORTS.values() for imp in imports}
    assert kinds == {"top", "lazy", "types"}


def test_the_collector_tells_the_three_kinds_apart():
    source = """
from typing import TYPE_CHECKING
import arrakis.tools
from . import roles
if TYPE_CHECKING:
    from arrakis.viz import flow
    def f():
        import arrakis.cli
else:
    import arrakis.bench
class C:
    import arrakis.report
    def method(self):
        from ..models import cache
"""
    collector = Collector("arrakis.circuits.flow", is_package=False)
    collector.visit(ast.parse(source))
    got = {(imp.target, imp.kind) for imp in collector.found}
    assert ("arrakis.tools", "top") in got and ("arrakis.circuits.roles", "top") in got
    assert ("arrakis.viz", "types") in got and ("arrakis.viz.flow", "types") in got and ("arrakis.cli", "types") in got
    assert ("arrakis.bench", "top") in got and ("arrakis.report", "top") in got
    assert ("arrakis.models.cache", "lazy") in got


@pytest.mark.parametrize(
    "module",
    [
        pytest.param(m, marks=pytest.mark.xfail(strict=True, reason=KNOWN_VIOLATIONS[m]))
        if m in KNOWN_VIOLATIONS
        else m
        for m in IMPORTS
    ],
)
def test_imports_never_run_back(module):
    assert violations(module) == []


def test_the_circuits_mathematics_imports_only_torch_and_the_standard_library():
    """Pure functions on tensors: no model objects, no Hugging Face, at run time."""
    allowed = {"torch", "math", "tqdm", "__future__", "collections", "typing", "dataclasses", "itertools", "functools"}
    for module, imports in IMPORTS.items():
        if package_of(module) != "circuits":
            continue
        for imp in imports:
            if imp.kind != "types" and not imp.target.startswith(("arrakis.circuits", "arrakis.progress")):
                assert imp.target.split(".")[0] in allowed, f"{module}:{imp.line} imports {imp.target}"


def test_compatibility_paths_only_re_export():
    for path in sorted((PACKAGE / "src").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            exports = isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__all__"]
            plain_import = isinstance(node, ast.Import | ast.ImportFrom)
            assert docstring or exports or plain_import, f"{path.relative_to(ROOT)}:{node.lineno} is code"
            if isinstance(node, ast.ImportFrom):
                assert node.module.startswith("arrakis.") and not node.module.startswith("arrakis.src"), node.module
        exported = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
        if path.name != "__init__.py":
            assert exported, f"{path.relative_to(ROOT)} re-exports nothing"


def test_lazy_imports_across_packages_are_listed():
    """Lazy (in-function) imports between packages, printed for the record. The allowed
    ones: tools' results draw themselves (tools -> viz); viz reads the role names of the
    circuits (viz -> circuits); the CLI runs the report and the bench store."""
    lazy = sorted(
        (imp.module, imp.line, imp.target)
        for imports in IMPORTS.values()
        for imp in imports
        if imp.kind == "lazy"
        and package_of(imp.target) not in (None, package_of(imp.module))
        and not imp.target.startswith("matplotlib")
    )
    allowed = {("tools", "viz"), ("tools", "circuits"), ("viz", "circuits"), ("cli", "report")}
    allowed |= {("cli", "bench"), ("report", "viz")}
    for module, line, target in lazy:
        print(f"lazy: {module}:{line} -> {target}")
        pair = (package_of(module), package_of(target))
        assert pair in allowed or module in KNOWN_VIOLATIONS, f"{module}:{line} -> {target}"


RUNTIME = """
import sys
before = set(sys.modules)
import arrakis.models, arrakis.models.path_patching, arrakis.models.streaming  # noqa
loaded = sorted({m.split(".")[1] for m in sys.modules if m.startswith("arrakis.") and len(m.split(".")) > 1})
print("MODELS", loaded)
base = set(sys.modules)
import arrakis.circuits.attribution, arrakis.circuits.composition, arrakis.circuits.flow  # noqa
import arrakis.circuits.heads, arrakis.circuits.logit_attribution, arrakis.circuits.roles  # noqa
new = sorted(m for m in set(sys.modules) - base if m.startswith(("arrakis", "transformers")))
print("CIRCUITS", new)
"""


def test_at_run_time_models_and_circuits_load_nothing_above_them():
    result = subprocess.run([sys.executable, "-c", RUNTIME], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.startswith(("MODELS", "CIRCUITS")))
    # the models load no other arrakis package, but the progress bars every layer may use (and
    # the package root's loader of names on first use, which runs as arrakis is imported)
    assert ast.literal_eval(lines["MODELS"]) == ["lazy", "models", "progress"]
    circuits = ast.literal_eval(lines["CIRCUITS"])  # what the circuits add: themselves only
    assert circuits and all(m.startswith("arrakis.circuits") for m in circuits), circuits
