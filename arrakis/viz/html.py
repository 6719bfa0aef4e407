"""Results as compact HTML for notebooks: the ``_repr_html_`` of every result calls these.

A summary line and a small table, never a whole tensor: the selected heads, the strongest
composition edges, the top heads per role, a circuit's edges, a trace's flow per layer with
its top heads and paths. Every piece of text passes through ``html.escape`` (tokens hold
"<", "&" and quotes). No matplotlib here.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from arrakis.viz.common import head_name

if TYPE_CHECKING:
    from arrakis.tools.results import Circuit, CompositionScores, HeadRoles, HeadSelection
    from arrakis.tools.results.attribution import LogitAttribution
    from arrakis.tools.results.flow import InformationFlow

CELL = "padding:1px 8px;text-align:right"


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], highlight: Iterable[int] = ()) -> str:
    """An HTML table of text cells (escaped); rows whose index is in ``highlight`` in bold."""
    bold = set(highlight)
    head = "".join(f'<th style="{CELL}">{esc(h)}</th>' for h in headers)
    body = []
    for i, row in enumerate(rows):
        style = CELL + (";font-weight:bold" if i in bold else "")
        body.append("<tr>" + "".join(f'<td style="{style}">{esc(cell)}</td>' for cell in row) + "</tr>")
    return f'<table style="border-collapse:collapse"><tr>{head}</tr>{"".join(body)}</table>'


def panel(title: str, lines: Iterable[str], *tables: str) -> str:
    """A titled block: summary lines (escaped), then tables (already HTML)."""
    text = "".join(f"<div>{esc(line)}</div>" for line in lines if line)
    return f'<div class="arrakis-result"><strong>{esc(title)}</strong>{text}{"".join(tables)}</div>'


def head_selection_html(selection: HeadSelection) -> str:
    """Every head of the layer with its score and share; the selected heads in bold, ranked."""
    rank = {head: i + 1 for i, (_, head) in enumerate(selection)}
    rows = [
        (head_name((selection.layer, h)), f"{score:.4g}", f"{share:.1%}", f"#{rank[h]}" if h in rank else "")
        for h, (score, share) in enumerate(zip(selection.scores, selection.shares, strict=True))
    ]
    baseline = f"baseline {selection.baseline:.4g}" if selection.baseline is not None else ""
    summary = (
        f"layer {selection.layer}, {selection.method}: {len(selection)} heads "
        f"({', '.join(head_name(h) for h in selection) or 'none'}) cover {selection.covered():.0%} "
        f">= threshold {selection.threshold:.0%}"
    )
    return panel(
        "HeadSelection",
        [summary, baseline, *selection.notes],
        table(("head", "score", "share", "selected"), rows, highlight=[h for h in range(len(rows)) if h in rank]),
    )


def composition_html(scores: CompositionScores, k: int = 10) -> str:
    """A summary (mode, size, baseline, how many pairs beat it) and the k strongest edges."""
    n_layers, n_heads = scores.shape[:2]
    t = scores.tensor
    above = int((t >= 2 * scores.baseline).sum())
    rows = [
        (head_name(w), head_name(r), f"{s:.4f}", f"{s / scores.baseline:.1f}x") for w, r, s in scores.top(k) if s > 0
    ]
    return panel(
        f"CompositionScores ({scores.mode})",
        [
            f"{scores.mode}-composition of {n_layers} layers x {n_heads} heads, "
            f"{'folded' if scores.folded else 'raw'} weights; baseline 1/sqrt(d_model) = {scores.baseline:.4f}",
            f"{above} writer -> reader pairs score at least 2x the baseline; the strongest {len(rows)}:",
        ],
        table(("writer", "reader", "score", "x baseline"), rows),
    )


def head_roles_html(roles: HeadRoles, k: int = 5) -> str:
    """The k strongest heads of each role, with their scores."""
    from arrakis.circuits.roles import ROLES

    rows = [
        (role.replace("_", "-"), ", ".join(f"{head_name(h)} {v:.2f}" for h, v in roles.top(role, k))) for role in ROLES
    ]
    return panel(
        "HeadRoles",
        [f"from {roles.source}: {roles.n_sequences} sequences of {roles.n_tokens} tokens"],
        table(("role", f"top {k} heads"), rows),
    )


def circuit_html(circuit: Circuit, max_rows: int = 20) -> str:
    """The circuit's edges, strongest first, with each head's strongest role."""

    from arrakis.viz.circuit import strongest_role

    def role(roles: dict[str, float]) -> str:
        name = strongest_role(roles, min_role_score=float("-inf"))
        return f"{name.replace('_', '-')} {roles[name]:.2f}" if name else ""

    rows = [
        (
            head_name(e.writer),
            role(e.writer_roles),
            head_name(e.reader),
            role(e.reader_roles),
            f"{e.score:.4f}",
            f"{e.ratio:.1f}x",
        )
        for e in circuit[:max_rows]
    ]
    filters = ", ".join(
        f"{side} {r.replace('_', '-')} >= {circuit.role_threshold:g}"
        for side, r in (("writers", circuit.writer_role), ("readers", circuit.reader_role))
        if r
    )
    more = f"(first {max_rows} shown)" if len(circuit) > max_rows else ""
    return panel(
        f"Circuit ({circuit.mode}-composition)",
        [
            f"{len(circuit)} edges >= {circuit.min_ratio:g}x baseline {circuit.baseline:.4f}"
            + (f"; {filters}" if filters else ""),
            more,
        ],
        table(("writer", "writer role", "reader", "reader role", "score", "x baseline"), rows),
    )


def information_flow_html(flow: InformationFlow) -> str:
    """Attribution: the metric, the top heads and suppressors with their estimated drops, per
    layer the estimate f_l (the exact knockout beside it when verified) and its strongest
    head, the strongest paths. Routes: flow and residual share per layer with the head
    carrying the most, the top heads, the paths."""
    words = flow.str_tokens if flow.str_tokens else flow.tokens
    lines = [f"src {flow.src_pos} ({words[flow.src_pos]!r}) -> dst {flow.dst_pos} ({words[flow.dst_pos]!r})"]
    path_rows = [(i + 1, path.describe()) for i, path in enumerate(flow.paths)]
    verification = flow.verification
    if flow.method in ("attribution", "integrated"):
        lines.append(_metric_line(flow.metric))

        def scored(heads: Iterable[tuple[int, int]]) -> str:
            return ", ".join(f"{head_name(h)} {flow.score(*h):+.3f}" for h in heads) or "none"

        lines += [f"top heads (estimated drop): {scored(flow.top_heads)}", f"suppressors: {scored(flow.suppressors)}"]
        verified = any(lf.exact is not None for lf in flow.layers)
        layer_rows = []
        for lf in flow.layers:
            best = max(lf.heads, key=lambda h: abs(h.score), default=None)
            strongest = f"{head_name((lf.layer, best.head))} {best.score:+.3f}" if best and best.score else "-"
            exact = [f"{lf.exact:+.3f}" if lf.exact is not None else "-"] if verified else []
            layer_rows.append((lf.layer, f"{lf.flow:+.3f}", *exact, strongest))
        headers = ("layer", "estimate f_l", *(["exact"] if verified else []), "strongest head (estimate)")
        if verification:
            lines.append(_verification_line(verification))
        return panel(
            f"InformationFlow ({flow.method})",
            [*lines, *flow.notes],
            table(headers, layer_rows),
            table(("path", "src -> ... -> dst (weakest edge)"), path_rows),
        )
    layer_rows = []
    for lf in flow.layers:
        best = max(lf.heads, key=lambda h: h.score, default=None)
        carrier = f"{head_name((lf.layer, best.head))} {best.score:.3f}" if best and best.score > 0 else "-"
        share = f"{lf.residual_share:.3f}" if lf.residual_share is not None else "-"
        layer_rows.append((lf.layer, f"{lf.flow:.3f}", share, carrier))
    lines.append(f"top heads: {', '.join(head_name(h) for h in flow.top_heads) or 'none'}")
    if verification:
        every = verification["all_layers"]
        lines.append(
            f"knocking out dst <- src in every layer: drop in {_formula(flow.metric)} {every['exact']:+.4f}, "
            f"KL {every['kl']:.4f}"
        )
    return panel(
        "InformationFlow (routes)",
        [*lines, *flow.notes],
        table(("layer", "flow", "residual share", "strongest head (carried)"), layer_rows),
        table(("path", "src -> ... -> dst (score)"), path_rows),
    )


def _formula(metric: dict[str, Any] | None) -> str:
    return str((metric or {}).get("formula") or "the metric")


def _metric_line(metric: dict[str, Any] | None) -> str:
    """ "metric: log p(target | dst), target 44 (' Paris'), clean -4.330"."""
    if not metric:
        return "metric: -"

    def token(key: str) -> str:
        text = metric.get(f"{key}_str")
        return f"{metric[key]} ({text!r})" if text is not None else str(metric[key])

    parts = [f"metric: {_formula(metric)}"]
    for key in ("target", "foil"):
        if metric.get(key) is not None:
            parts.append(f"{key} {token(key)}")
    if metric.get("clean") is not None:
        parts.append(f"clean {metric['clean']:.3f}")
    return ", ".join(parts)


def _verification_line(verification: dict[str, Any]) -> str:
    """The rank correlations of estimates and exact knockouts, and all layers at once."""

    def number(value: float | None) -> str:
        return f"{value:.2f}" if value is not None else "-"

    every = verification["all_layers"]
    estimate = f"{every['estimate']:+.3f}" if every.get("estimate") is not None else "-"
    text = (
        f"verified by exact knockouts: Spearman heads {number(verification.get('spearman_heads'))}, "
        f"layers {number(verification.get('spearman_layers'))}; all layers at once: estimate {estimate}, "
        f"exact {every['exact']:+.3f} (KL {every['kl']:.4f})"
    )
    if verification.get("top_overlap"):
        k, overlap = verification["top_overlap"]["k"], verification["top_overlap"]["overlap"]
        text += f"; of the top {k} heads by estimate, {overlap} are in the top {k} by exact drop"
    return text


def logit_attribution_html(result: LogitAttribution, n: int = 8) -> str:
    """The strongest writers and suppressors, the largest other components, and the check sum."""
    rows = [(head_name(h), f"{float(result.heads[h]):+.4f}", "writes") for h in result.writers[:n]]
    rows += [(head_name(h), f"{float(result.heads[h]):+.4f}", "suppresses") for h in result.suppressors[:n]]
    parts = sorted(result.components.items(), key=lambda item: -abs(item[1]))[:n]
    return panel(
        "LogitAttribution",
        [result.describe(), f"all contributions add up to {result.total:.4f}", *result.notes],
        table(("head", "contribution", ""), rows),
        table(("component", "contribution"), [(name, f"{value:+.4f}") for name, value in parts]),
    )
