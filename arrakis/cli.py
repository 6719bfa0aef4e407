"""The ``arrakis`` command line. It only calls the library and prints what it returns.

    arrakis models                       the families, the embedded model and other local ones
    arrakis analyze [--model PATH]       the main job (make run): write heads and head roles per
                                         layer, the induction circuit, the read heads of one layer,
                                         and which heads carry an induction prediction (flow)
    arrakis heads [--model PATH] [--layer L] [--threshold T]
                                         write heads (and previous-token / induction scores)
    arrakis circuits [--model PATH] [--mode K] [--writer-role R] [--reader-role R] [--verify]
    arrakis flow --prompt TEXT --src TOKEN --dst TOKEN [--layers N] [--method M] [--target T]
                                         [--foil F] [--verify | --verify-all]
    arrakis attribute --prompt TEXT [--token T] [--foil F] [--pos P]
                                         signed direct logit attribution of every head
    arrakis report --out FILE [--model PATH] [--prompt TEXT --src TOKEN --dst TOKEN]
    arrakis summary [FAMILY ...]         shape summaries of the small random models
    arrakis experiments list|show|export [--save-dir DIR]

Every command takes ``--json`` for machine-readable output. Bad arguments, and input the
library refuses (a missing or unreadable model file among them), exit with code 2 and one line
on stderr, ``arrakis: error: ...``, that says what is valid. Arguments are checked before any
model loads; what needs the model (a layer's upper bound, a token of the prompt) right after it
loads, before any analysis runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers.utils import logging as hf_logging

from arrakis.circuits.composition import MODES
from arrakis.circuits.roles import ROLES
from arrakis.models import HookedAutoConfig, HookedAutoModel, ModelNotFoundError, load_model, supported_families
from arrakis.models.loading import EMBEDDED_FILE, GEMMA3_FILE, GEMMA3_PACKAGES, cache_dir, embedded_model_path
from arrakis.tools import WriteReadAnalyzer
from arrakis.tools.flow_question import induction_question, resolve_positions
from arrakis.tools.logit_attribution import resolve_pos

ROLE_THRESHOLD = 0.3  # a head counts as previous-token / induction at this score or above


class UsageError(Exception):
    """Bad arguments: exit code 2, one line."""


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: dict[str, Parser] = {}  # the top-level parser's subcommands, by name

    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UsageError(" ".join(message.split()))


# -- argument types: each refuses a bad value at parse time (before any model loads), saying
# what is valid; argparse puts "argument --NAME: " before the message ----------------------------


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def share(value: str) -> float:
    """A number in (0, 1]: --threshold, a share of the layer's writing."""
    number = _number(value)
    if number is None or not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1] (a share of the layer's writing), got {value!r}")
    return number


def positive_ratio(value: str) -> float:
    """A finite number above 0: --min-ratio, a multiple of the baseline score."""
    number = _number(value)
    if number is None or number <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0 (a multiple of the baseline), got {value!r}")
    return number


def int_argument(minimum: int, valid: str, *, words: tuple[str, ...] = ()) -> Callable[[str], int | str]:
    """An argparse type: an int >= ``minimum`` (or one of ``words``), else "must be {valid}"."""

    def parse(value: str) -> int | str:
        if value.strip().lower() in words:
            return value.strip().lower()
        number = _int(value)
        if number is None or number < minimum:
            raise argparse.ArgumentTypeError(f"must be {valid}, got {value!r}")
        return number

    return parse


positive_int = int_argument(1, "a positive int (1, 2, ...)")  # --top-k
layer_index = int_argument(0, "a layer index, an int 0..n_layers-1")  # --layer (its upper bound: once loaded)
layer_count = int_argument(1, "a positive int (the first N layers) or 'all'", words=("all",))  # --layers


def position(value: str) -> int:
    """A position in the prompt: an int, negative counting from the end."""
    number = _int(value)
    if number is None:
        raise argparse.ArgumentTypeError(f"must be an int (a position; -1 is the last), got {value!r}")
    return number


def composition_mode(value: str) -> str:
    """Q, K or V, in either case."""
    if value.strip().upper() not in MODES:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(MODES)} (the composition), got {value!r}")
    return value.strip().upper()


def head_role(value: str) -> str:
    """A head role name (``previous-token`` is read as ``previous_token``)."""
    role = value.strip().lower().replace("-", "_")
    if role not in ROLES:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(ROLES)}, got {value!r}")
    return role


