"""Loading real weights, offline: local Hugging Face folders, safetensors files and GGUF files.

Nothing here reaches a model hub: every path is local, and Hugging Face is called with
``local_files_only=True``. A folder's config.json is read (and its family checked) before any
weights; GGUF files are dequantised by transformers once and kept in the on-disk cache
(``disk_cache``); Gemma 3's multimodal checkpoints are unwrapped to their text model
(``text_model_of``). Which files the packaged model names stand for is ``packaged``'s
concern, what a damaged file is called ``load_errors``'.

Loads are quiet: transformers' "Loading weights" bar and its log lines are silenced for the
duration of a load unless ``progress=True``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Iterator
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
from arrakis.models.disk_cache import cached_entry, file_sha256, save_converted
from arrakis.models.load_errors import (
    ModelLoadError,
    ModelNotFoundError,
    check_device,
    check_dtype,
    check_path,
    loading_weights,
    reading,
)

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"


@contextmanager
def transformers_output(progress: bool) -> Iterator[None]:
    """With ``progress=False``, transformers' and huggingface_hub's progress bars are off and
    transformers logs errors only, for the duration of the block; the previous state is
    restored afterwards, also when the block raises."""
    if progress:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from transformers import modeling_gguf_pytorch_utils as gguf_reader
    from transformers.utils import logging as hf_logging

    bars, hub_bars_off, verbosity = (
        hf_logging.is_progress_bar_enabled(),
        are_progress_bars_disabled(),
        hf_logging.get_verbosity(),
    )
    gguf_bar = gguf_reader.tqdm  # the GGUF reader's bar is plain tqdm, deaf to the switch above
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    gguf_reader.tqdm = functools.partial(gguf_bar, disable=True)
    try:
        yield
    finally:
        gguf_reader.tqdm = gguf_bar
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()  # also turns huggingface_hub's on
        if hub_bars_off:
            disable_progress_bars()


@contextmanager
def one_gguf_parse() -> Iterator[None]:
    """Within the block, every ``gguf.GGUFReader`` of one file is the same reader.

    transformers parses a GGUF file afresh for its config, its tokenizer, the model's config
    and its weights. Parsing is the slow part of a conversion, not dequantising: the tokenizer's
    vocabulary is read one string at a time (262,144 of them for Gemma 3, about 25 s a parse on
    2 cores, against 4 s to dequantise every weight), and most of that is numpy's memmap
    subclass wrapping each small slice. So the reader here parses once, and slices a plain
    ndarray view of the same mapped memory (no copy). It is read-only, so sharing it changes
    nothing but the time. ``gguf.GGUFReader`` is restored afterwards, also when the block raises.
    """
    import gguf

    original, readers = gguf.GGUFReader, {}

    class PlainReader(original):
        @property
        def data(self) -> np.ndarray:
            return self._plain

        @data.setter
        def data(self, value: np.ndarray) -> None:
            self._plain = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    def reader(path: Any, mode: str = "r") -> Any:
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = PlainReader(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def check_family(model_type: str, source: Path) -> None:
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
    with reading(config_file, "it cannot be opened"):
        text = config_file.read_bytes()
    with reading(config_file, "it is not valid JSON"):
        config = json.loads(text)
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(model_type, str) or not model_type:
        types = ", ".join(repr(adapter.model_type) for adapter in ADAPTERS.values())
        raise ModelLoadError(
            f"cannot read model file {config_file}: it names no model_type; arrakis supports the model types {types}"
        )
    check_family(model_type, config_file)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def tokenizer_at(folder: Path, **kwargs: Any) -> Any:
    """The tokenizer saved in ``folder`` beside the weights (or inside the GGUF file named by
    ``gguf_file=``), else None: prompts must then be token ids."""
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
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: Any = None,
    device_map: Any = None,
    progress: bool = False,
) -> tuple[PreTrainedModel, Any]:
    """A Hugging Face causal LM and its tokenizer (or None) from a local folder or a
    ``.safetensors`` file whose folder holds ``config.json``."""
    path, dtype, device = check_path(path), check_dtype(dtype), check_device(device)
    folder = path.parent if path.is_file() and path.suffix == ".safetensors" else path
    if not path.exists():
        raise ModelNotFoundError(
            f"no model at {str(path)!r}: looked for a local folder with config.json, a .safetensors "
            "file or a .gguf file (arrakis never downloads models)"
        )
    if not folder.is_dir():
        with reading(path, "it cannot be opened"), open(path, "rb") as f:
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
    with (
        loading_weights(source, "it is truncated or corrupt, or does not fit its config.json", folder),
        transformers_output(progress),
    ):
        model = AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, dtype=dtype, attn_implementation="eager", device_map=device_map
        )
    if device is not None and device_map is None:
        model = model.to(device)
    return model, tokenizer_at(folder)


def load_gguf(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: Any = None,
    use_cache: bool = True,
    progress: bool = False,
) -> tuple[PreTrainedModel, Any]:
    """A causal LM and its tokenizer from a GGUF file, through the cache of converted weights."""
    path, dtype, device = check_path(path), check_dtype(dtype), check_device(device)
    if not path.is_file():
        raise ModelNotFoundError(f"no GGUF file at {str(path)!r}")
    with reading(path, "it cannot be opened"), open(path, "rb") as f:
        magic = f.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise ModelLoadError(
            f"cannot read model file {path}: it is not a GGUF file (one starts with the bytes {GGUF_MAGIC!r}, "
            f"this one with {magic!r})"
        )

    def convert() -> tuple[PreTrainedModel, Any]:
        with one_gguf_parse():  # transformers reads the file four times: parse it once
            return dequantised()

    def dequantised() -> tuple[PreTrainedModel, Any]:
        logger.info("dequantising %s (tens of seconds; cached afterwards)", path.name)
        kwargs = {"gguf_file": path.name, "local_files_only": True}
        with reading(path, "the GGUF file is truncated or corrupt"):
            try:
                config = AutoConfig.from_pretrained(path.parent, **kwargs)
            except ValueError as err:
                unknown = re.search(r"architecture (\S+) is not supported", str(err))
                if unknown is None:
                    raise
                check_family(unknown[1], path)  # refuses a family arrakis does not know either
                raise ModelLoadError(
                    f"cannot read model file {path}: transformers cannot convert GGUF files of architecture "
                    f"{unknown[1]!r}; save the model as a Hugging Face folder (config.json and safetensors) instead"
                ) from err
        check_family(config.model_type, path)
        # a corrupt body's NaNs would make numpy warn once per tensor: they are refused below instead
        with loading_weights(path, "the GGUF body is truncated or corrupt"), np.errstate(all="ignore"):
            model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kwargs)
        # GGUF has no checksum: a body overwritten with garbage dequantises, but its fp16 block
        # scales then hold infinities and NaNs, which no trained model has (checked before caching)
        bad = next((name for name, p in model.named_parameters() if not torch.isfinite(p).all()), None)
        if bad is not None:
            raise ModelLoadError(
                f"cannot read model file {path}: the GGUF body is corrupt (its weight {bad} holds values that are "
                "not finite numbers)"
            )
        return model, tokenizer_at(path.parent, gguf_file=path.name)

    if not use_cache:
        with transformers_output(progress):
            model, tokenizer = convert()
        model.set_attn_implementation("eager")
        return model.to(dtype=dtype, device=device), tokenizer

    def build(folder: Path) -> None:
        with transformers_output(progress):
            save_converted(*convert(), folder)

    entry = cached_entry(file_sha256(path), build, source=str(path))
    return load_hf_folder(entry, dtype=dtype, device=device, progress=progress)


def text_model_of(hf_model: PreTrainedModel) -> PreTrainedModel:
    """The causal LM inside a multimodal wrapper (Gemma 3's ``gemma3`` checkpoints hold a
    ``gemma3_text`` language model and its head beside a vision tower): a ``*ForCausalLM``
    sharing those modules, so text-only prompts run exactly as in the wrapper. Other models
    are returned as they are."""
    config = hf_model.config
    inner = getattr(getattr(hf_model, "model", None), "language_model", None)
    text_config = getattr(config, "text_config", None)
    if config.model_type != "gemma3" or inner is None or text_config is None:
        return hf_model
    from transformers import Gemma3ForCausalLM

    with torch.device("meta"):  # no weights allocated: the wrapper's modules are reused
        text = Gemma3ForCausalLM(text_config)
    text.model, text.lm_head = inner, hf_model.get_output_embeddings()
    text.config._attn_implementation = "eager"
    logger.info("using the gemma3_text language model of a multimodal Gemma 3 checkpoint (its vision tower is ignored)")
    return text.eval()
