"""The commands of the ``arrakis`` command line (``arrakis.cli`` parses the arguments first,
without importing torch): each loads what it needs, calls the library and returns
(data for --json, text)."""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from arrakis.cli import ROLE_THRESHOLD, UsageError, check_layer, task_commands
from arrakis.models import HookedAutoConfig, HookedAutoModel, ModelNotFoundError, load_model, supported_families
from arrakis.progress import progress as progress_bar
from arrakis.tools import WriteReadAnalyzer
from arrakis.tools.flow_question import induction_question
from arrakis.tools.logit_attribution import resolve_pos

# input the library refused, answered with one line (ModelLoadError, UnsupportedArchitectureError
# and the tools' checks are ValueErrors); anything else is a bug and keeps its traceback
REFUSED = (UsageError, ValueError, KeyError, TypeError, ModelNotFoundError)

cmd_patch = task_commands.cmd_patch  # arrakis patch (arrakis.cli.task_commands)
cmd_circuit = task_commands.cmd_circuit  # arrakis circuit

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
    for layer in progress_bar(layers, "write heads", "layer", enabled=len(layers) >= 8):
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
    the read heads of the strongest induction edge's layer for its writer, an induction flow
    trace, and the heads a task (IOI) needs."""
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
        "",
        task_commands.analyze_task_text(model),
    ]
    return "\n".join(lines)


# -- commands ----------------------------------------------------------------------------------


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

    if flow.method != "routes":
        m = flow.metric
        target = m["target_str"] if m["target_str"] is not None else m["target"]
        foil = m["foil_str"] if m["foil_str"] is not None else m["foil"]
        foil = f", foil {foil!r}" if m["foil"] is not None else ""
        lines.append(f"metric: {m['formula']}, target {target!r}{foil}; clean value {m['clean']:.4f}")
        lines.append(f"estimated drop in the metric when each head's dst <- src edge is knocked out ({flow.method}):")
        lines.append("  top heads: " + scored(flow.top_heads))
        lines.append("  suppressors: " + scored(flow.suppressors))
        strongest = sorted(flow.layers, key=lambda lf: -abs(lf.flow))[:5]
        kind = "exact knockouts, estimates beside" if flow.exact_values else "estimates"
        lines.append(f"  strongest layers ({kind}): " + ", ".join(flow.layer_text(lf) for lf in strongest))
        lines.append(f"  all layers knocked out at once: {flow.all_layers_text()}")
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
    lines += [f"note: {note}" for note in flow.notes]
    return "\n".join(lines)


def _respellings(value: str) -> list[tuple[str, str]]:
    """What a token string may have meant: with a leading space (" Alice" for "Alice"), or
    without the spaces around it."""
    bare = value.strip()
    candidates = [(" " + bare, "with its leading space"), (bare, "without its spaces")]
    return [(other, how) for other, how in candidates if bare and other != value]


def check_token_strings(model: HookedAutoModel, ids: Any, in_prompt: dict[str, Any], one_token: dict[str, Any]) -> None:
    """Right after the model loads: a token string (by option) that is not a token of the
    prompt (``in_prompt``), or not one token (``one_token``), where the same string with a
    leading space (or without its spaces) would be, is refused with that hint; other mistakes
    are left to the library's own errors."""
    tokenizer = model.require_tokenizer()
    row = set(ids[0].tolist())

    def ids_of(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    def valid(text: str, need_prompt: bool) -> bool:
        found = ids_of(text)
        return len(found) == 1 and (not need_prompt or found[0] in row)

    for options, need_prompt in ((in_prompt, True), (one_token, False)):
        for option, value in options.items():
            if value is None or valid(value, need_prompt):
                continue
            for other, how in _respellings(value):
                if valid(other, need_prompt):
                    problem = "is not a token of the prompt" if need_prompt else f"is {len(ids_of(value))} tokens"
                    raise UsageError(f"argument {option}: {value!r} {problem}; did you mean {other!r} ({how})?")


def cmd_flow(args: argparse.Namespace) -> Any:
    model = load_model(args.model)
    tool = WriteReadAnalyzer(model)
    ids = model.to_tokens(args.prompt)
    check_token_strings(
        model, ids, {"--src": args.src, "--dst": args.dst}, {"--target": args.target, "--foil": args.foil}
    )
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
        steps=args.steps,
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
    check_token_strings(model, ids, {}, {"--token": args.token, "--foil": args.foil})
    pos = resolve_pos(args.pos, model.check_input_ids(ids).shape[1])  # before any forward pass
    token = args.token
    if token is None:  # the model's own top prediction at that position
        token = int(model.run_with_cache(ids, names=["logits"])[0].logits[0, pos].argmax())
    result = tool.logit_attribution(ids, token, pos=args.pos, foil=args.foil)
    return result.to_dict(), attribution_text(result)


def cmd_report(args: argparse.Namespace) -> Any:
    from arrakis.report import Report

    model = load_model(args.model)
    if args.prompt is not None:
        check_token_strings(model, model.to_tokens(args.prompt), {"--src": args.src, "--dst": args.dst}, {})
    report = Report(model, prompt=args.prompt, src=args.src, dst=args.dst)
    report.flow_question()  # a token not in the prompt is refused before any analysis runs
    path = report.save(args.out)
    return {"report": str(path)}, f"report written to {path}"


def cmd_summary(args: argparse.Namespace) -> Any:
    torch.manual_seed(0)
    models = {f: HookedAutoModel(HookedAutoConfig(f)) for f in args.families or supported_families()}
    data = {f: m.cfg.to_dict() for f, m in models.items()}
    return data, "\n\n".join(summarize(m) for m in models.values())
