"""The ``arrakis`` command line. It only calls the library and prints what it returns.

    arrakis models                       the families, the embedded model and other local ones
    arrakis analyze [--model PATH]       the main job (make run): write heads and head roles per
                                         layer, the induction circuit, the read heads of one layer,
                                         which heads carry an induction prediction (flow), and
                                         the heads an IOI task needs (activation patching)
    arrakis heads [--model PATH] [--layer L] [--threshold T]
                                         write heads (and previous-token / induction scores)
    arrakis circuits [--model PATH] [--mode K] [--writer-role R] [--reader-role R] [--verify]
    arrakis flow --prompt TEXT --src TOKEN --dst TOKEN [--layers N] [--method M] [--target T]
                                         [--foil F] [--verify | --verify-all]
    arrakis attribute --prompt TEXT [--token T] [--foil F] [--pos P]
                                         signed direct logit attribution of every head
    arrakis patch --task ioi|induction [--channel C] [--n N] [--seed S] [--method M] [--direction D]
                  [--positions all|dst] [--top-k K]
                                         activation patching of every head on a task
    arrakis circuit --task ioi|induction [--n N] [--seed S] [--method M] [--steps S] [--top-k K]
                    [--sizes N,N,...] [--curve] [--verify K]
                                         every writer -> reader edge of a task scored, circuits run
    arrakis report --out FILE [--model PATH] [--prompt TEXT --src TOKEN --dst TOKEN]
    arrakis summary [FAMILY ...]         shape summaries of the small random models
    arrakis experiments list|show|export [--save-dir DIR]

Every command takes ``--json`` for machine-readable output. Bad arguments, and input the
library refuses (a missing or unreadable model file among them), exit with code 2 and one line
on stderr, ``arrakis: error: ...``, that says what is valid. Arguments are checked before any
model loads; what needs the model (a layer's upper bound, a token of the prompt) right after it
loads, before any analysis runs. ``models`` and ``experiments`` only read metadata
(``arrakis.cli.metadata``): they answer without importing torch or transformers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Only the standard library is imported here, so that a bad argument is refused in a fraction
# of a second, before torch and transformers load (arrakis.cli.commands imports them).
from arrakis.cli import catalog

MODES = ("Q", "K", "V")  # composition modes (arrakis.circuits.composition.MODES; a test keeps them equal)
ROLES = ("previous_token", "duplicate_token", "induction")  # head roles (arrakis.circuits.roles.ROLES)

# arrakis patch: the tasks (arrakis.tasks), channels, methods and directions of patch_heads
# (arrakis.models.head_channels, arrakis.tools.patching; a test keeps them equal)
TASKS = ("ioi", "induction")
CHANNELS = ("z", "q", "k", "v", "pattern")
PATCH_METHODS = ("exact", "attribution", "integrated")
DIRECTIONS = ("noising", "denoising")
PATCH_POSITIONS = ("all", "dst")
CIRCUIT_METHODS = ("integrated", "attribution")  # arrakis.models.edge_runs.METHODS (a test keeps them equal)

ROLE_THRESHOLD = 0.3  # a head counts as previous-token / induction at this score or above


class UsageError(Exception):
    """Bad arguments: exit code 2, one line."""


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.long_options: list[str] = []  # its --options, for the "takes ..." hint (argparse adds --help)
        super().__init__(*args, **kwargs)
        self.commands: dict[str, Parser] = {}  # the top-level parser's subcommands, by name

    def add_argument(self, *names: Any, **kwargs: Any) -> argparse.Action:
        self.long_options += [n for n in names if isinstance(n, str) and n.startswith("--")]
        return super().add_argument(*names, **kwargs)

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
seed = int_argument(0, "an int >= 0 (the task's random seed)")  # --seed


def one_of(choices: tuple[str, ...], what: str) -> Callable[[str], str]:
    """An argparse type: one of ``choices`` (in any case), else "must be one of ... (what)"."""

    def parse(value: str) -> str:
        if value.strip().lower() not in choices:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(choices)} ({what}), got {value!r}")
        return value.strip().lower()

    return parse


def sizes(value: str) -> tuple[int, ...]:
    """--sizes: circuit sizes as comma-separated ints >= 0 (10,100,1000)."""
    parts = [_int(part.strip()) for part in value.split(",")]
    if not value.strip() or any(part is None or part < 0 for part in parts):
        raise argparse.ArgumentTypeError(f"must be comma-separated ints >= 0 (e.g. 10,100,1000), got {value!r}")
    return tuple(int(part) for part in parts if part is not None)


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


def prompt_text(value: str) -> str:
    """A prompt: some text, not only spaces."""
    if not value.strip():
        raise argparse.ArgumentTypeError(f"must be some text to tokenize, got {value!r}")
    return value


def token_text(value: str) -> str:
    """A token of the prompt, as a string (" Paris", with its leading space): not empty."""
    if not value:
        raise argparse.ArgumentTypeError("must be a token as a string, e.g. ' Paris' (with its leading space), got ''")
    return value


def model_name_or_path(value: str) -> str:
    """A packaged model's name or a path that exists (arrakis loads local files only)."""
    if catalog.is_packaged_name(value) or Path(value).expanduser().exists():
        return value
    raise argparse.ArgumentTypeError(
        f"no model at {value!r}: arrakis loads local files only (a folder with config.json, a .safetensors "
        f"or a .gguf file), the embedded default ({', '.join(catalog.EMBEDDED_NAMES)}), or the installed "
        f"Gemma 3 270M ({', '.join(catalog.GEMMA3_NAMES)})"
    )