def out_file(value: str) -> str:
    """A file to write: its folder must exist, and it must not be a folder."""
    path = Path(value).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is a folder; give a file name to write")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {str(path.parent)!r} does not exist; create it first")
    return value


def check_layer(value: int | None, n_layers: int, what: str = "--layer") -> None:
    """Refuse a layer beyond the loaded model's, before any analysis runs."""
    if value is not None and value >= n_layers:
        raise UsageError(
            f"argument {what}: {value} is out of range: this model has {n_layers} layers, so 0..{n_layers - 1}"
        )


# -- printing ----------------------------------------------------------------------------------


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


def _role_heads(roles: Any, role: str, layer: int) -> list[tuple[int, float]]:
    scores = roles.scores(role)[layer]
    return sorted(((h, float(s)) for h, s in enumerate(scores) if s >= ROLE_THRESHOLD), key=lambda x: -x[1])


def _heads_text(pairs: list[tuple[int, float]]) -> str:
    return ", ".join(f"H{h} {score:.2f}" for h, score in pairs) or "-"


def heads_table(
    tool: WriteReadAnalyzer, layers: list[int], threshold: float, roles: Any = None
) -> tuple[str, dict[str, Any]]:
    """Write heads and role scores per layer, as text and as data."""
    roles = roles if roles is not None else tool.head_roles()
    lines = [
        f"head roles on {roles.source}; listed at score >= {ROLE_THRESHOLD}",
        f"{'layer':>5}  {f'write heads ({threshold:.0%} of the layer)':<36} {'previous-token':<24} induction",
    ]
    data = {"threshold": threshold, "roles_source": roles.source, "layers": []}
    for layer in tqdm(layers, desc="write heads", unit="layer", leave=False, disable=len(layers) < 8):
        selection = tool.identify_write_heads(layer, threshold)
        prev, ind = _role_heads(roles, "previous_token", layer), _role_heads(roles, "induction", layer)
        write = " ".join(f"H{h}" for _, h in selection)
        lines.append(f"{layer:>5}  {write:<36} {_heads_text(prev):<24} {_heads_text(ind)}")
        data["layers"].append(
            {"write_heads": selection.to_dict(), "previous_token": dict(prev), "induction": dict(ind), "layer": layer}
        )
    return "\n".join(lines), data


def analyze(model: HookedAutoModel) -> str:
    """The main job's report: per layer write heads and head roles, the induction circuit,
    and the read heads of the strongest induction edge's layer for its writer."""
    tool = WriteReadAnalyzer(model)
    c = model.cfg
    roles = tool.head_roles()  # one forward pass serves the table and the circuit
    text, _ = heads_table(tool, list(range(c.n_layers)), 0.8, roles)
    circuit = tool.circuits(
        "K", writer_role="previous_token", reader_role="induction", roles=roles, top_k=10, verify=True
    )
    lines = [f"{c.family}: {c.n_layers} layers x {c.n_heads} heads ({c.n_kv_heads} KV heads), d_model {c.d_model}"]
    lines += [
        text,
        "",
        "induction circuit: previous-token heads whose output induction heads read as keys",
        repr(circuit),
    ]
    if circuit:
        writer, reader = circuit[0].writer, circuit[0].reader
        reads = tool.identify_read_heads(reader[0], dim_idx=writer, channel="k")
        lines += [
            "",
            f"read heads of layer {reader[0]} for writer L{writer[0]}H{writer[1]} (K-composition, 80% of the layer):",
            "  " + ", ".join(f"L{layer}H{h} {reads.scores[h]:.3f}" for layer, h in reads),
            f"  (baseline 1/sqrt(d_model) = {reads.baseline:.3f})",
        ]
    ids, src, dst = induction_question(model)
    flow = tool.trace_information_flow(ids, src_pos=src, dst_pos=dst, target=int(ids[0, src]), verify=True)
    lines += [
        "",
        "information flow on repeated random tokens, after the first occurrence -> the second:",
        flow_text(flow),
    ]
    return "\n".join(lines)


