"""The on-disk cache of converted weights.

GGUF files are dequantised by transformers, which takes tens of seconds, so the converted
weights are kept on disk, keyed by the file's content hash:

    $ARRAKIS_CACHE_DIR (default: $XDG_CACHE_HOME/arrakis or ~/.cache/arrakis)
      gguf/<sha256 of the .gguf file>/
        config.json  model.safetensors  tokenizer files  manifest.json

``manifest.json`` is written last and lists the sha256 of every other file; an entry whose
manifest is missing or whose files do not match it (an interrupted or corrupted write) is
rebuilt, never used. Entries are built in a temporary folder and renamed into place, so a
reader never sees half an entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CACHE_ENV = "ARRAKIS_CACHE_DIR"
MANIFEST = "manifest.json"
CACHE_FORMAT = 1  # bump when the layout of an entry changes


def cache_dir() -> Path:
    """Where converted weights are kept: $ARRAKIS_CACHE_DIR, else the user cache folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "arrakis"


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def entry_is_valid(entry: Path) -> bool:
    """True if the entry's manifest exists and every file it lists has its recorded hash."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        files = manifest["files"]
        if manifest.get("format") != CACHE_FORMAT or "model.safetensors" not in files:
            return False
        return all(file_sha256(entry / name) == digest for name, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def cached_entry(key: str, build: Callable[[Path], None], *, kind: str = "gguf", source: str = "") -> Path:
    """The cache folder for ``key``, built by ``build(folder)`` unless a valid one exists.

    ``build`` writes the files into an empty temporary folder; the manifest is added and the
    folder renamed into place only after it returns.
    """
    root = cache_dir() / kind
    entry = root / key
    if entry.exists():
        if entry_is_valid(entry):
            logger.info("using cached weights %s", entry)
            return entry
        logger.warning("cache entry %s is incomplete or corrupt: rebuilding it", entry)
        shutil.rmtree(entry, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        build(tmp)
        files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {"format": CACHE_FORMAT, "source": source, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        try:
            os.replace(tmp, entry)
        except OSError:  # another process finished the same entry first: use theirs
            if not entry_is_valid(entry):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def save_converted(model: Any, tokenizer: Any, folder: Path) -> None:
    """Write a dequantised model (a transformers PreTrainedModel) as a plain Hugging Face
    folder (config + safetensors)."""
    from safetensors.torch import save_model

    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the weights are no longer quantised
    config.pop("_name_or_path", None)
    (folder / "config.json").write_text(json.dumps(config, indent=1, default=str))
    save_model(model, str(folder / "model.safetensors"))  # handles tied embeddings
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
