"""A self-contained HTML report of one model: who writes, who reads, how heads compose,
how information flows through a prompt, and which heads a task (IOI) needs.

Figures are embedded as base64 PNG images and the page has no external resources, so the
file opens anywhere without a network. The report only calls tools and the results'
``plot()``; it computes nothing itself.

>>> # Report(model, prompt="...").save("report.html")
"""

from __future__ import annotations

import base64
import functools
import html
import io
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from arrakis.circuits.roles import ROLES
from arrakis.models import HookedAutoModel
from arrakis.models.activation_patching import patch_heads_exact
from arrakis.progress import progress as progress_bar
from arrakis.tasks import Task, induction, ioi
from arrakis.tools import WriteReadAnalyzer
from arrakis.tools.flow_question import induction_question, resolve_positions
from arrakis.viz.html import information_flow_html, logit_attribution_html

logger = logging.getLogger(__name__)


@dataclass
class Section:
    title: str
    body: str  # HTML
    figures: list[str] = field(default_factory=list)  # data URIs


def figure_data_uri(plot: Any) -> str:
    """A Figure (or an Axes of one) as a PNG data URI."""
    figure = getattr(plot, "figure", plot)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def heads_text(heads: list[tuple[tuple[int, int], float]]) -> str:
    return ", ".join(f"L{layer}H{head} {score:.2f}" for (layer, head), score in heads) or "-"


@dataclass
class TaskPatching:
    """A task, how well the model does it, attribution patching of every head's z (noising, all
    positions) and the exact patched drop of its top heads (``task_patching``)."""

    task: Task
    accuracy: float
    result: Any  # a HeadPatching (attribution estimates)
    exact: dict[tuple[int, int], float]  # (layer, head) -> the exact drop in the metric when patched

    @property
    def top_heads(self) -> list[tuple[int, int]]:
        return list(self.exact)


def demo_task(model: HookedAutoModel, n: int = 8) -> Task:
    """The demos' task: IOI (a model with a tokenizer), else induction on 30-token halves."""
    if model.tokenizer is None:
        return induction(model, n=n)
    return ioi(model, n=n)


def task_patching(model: HookedAutoModel, task: Task | None = None, k: int = 5) -> TaskPatching:
    """``task`` (default ``demo_task``): accuracy, attribution patching of every head's z, and
    the top ``k`` heads patched exactly (only those k run, so it stays cheap)."""
    task = demo_task(model) if task is None else task
    accuracy = task.accuracy(model)
    result = WriteReadAnalyzer(model).patch_heads(task, "z", method="attribution")
    top = result.top_heads(k)
    patched = patch_heads_exact(
        model, task.clean_ids, task.corrupted_ids, task.attention_mask, task.dst, task.metric, channel="z", heads=top
    )
    drops = result.clean_metric - patched.mean(0)  # the mean drop: m_clean - m_patched
    return TaskPatching(task, accuracy, result, {head: float(drops[head]) for head in top})