# -- commands ----------------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> Any:
    try:
        embedded = str(embedded_model_path())
    except ModelNotFoundError as err:
        embedded = f"not installed ({err})"
    gemma3 = "installed" if all(importlib.util.find_spec(p) for p in GEMMA3_PACKAGES) else "not installed"
    data = {
        "families": supported_families(),
        "embedded": {"name": "SmolLM2-135M-Instruct", "file": EMBEDDED_FILE, "path": embedded},
        "local": {"gemma3-270m": {"name": "Gemma 3 270M", "file": GEMMA3_FILE, "chunks": gemma3}},
        "cache_dir": str(cache_dir()),
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


def cmd_analyze(args: argparse.Namespace) -> Any:
    start = time.perf_counter()
    model = load_model(args.model)
    loaded = time.perf_counter()
    text = analyze(model)
    text += f"\n\nloaded in {loaded - start:.1f} s, analysed in {time.perf_counter() - loaded:.1f} s"
    return None, text


def cmd_heads(args: argparse.Namespace) -> Any:
    tool = WriteReadAnalyzer(load_model(args.model))
    check_layer(args.layer, tool.cfg.n_layers)
    layers = list(range(tool.cfg.n_layers)) if args.layer is None else [args.layer]
    text, data = heads_table(tool, layers, args.threshold)
    return data, text


def cmd_circuits(args: argparse.Namespace) -> Any:
    tool = WriteReadAnalyzer(load_model(args.model))
    circuit = tool.circuits(
        args.mode,
        writer_role=args.writer_role,
        reader_role=args.reader_role,
        min_ratio=args.min_ratio,
        top_k=args.top_k,
        verify=args.verify,
    )
    return circuit.to_dict(), repr(circuit)


def flow_text(flow: Any) -> str:
    """A flow trace as lines of text: the question, the metric, the heads, routes, checks."""
    tokens = flow.str_tokens or [str(t) for t in flow.tokens]
    lines = [
        f"{tokens[flow.src_pos]!r} (position {flow.src_pos}) -> {tokens[flow.dst_pos]!r} (position {flow.dst_pos}), "
        f"{len(flow.layers)} layers, method {flow.method}"
    ]

    def scored(heads: list[tuple[int, int]]) -> str:
        return ", ".join(f"L{layer}H{head} {flow.score(layer, head):+.4f}" for layer, head in heads) or "-"

    if flow.method == "attribution":
        m = flow.metric
        target = m["target_str"] if m["target_str"] is not None else m["target"]
        foil = m["foil_str"] if m["foil_str"] is not None else m["foil"]
        foil = f", foil {foil!r}" if m["foil"] is not None else ""
        lines.append(f"metric: {m['formula']}, target {target!r}{foil}; clean value {m['clean']:.4f}")
        lines.append("estimated drop in the metric when each head's dst <- src edge is knocked out:")
        lines.append("  top heads: " + scored(flow.top_heads))
        lines.append("  suppressors: " + scored(flow.suppressors))
        strongest = sorted(flow.layers, key=lambda lf: -abs(lf.flow))[:5]
        lines.append("  strongest layers: " + ", ".join(f"L{lf.layer} {lf.flow:+.4f}" for lf in strongest))
    else:
        lines.append("flow per layer: " + ", ".join(f"L{lf.layer} {lf.flow:.3f}" for lf in flow.layers))
        lines.append("top heads: " + (", ".join(f"L{layer}H{head}" for layer, head in flow.top_heads) or "-"))
    lines.append("routes: " + ("; ".join(p.describe() for p in flow.paths[:3]) or "-"))
    if flow.verification:
        v = flow.verification
        every = v["all_layers"]
        estimate = "" if every["estimate"] is None else f"estimate {every['estimate']:+.4f}, "
        lines.append(
            f"exact knockout of dst <- src in every layer: {estimate}exact {every['exact']:+.4f}, KL {every['kl']:.3f}"
        )
        pairs = [f"L{r['layer']}H{r['head']} {r['estimate']:+.4f} / {r['exact']:+.4f}" for r in v["heads"][:8]]
        lines.append("  each head (estimate / exact): " + ", ".join(pairs))
        rho = [
            f"{name} {v[f'spearman_{name}']:.3f}" for name in ("heads", "layers") if v[f"spearman_{name}"] is not None
        ]
        if rho:
            lines.append("  rank correlation of estimates and exact drops: " + ", ".join(rho))
    return "\n".join(lines)


def cmd_flow(args: argparse.Namespace) -> Any:
    model = load_model(args.model)
    tool = WriteReadAnalyzer(model)
    ids = model.to_tokens(args.prompt)
    n_layers = None if args.layers == "all" else args.layers
    if n_layers is not None and n_layers > model.cfg.n_layers:
        raise UsageError(
            f"argument --layers: this model has {model.cfg.n_layers} layers, so 1..{model.cfg.n_layers} or 'all', "
            f"got {n_layers}"
        )
    flow = tool.trace_information_flow(
        ids,
        args.src,
        args.dst,
        n_layers,
        method=args.method,
        target=args.target,
        foil=args.foil,
        verify="all" if args.verify_all else args.verify,
    )
    return flow.to_dict(), flow_text(flow)


def attribution_text(result: Any, n: int = 6) -> str:
    """A logit attribution as lines of text: writers, suppressors, the other components."""

    def heads(items: list) -> str:
        return ", ".join(f"L{layer}H{head} {float(result.heads[layer, head]):+.3f}" for layer, head in items[:n]) or "-"

    parts = sorted(result.components.items(), key=lambda item: -abs(item[1]))[:n]
    return "\n".join(
        [
            result.describe(),
            "writers: " + heads(result.writers),
            "suppressors: " + heads(result.suppressors),
            "other components: " + ", ".join(f"{name} {value:+.3f}" for name, value in parts),
            f"all contributions add up to {result.total:.3f}",
            *result.notes,
        ]
    )


def cmd_attribute(args: argparse.Namespace) -> Any:
    model = load_model(args.model)
    tool = WriteReadAnalyzer(model)
    ids = model.to_tokens(args.prompt)
    pos = resolve_pos(args.pos, model.check_input_ids(ids).shape[1])  # before any forward pass
    token = args.token
    if token is None:  # the model's own top prediction at that position
        token = int(model.run_with_cache(ids, names=["logits"])[0].logits[0, pos].argmax())
    result = tool.logit_attribution(ids, token, pos=args.pos, foil=args.foil)
    return result.to_dict(), attribution_text(result)


def cmd_report(args: argparse.Namespace) -> Any:
    from arrakis.report import Report

    if args.prompt is None and (args.src is not None or args.dst is not None):
        given = " and ".join(f"--{name}" for name in ("src", "dst") if getattr(args, name) is not None)
        raise UsageError(f"--src and --dst need --prompt (they name tokens of its flow trace); got {given} without it")
    model = load_model(args.model)
    if args.prompt is not None:  # src and dst resolved as the report will, before its analyses run
        ids = model.to_tokens(args.prompt)
        n_pos = model.check_input_ids(ids).shape[1]
        src_pos, dst_pos = (0 if args.src is None else None), (n_pos - 1 if args.dst is None else None)
        resolve_positions(model, ids, args.src, args.dst, src_pos, dst_pos, None)  # a ValueError names the token
    path = Report(model, prompt=args.prompt, src=args.src, dst=args.dst).save(args.out)
    return {"report": str(path)}, f"report written to {path}"


def cmd_summary(args: argparse.Namespace) -> Any:
    unknown = [f for f in args.families if f not in supported_families()]
    if unknown:
        raise UsageError(f"unknown family {unknown[0]!r}; choose from {', '.join(supported_families())}")
    torch.manual_seed(0)
    models = {f: HookedAutoModel(HookedAutoConfig(f)) for f in args.families or supported_families()}
    data = {f: m.cfg.to_dict() for f, m in models.items()}
    return data, "\n\n".join(summarize(m) for m in models.values())


def cmd_experiments(args: argparse.Namespace) -> Any:
    from arrakis.bench.store import ExperimentStore

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


def build_parser() -> Parser:
    parser = Parser(prog="arrakis", description="Find the heads that write to and read from the residual stream.")
    # not required here: main() says that a command is needed, or which argument it does not know
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def command(name: str, help: str, fn: Any) -> Parser:
        sub = commands.add_parser(name, help=help, description=help)
        parser.commands[name] = sub
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        sub.set_defaults(fn=fn)
        return sub

    def with_model(sub: Parser) -> Parser:
        sub.add_argument("--model", default=None, help="a local folder, .safetensors or .gguf (default: embedded)")
        return sub

    command("models", "the supported families and the embedded model", cmd_models)
    with_model(command("analyze", "the main job: heads, roles, the induction circuit", cmd_analyze))
    heads = with_model(command("heads", "write heads and head roles per layer", cmd_heads))
    heads.add_argument("--layer", type=layer_index, default=None, help="one layer, 0..n_layers-1 (default: all)")
    heads.add_argument("--threshold", type=share, default=0.8, help="share of the layer's writing, in (0, 1]")
    circuits = with_model(command("circuits", "writer -> reader composition edges with head roles", cmd_circuits))
    circuits.add_argument("--mode", type=composition_mode, default="K", help="Q, K or V composition")
    circuits.add_argument("--writer-role", type=head_role, default="previous_token", help=", ".join(ROLES))
    circuits.add_argument("--reader-role", type=head_role, default="induction", help=", ".join(ROLES))
    circuits.add_argument(
        "--min-ratio", type=positive_ratio, default=2.0, help="keep edges scoring this many x the baseline (> 0)"
    )
    circuits.add_argument("--top-k", type=positive_int, default=20, help="keep the strongest K edges (K >= 1)")
    circuits.add_argument("--verify", action="store_true", help="path-patch each edge against random pairs")
    flow = with_model(command("flow", "information flow from one token to another", cmd_flow))
    flow.add_argument("--prompt", required=True)
    flow.add_argument("--src", required=True, help="the source token (a string that is one token)")
    flow.add_argument("--dst", required=True, help="the destination token")
    flow.add_argument("--layers", type=layer_count, default="all", help="the first N layers, or 'all'")
    flow.add_argument("--method", default="attribution", choices=("attribution", "routes"))
    flow.add_argument(
        "--target", default=None, help="the token whose log-probability at dst is measured (default: top)"
    )
    flow.add_argument("--foil", default=None, help="measure logit(target) - logit(foil) instead")
    flow.add_argument("--verify", action="store_true", help="exact knockouts of the top heads, each layer, all layers")
    flow.add_argument("--verify-all", action="store_true", help="exact knockout of every head's edge")
    attribute = with_model(command("attribute", "which heads write a token's logit (signed)", cmd_attribute))
    attribute.add_argument("--prompt", required=True)
    attribute.add_argument("--token", default=None, help="the token (one token; default: the top prediction)")
    attribute.add_argument("--foil", default=None, help="attribute logit(token) - logit(foil) instead")
    attribute.add_argument("--pos", type=position, default=-1, help="the position (default: -1, the last)")
    report = with_model(command("report", "a self-contained HTML report", cmd_report))
    report.add_argument("--out", type=out_file, required=True, help="the HTML file to write")
    report.add_argument("--prompt", default=None, help="a prompt for the flow trace")
    report.add_argument("--src", default=None, help="with --prompt: the flow's source token (default: the first)")
    report.add_argument("--dst", default=None, help="with --prompt: the flow's destination token (default: the last)")
    experiments = command("experiments", "read the bench's experiment store", cmd_experiments)
    experiments.add_argument("action", choices=["list", "show", "export"])
    experiments.add_argument("name", nargs="?", default=None, help="an experiment name")
    experiments.add_argument("version", nargs="?", default=None, help="a version hash (or a unique prefix)")
    experiments.add_argument("--save-dir", default="experiments", help="the bench's save_dir")
    experiments.add_argument("--out", type=out_file, default=None, help="export: the JSON-lines file to write")
    summary = command("summary", "shape summaries of the small random models", cmd_summary)
    summary.add_argument("families", nargs="*", metavar="FAMILY", help=", ".join(supported_families()))
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed arguments, or a UsageError that names the argument at fault and what is valid."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    names = ", ".join(parser.commands)
    if unknown:
        if args.command is None:
            raise UsageError(f"unrecognized arguments: {' '.join(unknown)}; give a command first, one of {names}")
        options = [o for a in parser.commands[args.command]._actions for o in a.option_strings if o.startswith("--")]
        raise UsageError(
            f"unrecognized arguments: {' '.join(unknown)}; arrakis {args.command} takes {', '.join(options)}"
        )
    if args.command is None:
        raise UsageError(f"a command is needed, one of {names} (arrakis COMMAND --help for its options)")
    return args


def _one_line(err: BaseException) -> str:
    """The first line of an error's message (a KeyError's without its quotes)."""
    message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    line = next((line.strip() for line in message.splitlines() if line.strip()), "")
    return line or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar: a second of noise on stderr
    hf_logging.set_verbosity_error()  # and its many-line load reports: a user error is one line
    try:
        args = parse(argv)
        data, text = args.fn(args)
    # bad arguments, and input the library refused (ModelLoadError, UnsupportedArchitectureError and
    # the tools' checks are ValueErrors); anything else is a bug and keeps its traceback
    except (UsageError, ValueError, KeyError, TypeError, ModelNotFoundError) as err:
        print(f"arrakis: error: {_one_line(err)}", file=sys.stderr)
        return 2
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    if args.json:
        print(json.dumps(data if data is not None else {"text": text}, indent=1, default=str))
    else:
        print(text)
    return 0
