"""``BaseInterpretabilityBench``: a model, a registry of tools by name, and ``use_tools``.

>>> import torch
>>> from arrakis import HookedAutoConfig, HookedAutoModel
>>> from arrakis.bench import BaseInterpretabilityBench
>>> bench = BaseInterpretabilityBench(HookedAutoModel(HookedAutoConfig("gpt2", n_layers=2)))
>>> @bench.use_tools("write_read")
... def strongest_writer(layer, write_read):
...     return write_read.identify_write_heads(layer)[0]
>>> strongest_writer(1)[0]
1
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from arrakis.models import HookedAutoModel
from arrakis.tools import TOOLS, BaseInterpretabilityTool


class BaseInterpretabilityBench:
    """Holds a model and its tools. Subclasses add their own tools with
    ``self.tools.update({"name": ToolClass})`` (a class, built on first use with the model,
    or an instance); ``use_tools(*names)`` passes each tool to the decorated function as a
    keyword argument of that name. Nothing is written to ``save_dir`` until a run is logged.
    """

    def __init__(self, model: HookedAutoModel, save_dir: str | Path = "experiments") -> None:
        if not isinstance(model, HookedAutoModel):
            raise TypeError(f"the bench needs a HookedAutoModel, got {type(model).__name__}")
        self.model = model
        self.save_dir = Path(save_dir)
        self.tools: dict[str, type[BaseInterpretabilityTool] | BaseInterpretabilityTool] = dict(TOOLS)
        self._instances: dict[str, tuple[type, BaseInterpretabilityTool]] = {}

    def get_tool(self, name: str) -> BaseInterpretabilityTool:
        """The tool registered as ``name``, built with this bench's model on first use."""
        if name not in self.tools:
            raise KeyError(f"no tool named {name!r}; registered tools: {', '.join(sorted(self.tools))}")
        entry = self.tools[name]
        if not isinstance(entry, type):
            return entry
        built = self._instances.get(name)
        if built is None or built[0] is not entry:
            built = (entry, entry(self.model))
            self._instances[name] = built
        return built[1]

    def use_tools(self, *names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: call the function with each named tool as a keyword argument."""
        for name in names:
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"tool names are passed as keyword arguments, so {name!r} must be an identifier")
            if name not in self.tools:
                raise KeyError(f"no tool named {name!r}; registered tools: {', '.join(sorted(self.tools))}")

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(fn)
            def run(*args: Any, **kwargs: Any) -> Any:
                for name in names:
                    kwargs.setdefault(name, self.get_tool(name))
                return fn(*args, **kwargs)

            return run

        return decorate
