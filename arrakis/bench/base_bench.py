"""``BaseInterpretabilityBench``: a model, a registry of tools by name, and the experiment decorators.

- ``use_tools(*names)`` passes each named tool to the function as a keyword argument;
- ``log_experiment`` records every run in the experiment store under ``save_dir``
  (``arrakis.bench.store``: one SQLite file, one transaction per run, a version hash per
  run), read back with ``list_versions`` and ``get_version``;
- ``profile_model`` times each decoder layer and measures its output memory
  (``arrakis.bench.profile``);
- ``test_hypothesis`` runs Welch's t-test on the two samples the function returns
  (``arrakis.bench.hypothesis``);
- ``plot_results`` turns the data the function returns into a matplotlib Figure
  (``arrakis.bench.plotting``).

The decorators compose in any order; ``log_experiment`` records only the caller's
arguments, never the tools ``use_tools`` adds. ``profile_model`` and ``test_hypothesis``
replace the function's return value with a result object (``ProfiledRun``,
``HypothesisTest``), ``plot_results`` with a Figure: put ``log_experiment`` outside them to
record that object, inside to record the function's own return value.

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
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from arrakis.bench.hypothesis import HypothesisTest, check_test_options, split_samples, welch_t_test
from arrakis.bench.plotting import KINDS, check_plotting_lib, plot_data
from arrakis.bench.profile import GRANULARITIES, ProfiledRun, profile_run
from arrakis.bench.store import ExperimentStore, Run, to_json
from arrakis.models import HookedAutoModel
from arrakis.tools import TOOLS, BaseInterpretabilityTool

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


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
        self._plotting_lib = "matplotlib"
        self._store: ExperimentStore | None = None

    @property
    def store(self) -> ExperimentStore:
        """The experiment store under ``save_dir`` (its file is made on the first logged run)."""
        store = getattr(self, "_store", None)  # getattr: a subclass may skip our __init__
        if store is None or store.save_dir != Path(self.save_dir):
            store = self._store = ExperimentStore(self.save_dir)
        return store

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

            # the parameters a tool fills, so that an outer log_experiment leaves them out
            run.arrakis_tools = (*getattr(fn, "arrakis_tools", ()), *names)
            return run

        return decorate

    # -- logging runs ----------------------------------------------------------------------

    def log_experiment(self, name: str | Callable[..., Any] | None = None) -> Any:
        """Decorator: record every successful run of the function in the experiment store.

        ``@bench.log_experiment("name")`` logs under that name, bare ``@bench.log_experiment``
        under the function's name. A run records the caller's arguments by parameter name
        (defaults filled in; tools from ``use_tools`` left out), the result, the function's
        source and the time, under a version hash of all of them. A run that raises records
        nothing and the exception propagates; a run that cannot be recorded raises the
        store's error after the function has run.
        """
        if callable(name):
            return self._logged(name, name.__name__)
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"an experiment name must be a non-empty string, got {name!r}")
        return lambda fn: self._logged(fn, name or fn.__name__)

    def _logged(self, fn: Callable[..., Any], name: str) -> Callable[..., Any]:
        try:
            source: str | None = inspect.getsource(fn)  # follows __wrapped__ to the user's function
        except (OSError, TypeError):  # defined in a REPL or exec'd: no file to read
            source = None
        try:
            signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            signature = None
        tool_params = set(getattr(fn, "arrakis_tools", ()))

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            # serialised before the call: the function may change what it was given
            arguments = to_json(self._caller_arguments(signature, tool_params, args, kwargs))
            result = fn(*args, **kwargs)
            self.store.log(name, arguments, result, source)
            return result

        run.experiment_name = name
        return run

    def _caller_arguments(
        self, signature: inspect.Signature | None, tool_params: set[str], args: tuple, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """The arguments by parameter name, without tools; ``{"args", "kwargs"}`` where they do not bind."""
        try:
            if signature is None:
                raise TypeError
            bound = signature.bind_partial(*args, **kwargs)
        except TypeError:  # the call itself will fail and say why; nothing gets logged
            return {"args": list(args), "kwargs": {k: v for k, v in kwargs.items() if not self._is_tool(v)}}
        bound.apply_defaults()
        out = {}
        for param, value in bound.arguments.items():
            if param in tool_params or self._is_tool(value):
                continue
            if signature.parameters[param].kind is inspect.Parameter.VAR_KEYWORD:
                value = {k: v for k, v in value.items() if k not in tool_params and not self._is_tool(v)}
            out[param] = value
        return out

    def _is_tool(self, value: Any) -> bool:
        if isinstance(value, BaseInterpretabilityTool):
            return True
        instances = [entry for entry in self.tools.values() if not isinstance(entry, type)]
        instances += [built for _, built in self._instances.values()]
        return any(value is tool for tool in instances)

    def list_versions(self, experiment_name: str) -> list[str]:
        """The version hash of every logged run of an experiment, oldest first ([] if none)."""
        return self.store.list_versions(experiment_name)

    def get_version(self, experiment_name: str, version_hash: str) -> Run:
        """One logged run, by its version hash or a unique prefix of it (at least 6 hex digits)."""
        return self.store.get_version(experiment_name, version_hash)

    # -- profiling, hypothesis tests, plots ------------------------------------------------

    def profile_model(self, granularity: str | Callable[..., Any] = "layer") -> Any:
        """Decorator: run the function with every decoder layer timed and its output memory measured.

        The decorated function returns a ``ProfiledRun``: ``.result`` is what the function
        returned, ``.layers`` one ``LayerProfile`` per decoder layer (``granularity="layer"``)
        or per attention and MLP block (``"component"``). Use as ``@bench.profile_model``,
        ``@bench.profile_model()`` or ``@bench.profile_model("component")``. The hooks are
        removed when the call ends, also when it raises.
        """
        if callable(granularity):
            return self.profile_model()(granularity)
        if granularity not in GRANULARITIES:
            raise ValueError(
                f"unknown granularity {granularity!r}; expected one of {', '.join(map(repr, GRANULARITIES))}"
            )

        def decorate(fn: Callable[..., Any]) -> Callable[..., ProfiledRun]:
            @functools.wraps(fn)
            def run(*args: Any, **kwargs: Any) -> ProfiledRun:
                return profile_run(self.model, fn, args, kwargs, granularity=granularity)

            return run

        return decorate

    def test_hypothesis(
        self, fn: Callable[..., Any] | None = None, /, *, alpha: float = 0.05, alternative: str = "two-sided"
    ) -> Any:
        """Decorator: the function returns two samples ``(a, b)``; the call returns Welch's t-test of them.

        ``@bench.test_hypothesis(alpha=0.01)`` (or bare): the decorated function returns a
        ``HypothesisTest`` with the t statistic, the p-value, ``reject_null = p < alpha`` and
        both means. ``alternative`` is "two-sided", "less" (mean a < mean b) or "greater".
        """
        check_test_options(alpha, alternative)

        def decorate(fn: Callable[..., Any]) -> Callable[..., HypothesisTest]:
            @functools.wraps(fn)
            def run(*args: Any, **kwargs: Any) -> HypothesisTest:
                a, b = split_samples(fn(*args, **kwargs))
                return welch_t_test(a, b, alpha=alpha, alternative=alternative)

            return run

        return decorate(fn) if fn is not None else decorate

    def set_plotting_lib(self, lib: Any) -> None:
        """Choose the library ``plot_results`` draws with; "matplotlib" (the default) is the only one yet."""
        self._plotting_lib = check_plotting_lib(lib)

    def plot_results(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        kind: str = "auto",
        title: str | None = None,
        xlabel: str | None = None,
        ylabel: str | None = None,
    ) -> Any:
        """Decorator: the function returns data, the call returns a matplotlib Figure of it.

        Data is a dict of name -> numbers (one line, or group of bars, per name), a 1-D
        tensor (one line) or a 2-D tensor (a heatmap); ``kind`` is "auto", "line", "bar" or
        "heatmap". The title defaults to the function's name. Nothing is shown or saved.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown plot kind {kind!r}; expected one of {', '.join(map(repr, KINDS))}")

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(fn)
            def run(*args: Any, **kwargs: Any) -> Any:
                check_plotting_lib(getattr(self, "_plotting_lib", "matplotlib"))
                data = fn(*args, **kwargs)
                return plot_data(data, kind=kind, title=title or fn.__name__, xlabel=xlabel, ylabel=ylabel)

            return run

        return decorate(fn) if fn is not None else decorate
