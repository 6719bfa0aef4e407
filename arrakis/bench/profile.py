"""Profiling a run: wall time and output memory of each decoder layer (or of its attention and MLP).

``profile_run(model, fn, ...)`` calls ``fn`` with a forward pre-hook and a forward hook on
every profiled module of ``model.hf_model``. The pre-hook starts a clock, the hook stops it
and adds up the bytes of every tensor in the module's output (``numel * element_size``).
The hooks are removed in a ``finally``, so the model is left as it was also when ``fn``
raises. Everything the function runs through the model counts, however many forward passes.

On CUDA both hooks synchronise the device first, so a layer's time is the time its kernels
ran, not the time it took to launch them; this serialises the GPU, so the total is larger
than an unprofiled run's. Times are wall-clock and include the hooks' own overhead: compare
layers within one profile, not profiles of different machines.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from arrakis.models import HookedAutoModel

GRANULARITIES = ("layer", "component")


@dataclass
class LayerProfile:
    """One profiled module: a decoder layer, or its attention or MLP block."""

    name: str  # "L3" for a layer, "L3.attn" / "L3.mlp" for a component
    layer: int
    component: str  # "layer", "attn" or "mlp"
    calls: int  # forward passes through it during the run
    time_s: float  # summed over calls
    output_bytes: int  # bytes of its output tensors, summed over calls
    peak_output_bytes: int  # the largest single call's output


@dataclass
class ProfiledRun:
    """What a ``@bench.profile_model`` function returns: its own ``result`` and the profile.

    ``layers`` has one entry per profiled module in forward order (every decoder layer,
    also those the run never reached: their ``calls`` is 0). ``wall_time_s`` is the whole
    call's time, the layers' times are part of it.
    """

    result: Any
    wall_time_s: float
    layers: list[LayerProfile] = field(default_factory=list)
    granularity: str = "layer"
    device: str = "cpu"

    @property
    def layer_time_s(self) -> float:
        return sum(p.time_s for p in self.layers)

    @property
    def total_output_bytes(self) -> int:
        return sum(p.output_bytes for p in self.layers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, except ``result``, which stays as the function returned it."""
        return {
            "result": self.result,
            "wall_time_s": self.wall_time_s,
            "granularity": self.granularity,
            "device": self.device,
            "layers": [asdict(p) for p in self.layers],
        }

    def plot(self) -> Any:
        """A matplotlib Figure: time and output memory per profiled module."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(max(6.0, 0.35 * len(self.layers)), 5), layout="constrained")
        ax_time, ax_mem = fig.subplots(2, 1, sharex=True)
        names = [p.name for p in self.layers]
        ax_time.bar(names, [1e3 * p.time_s for p in self.layers])
        ax_time.set_ylabel("time (ms)")
        ax_mem.bar(names, [p.peak_output_bytes / 2**20 for p in self.layers])
        ax_mem.set_ylabel("peak output (MiB)")
        ax_mem.tick_params(axis="x", labelrotation=90)
        fig.suptitle(f"profile: {self.wall_time_s:.3f} s in all on {self.device}")
        return fig

    def __repr__(self) -> str:
        return (
            f"ProfiledRun({len(self.layers)} {self.granularity}s, {self.wall_time_s:.3f} s, "
            f"{self.total_output_bytes / 2**20:.2f} MiB of outputs, result={self.result!r})"
        )


def profiled_modules(model: HookedAutoModel, granularity: str = "layer") -> list[tuple[str, int, str, nn.Module]]:
    """``(name, layer, component, module)`` for each module ``granularity`` profiles, in order."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; expected one of {', '.join(map(repr, GRANULARITIES))}")
    layers = model.hf_model.get_submodule(model.adapter.layers)
    out = []
    for index, layer in enumerate(layers):
        if granularity == "layer":
            out.append((f"L{index}", index, "layer", layer))
        else:
            out.append((f"L{index}.attn", index, "attn", layer.get_submodule(model.adapter.attn)))
            out.append((f"L{index}.mlp", index, "mlp", layer.get_submodule(model.adapter.mlp)))
    return out


def tensor_bytes(value: Any, seen: set[int] | None = None) -> int:
    """Bytes of every tensor in a module output (tensors, tuples, lists, dicts; each counted once)."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, list | tuple):
        return sum(tensor_bytes(v, seen) for v in value)
    if isinstance(value, Mapping):  # also transformers' ModelOutput
        return sum(tensor_bytes(v, seen) for v in value.values())
    return 0


def profile_run(
    model: HookedAutoModel,
    fn: Callable[..., Any],
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    granularity: str = "layer",
) -> ProfiledRun:
    """Call ``fn(*args, **kwargs)`` with the profiling hooks on ``model``; see the module docstring."""
    modules = profiled_modules(model, granularity)
    device = model.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    profiles = [LayerProfile(name, layer, component, 0, 0.0, 0, 0) for name, layer, component, _ in modules]
    started: list[float | None] = [None] * len(modules)

    def pre_hook(index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            sync()
            started[index] = time.perf_counter()

        return hook

    def post_hook(index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            sync()
            start, started[index] = started[index], None
            profile = profiles[index]
            if start is not None:
                profile.time_s += time.perf_counter() - start
            size = tensor_bytes(output)
            profile.calls += 1
            profile.output_bytes += size
            profile.peak_output_bytes = max(profile.peak_output_bytes, size)

        return hook

    handles = []
    try:
        for index, (_, _, _, module) in enumerate(modules):
            handles.append(module.register_forward_pre_hook(pre_hook(index)))
            handles.append(module.register_forward_hook(post_hook(index)))
        sync()
        t0 = time.perf_counter()
        result = fn(*args, **dict(kwargs or {}))
        sync()
        wall = time.perf_counter() - t0
    finally:
        for handle in handles:
            handle.remove()
    return ProfiledRun(result, wall, profiles, granularity, str(device))
