"""What loading refuses, and how it says so: one line that names the file or the argument.

Two kinds of failure reach a user who loads a model:

- bad arguments (``dtype=torch.int8``, ``device="cuda"`` on a machine without CUDA, a path
  that is not a path), refused by the ``check_*`` functions here before any file is read;
- damaged files, whose readers (json, struct, numpy, torch, pickle, safetensors,
  transformers) raise errors of their own that name neither the file nor the fault.
  ``reading(path, why)`` turns those into one ``ModelLoadError`` naming the file, the
  original error chained.
"""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from arrakis.models.adapters import UnsupportedArchitectureError


class ModelNotFoundError(FileNotFoundError):
    """A model that is not on this machine (arrakis never downloads one)."""


class ModelLoadError(ValueError):
    """A model file that is on this machine but cannot be read: truncated, corrupt, or not a
    model at all. The message's first line names the file and says why."""


# What reading a damaged file makes json, struct, numpy, torch, pickle, safetensors and
# transformers' readers raise. Only the steps that read the user's files are guarded by these.
READ_ERRORS: tuple[type[BaseException], ...] = (
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

    READ_ERRORS += (SafetensorError,)
except ImportError:  # pragma: no cover - a safetensors without the name raises OSError or ValueError
    pass


def first_line(err: BaseException) -> str:
    """``Type: the first line of the message``, at most about 200 characters."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    line = line if len(line) <= 200 else line[:197] + "..."
    name = "struct.error" if isinstance(err, struct.error) else type(err).__name__
    return f"{name}: {line}" if line else name


@contextmanager
def reading(path: Path, why: str) -> Iterator[None]:
    """Turn what a damaged ``path`` makes the readers raise into one ModelLoadError that names it
    (the original error chained). Errors that already say what is wrong pass through."""
    try:
        yield
    except (ModelNotFoundError, ModelLoadError, UnsupportedArchitectureError):
        raise
    except READ_ERRORS as err:
        raise ModelLoadError(f"cannot read model file {path}: {why} ({first_line(err)})") from err


def shape_mismatch(folder: Path) -> str | None:
    """The first safetensors weight of ``folder`` whose shape is not the one its config.json
    gives (the model built on the meta device: no memory), or None."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

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
def loading_weights(path: Path, why: str, folder: Path | None = None) -> Iterator[None]:
    """``reading`` around transformers' ``from_pretrained``; weights that do not fit the config
    of ``folder`` are named (transformers' own report of them is a table of many lines)."""
    with reading(path, why):
        try:
            yield
        except RuntimeError as err:
            mismatch = shape_mismatch(folder) if folder is not None and "mismatched" in str(err) else None
            if mismatch is None:
                raise
            raise ModelLoadError(
                f"cannot read model file {path}: its weights do not have the shapes its config.json gives ({mismatch})"
            ) from err


# -- arguments, checked before any file is read ---------------------------------------------------

# The dtypes the weights are kept in: analyses need floating point, and these three are the ones
# every device and every family's kernels handle.
DTYPES = ("float32", "float16", "bfloat16")


def check_dtype(dtype: Any) -> Any:
    """The torch dtype ``dtype`` names (a torch dtype or its name such as ``"bfloat16"``),
    or a TypeError/ValueError that lists the valid ones."""
    import torch

    valid = ", ".join(f"torch.{name}" for name in DTYPES)
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return getattr(torch, dtype.removeprefix("torch."))
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch dtype, one of {valid}; got {dtype!r} ({type(dtype).__name__})")
    if str(dtype).removeprefix("torch.") not in DTYPES:
        raise ValueError(f"dtype {dtype} cannot hold model weights for analysis: use one of {valid}")
    return dtype


def available_devices() -> list[str]:
    """The devices this machine has, as ``device=`` accepts them."""
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def check_device(device: Any) -> Any:
    """``device`` if this machine has it (None keeps the default), else a ValueError that lists
    the devices it has (a CPU build of torch asked for "cuda" fails here, not in the middle
    of a load)."""
    import torch

    if device is None:
        return None
    if not isinstance(device, str | torch.device):
        raise TypeError(f"device must be a str or torch.device such as 'cpu', got {type(device).__name__}")
    here = available_devices()
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device {str(device)!r} is not a device name; this machine has: {', '.join(here)}") from None
    if parsed.type == "cpu":
        return device
    if parsed.type == "cuda" and torch.cuda.is_available():
        if parsed.index is None or parsed.index < torch.cuda.device_count():
            return device
    if parsed.type == "mps" and "mps" in here:
        return device
    raise ValueError(f"device {str(device)!r} is not available on this machine; it has: {', '.join(here)}")


def check_path(path: Any, argument: str = "path") -> Path:
    """``path`` as a Path, or a TypeError naming the kinds a model location may be."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(
            f"{argument} must be a str or os.PathLike (a folder with config.json, a .safetensors or a .gguf "
            f"file), got {type(path).__name__}"
        )
    return Path(path).expanduser()


def check_load_options(
    path: Any, dtype: Any, device: Any, device_map: Any = None, weights_only: bool = False
) -> tuple[Path, Any, Any]:
    """``from_pretrained``'s arguments checked together: the path's kind, the dtype and the device,
    and no option that the load would ignore (a device for a weights-only model, which builds
    none; weights_only or a device_map for a GGUF file, which is dequantised whole)."""
    path, dtype, device = check_path(path), check_dtype(dtype), check_device(device)
    if weights_only and (device is not None or device_map is not None):
        raise ValueError(
            "device and device_map do not apply with weights_only=True: no model is built, and the stacked "
            "weights stay on the CPU; pass neither, or load without weights_only"
        )
    if path.suffix == ".gguf" and (weights_only or device_map is not None):
        raise ValueError(
            f"{'weights_only=True' if weights_only else 'device_map'} does not apply to a .gguf file, which is "
            "dequantised whole; pass a safetensors folder, or load the GGUF file without it"
        )
    return path, dtype, device