class Report:
    """The analyses of one model, as HTML.

    Args:
        model: a HookedAutoModel.
        prompt: text (needs a tokenizer) or token ids for the flow trace; by default a
            repeated random token sequence, where induction heads carry the flow.
        src, dst: the flow's source and destination (token strings or ids); by default, on
            the default prompt, the token after the first occurrence of a repeated token
            and that token's second occurrence.
        role_threshold: heads at or above this role score are listed.
    """

    def __init__(
        self,
        model: HookedAutoModel,
        *,
        prompt: str | torch.Tensor | None = None,
        src: Any = None,
        dst: Any = None,
        role_threshold: float = 0.3,
        title: str | None = None,
    ) -> None:
        self.model, self.tool = model, WriteReadAnalyzer(model)
        self.prompt, self.src, self.dst = prompt, src, dst
        self.role_threshold = role_threshold
        self.title = title or f"arrakis report: {model.cfg.family}, {model.cfg.n_layers} layers"
        self._sections: list[Section] | None = None

    def sections(self) -> list[Section]:
        if self._sections is None:
            steps = [self._model_card, self._write_heads, self._attribution, self._roles, self._composition, self._flow]
            steps += [self._task, self._task_circuit]
            self._sections = [step() for step in progress_bar(steps, "report", "section")]
        return self._sections

    def _model_card(self) -> Section:
        c = self.model.cfg
        rows = [[k, v] for k, v in c.to_dict().items()]
        rows.append(["tokenizer", "yes" if self.model.tokenizer is not None else "no"])
        return Section("Model", table(["field", "value"], rows))

    def _write_heads(self) -> Section:
        from arrakis.viz import plot_head_scores

        writes = [self.tool.identify_write_heads(layer) for layer in range(self.model.cfg.n_layers)]
        rows = [[s.layer, " ".join(f"H{h}" for _, h in s), f"{s.covered():.0%}"] for s in writes]
        body = "<p>Heads making up 80% of each layer's writing, ||W_V W_O||_F (folded weights).</p>"
        return Section(
            "Write heads",
            body + table(["layer", "write heads", "share"], rows),
            [figure_data_uri(plot_head_scores(writes))],
        )

    @functools.cached_property
    def roles(self) -> Any:
        """Head roles, computed once for the roles and the circuit sections."""
        return self.tool.head_roles()

    def _roles(self) -> Section:
        roles = self.roles
        rows = []
        for role in ROLES:
            top = [(h, v) for h, v in roles.top(role, 5) if v >= self.role_threshold]
            rows.append([role.replace("_", "-"), heads_text(top)])
        body = f"<p>Scores on {html.escape(roles.source)} (TransformerLens's detect_head, 'mul').</p>"
        return Section(
            "Head roles",
            body + table(["role", f"heads scoring >= {self.role_threshold}"], rows),
            [figure_data_uri(roles.plot())],
        )

    def _composition(self) -> Section:
        scores = self.tool.composition_scores("K")
        circuit = self.tool.circuits("K", writer_role="previous_token", reader_role="induction", roles=self.roles)
        rows = [
            [f"L{e.writer[0]}H{e.writer[1]}", f"L{e.reader[0]}H{e.reader[1]}", f"{e.score:.3f}", f"{e.ratio:.1f}x"]
            for e in circuit
        ]
        body = (
            f"<p>K-composition scores; random matrices score {scores.baseline:.3f} (1/sqrt(d_model)). "
            "The induction circuit: previous-token heads whose output induction heads read as keys.</p>"
            + table(["writer", "reader", "score", "x baseline"], rows)
        )
        figures = [figure_data_uri(scores.plot())]
        if circuit:
            figures.append(figure_data_uri(circuit.plot()))
            writer, reader = circuit[0].writer, circuit[0].reader
            reads = self.tool.identify_read_heads(reader[0], dim_idx=writer, channel="k")
            body += f"<p>Read heads of layer {reader[0]} for writer L{writer[0]}H{writer[1]} (K-composition):</p>"
            body += table(
                ["head", "score", "share"],
                [[f"L{layer}H{h}", f"{reads.scores[h]:.3f}", f"{reads.shares[h]:.0%}"] for layer, h in reads],
            )
        return Section("Composition and circuits", body, figures)

    def _attribution(self) -> Section:
        """Which heads write the prediction at dst (the flow's question), signed."""
        ids, src, dst, described = self.flow_question()
        logits = self.model.run_with_cache(ids[:, : dst + 1], names=["logits"])[0].logits[0, dst]
        token = int(ids[0, src]) if self.prompt is None else int(logits.argmax())
        result = self.tool.logit_attribution(ids[:, : dst + 1], token, pos=dst)
        body = (
            f"<p>{html.escape(described)}. Direct logit attribution of the token at position {dst}: each head's "
            "output as it stands in the final residual stream, through the final norm (its scale frozen) and "
            "the unembedding; positive heads write the token, negative heads suppress it, and with the other "
            "components they add up to the logit.</p>" + logit_attribution_html(result)
        )
        return Section("Logit attribution", body, [figure_data_uri(result.plot())])

    def _flow(self) -> Section:
        ids, src, dst, described = self.flow_question()
        # repeated random tokens: measure the induction continuation (the token after src's
        # first occurrence), whatever the model's top prediction is; a prompt: its top prediction
        target = int(ids[0, src]) if self.prompt is None else None
        flow = self.tool.trace_information_flow(ids, src_pos=src, dst_pos=dst, target=target, verify=True)
        body = (
            f"<p>{html.escape(described)}. Head scores estimate, from one forward and one backward pass, how much "
            "the metric drops when a head's dst &lt;- src attention edge is knocked out; the exact knockouts "
            "stand beside them.</p>" + information_flow_html(flow)
        )
        return Section("Information flow", body, [figure_data_uri(flow.plot())])

    def _task(self) -> Section:
        """Which heads a task needs: attribution patching of every head's z, its top heads exact."""
        found = task_patching(self.model)
        task, result = found.task, found.result
        normalised = result.normalised
        rows = [
            [
                f"L{layer}H{head}",
                f"{float(result.scores[layer, head]):+.3f}",
                f"{float(normalised[layer, head]):+.1%}",
                f"{found.exact[layer, head]:+.3f}",
            ]
            for layer, head in found.top_heads
        ]
        body = (
            f"<p>{html.escape(repr(task))}: the model's top prediction is the answer on {found.accuracy:.0%} of the "
            f"{task.n} examples; {html.escape(task.metric_name)} clean {task.clean_metric:.3f}, corrupted "
            f"{task.corrupted_metric:.3f}. Each head's output (z, all positions) is patched in from the corrupted "
            "run: the heatmap shows the estimated drop in the metric (attribution patching, one forward and one "
            "backward pass per run); the top heads are also patched exactly.</p>"
            + table(["head", "estimated drop", "of the gap", "exact drop"], rows)
            + "".join(f"<p>Note: {html.escape(note)}</p>" for note in result.notes)
        )
        return Section(f"Task: {task.name}", body, [figure_data_uri(result.plot())])

    def _task_circuit(self) -> Section:
        """The task's writer -> reader edges scored (EAP-IG), a faithfulness curve run exactly
        beside random circuits, and the top edges patched alone, exactly."""
        task = demo_task(self.model)
        result = self.tool.task_circuit(task, progress=False)
        n = result.n_edges
        sizes = sorted({0, *(size for size in (10, 100, 1000, 10000) if size < n), n})
        curve = result.curve(sizes, n_random=1)
        checked = result.verify(10)
        rows = [[html.escape(name), f"{score:+.3f}", f"{exact:+.3f}"] for name, score, exact in checked.rows]
        points = ", ".join(
            f"{size}: {value:.2f} (random {rand:.2f})"
            for size, value, rand in zip(curve.sizes, curve.faithfulness, curve.random, strict=True)
        )
        body = (
            f"<p>Every edge from a writer (the embeddings, a head's output, an MLP) to a reader (a head's Q, K or V "
            f"input, an MLP, the logits) of the {n} in this model, scored on {html.escape(repr(task))}: the estimated "
            f"drop in {html.escape(task.metric_name)} when that edge alone is patched from the corrupted run (EAP-IG, "
            f"{result.steps} steps). Faithfulness of the top-N edges, run exactly with every other edge patched "
            f"(1: the clean behaviour, 0: the corrupted), beside a random circuit of each size: {points}; area under "
            f"the curve {curve.area:.3f} (random {curve.random_area:.3f}). The top 10 edges patched alone, exactly "
            f"(Spearman {checked.spearman:.2f}):</p>"
            + table(["edge", "estimated drop", "exact drop"], rows)
            + "".join(f"<p>Note: {html.escape(note)}</p>" for note in result.notes)
        )
        figures = [figure_data_uri(result.plot("graph", n=40)), figure_data_uri(curve.plot())]
        return Section(f"Task circuit: {task.name}", body, figures)

    def flow_question(self) -> tuple[torch.Tensor, int, int, str]:
        """(ids, src, dst, description) of the flow trace and logit attribution: the prompt's
        src and dst tokens (by default its first and last), or repeated random tokens. A token
        that is not in the prompt raises here, before any section is computed."""
        if self.prompt is None:
            ids, src, dst = induction_question(self.model)
            return ids, src, dst, f"Repeated random tokens: from position {src} (after the first occurrence) to {dst}"

        ids = self.model.to_tokens(self.prompt) if isinstance(self.prompt, str) else self.prompt
        src_pos = dst_pos = None
        src, dst = self.src, self.dst
        if src is None or dst is None:
            n = self.model.check_input_ids(ids).shape[1]
            src_pos, dst_pos = (0 if src is None else None), (n - 1 if dst is None else None)
        ids, s, d = resolve_positions(self.model, ids, src, dst, src_pos, dst_pos, None)
        return ids, s, d, f"Prompt {self.prompt!r}: from position {s} to {d}"

    def to_html(self) -> str:
        generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        parts = [f"<h1>{html.escape(self.title)}</h1><p class='meta'>generated {generated} by arrakis</p>"]
        for section in self.sections():
            images = "".join(
                f"<img class='figure' alt='{html.escape(section.title)}' src='{uri}'>" for uri in section.figures
            )
            parts.append(f"<section><h2>{html.escape(section.title)}</h2>{section.body}{images}</section>")
        return PAGE.format(title=html.escape(self.title), body="\n".join(parts))

    def save(self, path: str | Path) -> Path:
        """Write the report as one self-contained HTML file; returns its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_html(), encoding="utf-8")
        logger.info("report written to %s", path)
        return path


# The script records how many figures decoded, so a headless browser can be asked.
PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }}
th {{ background: #f3f3f3; }}
img.figure {{ max-width: 100%; display: block; margin: 0.5em 0 1.5em; }}
.meta {{ color: #777; }}
</style></head>
<body>
{body}
<p id="figures-status" data-loaded="0">figures loading</p>
<script>
window.addEventListener("load", function () {{
  var images = Array.prototype.slice.call(document.querySelectorAll("img.figure"));
  var ok = images.filter(function (im) {{ return im.complete && im.naturalWidth > 0; }}).length;
  var status = document.getElementById("figures-status");
  status.setAttribute("data-loaded", String(ok));
  status.setAttribute("data-total", String(images.length));
  status.textContent = ok + " of " + images.length + " figures rendered";
}});
</script>
</body></html>
"""
