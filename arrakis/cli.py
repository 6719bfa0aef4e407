"""The ``arrakis`` command line. It only calls the library and prints what it returns.

arrakis summary [FAMILY ...]   build the small default model of each family and print
                               its shape and the cached hook names with their shapes
"""

from __future__ import annotations

import argparse
import logging

import torch

from arrakis.models import HookedAutoConfig, HookedAutoModel, supported_families


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="arrakis", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("summary", help="shape summaries of the small default models")
    summary.add_argument("families", nargs="*", metavar="FAMILY", help=", ".join(supported_families()))
    args = parser.parse_args(argv)
    unknown = [f for f in getattr(args, "families", []) if f not in supported_families()]
    if unknown:
        parser.error(f"unknown family {unknown[0]!r}; choose from {', '.join(supported_families())}")
    logging.basicConfig(level=logging.WARNING)
    if args.command == "summary":
        torch.manual_seed(0)
        for family in args.families or supported_families():
            print(summarize(HookedAutoModel(HookedAutoConfig(family))), end="\n\n")
    return 0
