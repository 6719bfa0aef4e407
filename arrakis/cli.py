"""The ``arrakis`` command line. It only calls the library and prints what it returns.

arrakis analyze [MODEL]        the main job: write heads, previous-token and induction
                               heads of every layer, the induction circuit, and the read
                               heads of one layer for one writer (default: the embedded
                               SmolLM2-135M-Instruct)
arrakis summary [FAMILY ...]   build the small default model of each family and print
                               its shape and the cached hook names with their shapes
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from tqdm import tqdm

from arrakis.models import HookedAutoConfig, HookedAutoModel, load_model, supported_families
from arrakis.tools import WriteReadAnalyzer

ROLE_THRESHOLD = 0.3  # a head counts as previous-token / induction at this score or above


def summarize(model: HookedAutoModel, n_tokens: int = 16) -> str:
    """A readable shape summary: the model's dimensions and every hook with its shape."""
    c = model.cfg
    residual = "parallel" if c.parallel_residual else "sequential"
    lines = [
        f"{c.family} ({c.model_type}): {c.n_layers} layers, {c.n_heads} heads, {c.n_kv_heads} KV heads, "
        f"d_model {c.d_model}, d_head {c.d_head}, d_vocab {c.d_vocab}, {c.norm}, {residual} residual, "
        f"{c.positional} positions"
    ]
    generator = torch.Generator().manual_seed(0)
    _, cache = model.run_with_cache(torch.randint(0, c.d_vocab, (1, n_tokens), generator=generator))
    later = f"blocks.1-{c.n_layers - 1}" if c.n_layers > 2 else "blocks.1"
    for name, tensor in cache.items():
        if name.startswith("blocks.") and not name.startswith("blocks.0."):
            continue
        lines.append(f"  {name:<32} {list(tensor.shape)}")
        if name == "blocks.0.hook_resid_post" and c.n_layers > 1:
            lines.append(f"  {later + '.*':<32} the same {sum(n.startswith('blocks.0.') for n in cache)} hooks")
    return "\n".join(lines)


def _heads(pairs: list[tuple[tuple[int, int], float]]) -> str:
    return ", ".join(f"H{h} {score:.2f}" for (_, h), score in pairs) or "-"


def analyze(model: HookedAutoModel) -> str:
    """The main job's report: per layer write heads and head roles, the induction circuit,
    and the read heads of the strongest induction head's layer for the top writer."""
    tool = WriteReadAnalyzer(model)
    c = model.cfg
    with tqdm(total=3, desc="analysing", unit="step", leave=False) as progress:
        roles = tool.head_roles()
        progress.update()
        writes = [tool.identify_write_heads(layer) for layer in range(c.n_layers)]
        progress.update()
        circuit = tool.circuits("K", writer_role="previous_token", reader_role="induction", roles=roles, top_k=10)
        progress.update()
    lines = [
        f"{c.family}: {c.n_layers} layers x {c.n_heads} heads ({c.n_kv_heads} KV heads), d_model {c.d_model}",
        f"head roles on {roles.source}; listed at score >= {ROLE_THRESHOLD}",
        "",
        f"{'layer':>5}  {'write heads (80% of the layer)':<36} {'previous-token':<24} induction",
    ]
    for layer, selection in enumerate(writes):
        write = " ".join(f"H{h}" for _, h in selection)
        by_role = {}
        for role in ("previous_token", "induction"):
            scores = roles.scores(role)[layer]
            by_role[role] = [((layer, h), float(s)) for h, s in enumerate(scores) if s >= ROLE_THRESHOLD]
            by_role[role].sort(key=lambda item: -item[1])
        lines.append(f"{layer:>5}  {write:<36} {_heads(by_role['previous_token']):<24} {_heads(by_role['induction'])}")
    lines += ["", "induction circuit: previous-token heads whose output induction heads read as keys", repr(circuit)]
    if circuit:
        writer, reader = circuit[0].writer, circuit[0].reader
        reads = tool.identify_read_heads(reader[0], dim_idx=writer, channel="k")
        lines += [
            "",
            f"read heads of layer {reader[0]} for writer L{writer[0]}H{writer[1]} (K-composition, 80% of the layer):",
            "  " + ", ".join(f"L{layer}H{h} {reads.scores[h]:.3f}" for layer, h in reads),
            f"  (baseline 1/sqrt(d_model) = {reads.baseline:.3f})",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="arrakis", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("analyze", help="the main job on a real model (default: the embedded one)")
    run.add_argument("model", nargs="?", default=None, help="a local folder, .safetensors or .gguf file")
    summary = commands.add_parser("summary", help="shape summaries of the small default models")
    summary.add_argument("families", nargs="*", metavar="FAMILY", help=", ".join(supported_families()))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "summary":
        unknown = [f for f in args.families if f not in supported_families()]
        if unknown:
            parser.error(f"unknown family {unknown[0]!r}; choose from {', '.join(supported_families())}")
        torch.manual_seed(0)
        for family in args.families or supported_families():
            print(summarize(HookedAutoModel(HookedAutoConfig(family))), end="\n\n")
    elif args.command == "analyze":
        start = time.perf_counter()
        model = load_model(args.model)
        loaded = time.perf_counter()
        print(analyze(model))
        print(f"\nloaded in {loaded - start:.1f} s, analysed in {time.perf_counter() - loaded:.1f} s")
    return 0