def check_layer(value: int | None, n_layers: int, what: str = "--layer") -> None:
    """Refuse a layer beyond the loaded model's, before any analysis runs."""
    if value is not None and value >= n_layers:
        raise UsageError(
            f"argument {what}: {value} is out of range: this model has {n_layers} layers, so 0..{n_layers - 1}"
        )


def build_parser() -> Parser:
    parser = Parser(prog="arrakis", description="Find the heads that write to and read from the residual stream.")
    # not required here: main() says that a command is needed, or which argument it does not know
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def command(name: str, help: str) -> Parser:
        sub = commands.add_parser(name, help=help, description=help)
        parser.commands[name] = sub
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        return sub

    def with_model(sub: Parser) -> Parser:
        sub.add_argument(
            "--model",
            type=model_name_or_path,
            default=None,
            help="a local folder, .safetensors or .gguf (default: embedded)",
        )
        return sub

    command("models", "the supported families and the embedded model")
    with_model(command("analyze", "the main job: heads, roles, the induction circuit"))
    heads = with_model(command("heads", "write heads and head roles per layer"))
    heads.add_argument("--layer", type=layer_index, default=None, help="one layer, 0..n_layers-1 (default: all)")
    heads.add_argument("--threshold", type=share, default=0.8, help="share of the layer's writing, in (0, 1]")
    circuits = with_model(command("circuits", "writer -> reader composition edges with head roles"))
    circuits.add_argument("--mode", type=composition_mode, default="K", help="Q, K or V composition")
    circuits.add_argument("--writer-role", type=head_role, default="previous_token", help=", ".join(ROLES))
    circuits.add_argument("--reader-role", type=head_role, default="induction", help=", ".join(ROLES))
    circuits.add_argument(
        "--min-ratio", type=positive_ratio, default=2.0, help="keep edges scoring this many x the baseline (> 0)"
    )
    circuits.add_argument("--top-k", type=positive_int, default=20, help="keep the strongest K edges (K >= 1)")
    circuits.add_argument("--verify", action="store_true", help="path-patch each edge against random pairs")
    flow = with_model(command("flow", "information flow from one token to another"))
    flow.add_argument("--prompt", type=prompt_text, required=True)
    flow.add_argument("--src", type=token_text, required=True, help="the source token (a string that is one token)")
    flow.add_argument("--dst", type=token_text, required=True, help="the destination token")
    flow.add_argument("--layers", type=layer_count, default="all", help="the first N layers, or 'all'")
    flow.add_argument("--method", default="attribution", choices=("attribution", "integrated", "routes"))
    flow.add_argument("--steps", type=positive_int, default=5, help="integration steps of --method integrated (>= 1)")
    flow.add_argument(
        "--target",
        type=token_text,
        default=None,
        help="the token whose log-probability at dst is measured (default: top)",
    )
    flow.add_argument("--foil", type=token_text, default=None, help="measure logit(target) - logit(foil) instead")
    flow.add_argument("--verify", action="store_true", help="exact knockouts of the top heads, each layer, all layers")
    flow.add_argument("--verify-all", action="store_true", help="exact knockout of every head's edge")
    attribute = with_model(command("attribute", "which heads write a token's logit (signed)"))
    attribute.add_argument("--prompt", type=prompt_text, required=True)
    attribute.add_argument(
        "--token", type=token_text, default=None, help="the token (one token; default: the top prediction)"
    )
    attribute.add_argument("--foil", type=token_text, default=None, help="attribute logit(token) - logit(foil) instead")
    attribute.add_argument("--pos", type=position, default=-1, help="the position (default: -1, the last)")
    patch = with_model(command("patch", "activation patching of every head on a task (clean vs corrupted)"))
    patch.add_argument("--task", type=one_of(TASKS, "the task"), required=True, help=", ".join(TASKS))
    patch.add_argument("--channel", type=one_of(CHANNELS, "the head's channel"), default="z", help=", ".join(CHANNELS))
    patch.add_argument("--n", type=positive_int, default=8, help="examples in the task (>= 1)")
    patch.add_argument("--seed", type=seed, default=0, help="the task's random seed (>= 0)")
    patch.add_argument("--method", type=one_of(PATCH_METHODS, "how"), default="exact", help=", ".join(PATCH_METHODS))
    patch.add_argument("--steps", type=positive_int, default=5, help="integration steps of --method integrated (>= 1)")
    patch.add_argument(
        "--direction", type=one_of(DIRECTIONS, "the patch's direction"), default="noising", help=", ".join(DIRECTIONS)
    )
    patch.add_argument(
        "--positions", type=one_of(PATCH_POSITIONS, "the positions patched"), default="all", help="all or dst"
    )
    patch.add_argument("--top-k", type=positive_int, default=10, help="list the strongest K heads (K >= 1)")
    circuit = with_model(command("circuit", "every writer -> reader edge of a task scored; its circuits run exactly"))
    circuit.add_argument("--task", type=one_of(TASKS, "the task"), required=True, help=", ".join(TASKS))
    circuit.add_argument("--n", type=positive_int, default=8, help="examples in the task (>= 1)")
    circuit.add_argument("--seed", type=seed, default=0, help="the task's random seed (>= 0)")
    circuit.add_argument(
        "--method", type=one_of(CIRCUIT_METHODS, "how"), default="integrated", help=", ".join(CIRCUIT_METHODS)
    )
    circuit.add_argument("--steps", type=positive_int, default=5, help="integration steps of --method integrated")
    circuit.add_argument("--top-k", type=positive_int, default=20, help="list the strongest K edges (K >= 1)")
    circuit.add_argument(
        "--sizes", type=sizes, default=(10, 100, 1000), help="faithfulness of the top-N circuits (default 10,100,1000)"
    )
    circuit.add_argument("--curve", action="store_true", help="the faithfulness curve beside random circuits")
    circuit.add_argument("--verify", type=positive_int, default=None, help="exact single-edge patching of the top K")
    report = with_model(command("report", "a self-contained HTML report"))
    report.add_argument("--out", type=out_file, required=True, help="the HTML file to write")
    report.add_argument("--prompt", type=prompt_text, default=None, help="a prompt for the flow trace")
    report.add_argument(
        "--src", type=token_text, default=None, help="with --prompt: the flow's source token (default: the first)"
    )
    report.add_argument(
        "--dst", type=token_text, default=None, help="with --prompt: the flow's destination token (default: the last)"
    )
    experiments = command("experiments", "read the bench's experiment store")
    experiments.add_argument("action", choices=["list", "show", "export"])
    experiments.add_argument("name", nargs="?", default=None, help="an experiment name")
    experiments.add_argument("version", nargs="?", default=None, help="a version hash (or a unique prefix)")
    experiments.add_argument("--save-dir", default="experiments", help="the bench's save_dir")
    experiments.add_argument("--out", type=out_file, default=None, help="export: the JSON-lines file to write")
    summary = command("summary", "shape summaries of the small random models")
    summary.add_argument(
        "families", nargs="*", metavar="FAMILY", help="a family name (arrakis models lists them; default: all)"
    )
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed arguments, or a UsageError that names the argument at fault and what is valid."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    names = ", ".join(parser.commands)
    if unknown:
        if args.command is None:
            raise UsageError(f"unrecognized arguments: {' '.join(unknown)}; give a command first, one of {names}")
        options = parser.commands[args.command].long_options
        raise UsageError(
            f"unrecognized arguments: {' '.join(unknown)}; arrakis {args.command} takes {', '.join(options)}"
        )
    if args.command is None:
        raise UsageError(f"a command is needed, one of {names} (arrakis COMMAND --help for its options)")
    if args.command == "report" and args.prompt is None and (args.src is not None or args.dst is not None):
        given = " and ".join(f"--{name}" for name in ("src", "dst") if getattr(args, name) is not None)
        raise UsageError(f"--src and --dst need --prompt (they name tokens of its flow trace); got {given} without it")
    if args.command == "summary":
        known = catalog.families()
        unknown = [family for family in args.families if family not in known]
        if unknown:
            raise UsageError(f"unknown family {unknown[0]!r}; choose from {', '.join(known)}")
    return args


