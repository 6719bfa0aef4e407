"""The commands of the ``arrakis`` command line (``arrakis.cli`` parses the arguments first,
without importing torch): each loads what it needs, calls the library and returns
(data for --json, text)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from typing import Any

import torch
from tqdm import tqdm

from arrakis.cli import ROLE_THRESHOLD, UsageError, check_layer
from arrakis.models import HookedAutoConfig, HookedAutoModel, ModelNotFoundError, load_model, supported_families
from arrakis.models.loading import EMBEDDED_FILE, GEMMA3_FILE, GEMMA3_PACKAGES, cache_dir, embedded_model_path
from arrakis.tools import WriteReadAnalyzer
from arrakis.tools.flow_question import induction_question
from arrakis.tools.logit_attribution import resolve_pos

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

    report = Report(load_model(args.model), prompt=args.prompt, src=args.src, dst=args.dst)
    report.flow_question()  # a token not in the prompt is refused before any analysis runs
    path = report.save(args.out)
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