def _one_line(err: BaseException) -> str:
    """The first line of an error's message (a KeyError's without its quotes)."""
    message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    line = next((line.strip() for line in message.splitlines() if line.strip()), "")
    return line or type(err).__name__


LIGHT_COMMANDS = ("models", "experiments")  # they read metadata only: arrakis.cli.metadata, no torch


def _run(module: Any, args: argparse.Namespace) -> int:
    """Run the command's ``cmd_NAME`` of ``module`` and print its result; input the library
    refused (one of the module's ``REFUSED``) exits 2 with one line, anything else is a bug and
    keeps its traceback."""
    try:
        data, text = getattr(module, f"cmd_{args.command}")(args)
    except module.REFUSED as err:
        print(f"arrakis: error: {_one_line(err)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(data if data is not None else {"text": text}, indent=1, default=str))
    else:
        print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = parse(argv)
    except UsageError as err:  # refused before torch, transformers or any model loads
        print(f"arrakis: error: {err}", file=sys.stderr)
        return 2
    if args.command in LIGHT_COMMANDS:
        return _run(importlib.import_module("arrakis.cli.metadata"), args)
    commands = importlib.import_module("arrakis.cli.commands")
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar: a second of noise on stderr
    hf_logging.set_verbosity_error()  # and its many-line load reports: a user error is one line
    try:
        return _run(commands, args)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
