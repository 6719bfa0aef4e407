"""``HeadPatching``: what patching each head's activation between a task's clean and corrupted
runs does to the task's metric."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class HeadPatching:
    """Activation patching of every head on a task (``WriteReadAnalyzer.patch_heads``).

    Attributes:
        per_example: [n, n_layers, n_heads] each example's effect of patching that head:
            noising, the drop m_clean - m_patched (the head carried something the metric
            needs); denoising, the recovery m_patched - m_corrupted (the head alone restores
            that much). Exact for ``method="exact"``, estimated for "attribution" and
            "integrated".
        scores: [n_layers, n_heads] their mean over examples.
        clean_metric, corrupted_metric: the task's mean metric on plain clean and corrupted runs.
        normalised: scores / (clean_metric - corrupted_metric): 1 is the whole gap.
        channel, positions, method, direction, steps, task, metric: what was patched, how.
        notes: what qualifies the numbers (grouped K/V, estimates, a small gap).
    """

    def __init__(
        self,
        per_example: Tensor,
        *,
        clean_metric: float,
        corrupted_metric: float,
        channel: str,
        positions: str | list[int],
        method: str,
        direction: str,
        steps: int | None = None,
        task: str = "task",
        metric: str = "logit_diff",
        notes: list[str] | None = None,
    ) -> None:
        self.per_example = per_example.detach().float().cpu()
        self.clean_metric, self.corrupted_metric = float(clean_metric), float(corrupted_metric)
        self.channel, self.positions, self.method, self.direction = channel, positions, method, direction
        self.steps = steps
        self.task, self.metric = task, metric
        self.notes = list(notes or [])

    @property
    def scores(self) -> Tensor:
        """[n_layers, n_heads] the mean effect over examples."""
        return self.per_example.mean(0)

    @property
    def gap(self) -> float:
        """clean_metric - corrupted_metric, what a full patch of the behaviour moves."""
        return self.clean_metric - self.corrupted_metric

    @property
    def normalised(self) -> Tensor:
        """scores / (clean_metric - corrupted_metric); NaN where the two runs do not differ."""
        return self.scores / self.gap if self.gap != 0 else torch.full_like(self.scores, float("nan"))

    @property
    def n(self) -> int:
        return int(self.per_example.shape[0])

    def top_heads(self, k: int = 10) -> list[tuple[int, int]]:
        """The ``k`` heads with the largest effect, strongest first, as ``(layer, head)``."""
        flat = self.scores.flatten()
        n_heads = self.scores.shape[1]
        order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), i))
        return [(i // n_heads, i % n_heads) for i in order[: max(0, int(k))]]

    def describe(self) -> str:
        """What was patched, in words: "noising z at all positions (exact), ioi, n=16"."""
        where = self.positions if isinstance(self.positions, str) else f"positions {self.positions}"
        steps = f", {self.steps} steps" if self.method == "integrated" and self.steps else ""
        return f"{self.direction} {self.channel} at {where} ({self.method}{steps}), {self.task}, n={self.n}"

    def summary(self, k: int = 5) -> str:
        """A few lines: what was patched, the metrics and their gap, the top heads, the notes."""
        effect = "drop in" if self.direction == "noising" else "recovery of"
        lines = [
            f"head patching: {self.describe()}",
            f"{self.metric}: clean {self.clean_metric:.3f}, corrupted {self.corrupted_metric:.3f} (gap {self.gap:.3f})",
            f"top heads by {effect} {self.metric} (normalised by the gap):",
        ]
        normalised = self.normalised
        for layer, head in self.top_heads(k):
            score, share = float(self.scores[layer, head]), float(normalised[layer, head])
            lines.append(f"  L{layer}H{head}: {score:+.3f} ({share:+.1%})")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_example": self.per_example.tolist(),
            "scores": self.scores.tolist(),
            "normalised": self.normalised.tolist(),
            "clean_metric": self.clean_metric,
            "corrupted_metric": self.corrupted_metric,
            "channel": self.channel,
            "positions": self.positions,
            "method": self.method,
            "direction": self.direction,
            "steps": self.steps,
            "task": self.task,
            "metric": self.metric,
            "top_heads": [list(h) for h in self.top_heads(10)],
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadPatching:
        return cls(
            torch.tensor(data["per_example"], dtype=torch.float32),
            clean_metric=data["clean_metric"],
            corrupted_metric=data["corrupted_metric"],
            channel=data["channel"],
            positions=data["positions"],
            method=data["method"],
            direction=data["direction"],
            steps=data.get("steps"),
            task=data.get("task", "task"),
            metric=data.get("metric", "logit_diff"),
            notes=data.get("notes"),
        )

    def plot(self) -> Figure:
        """Every head's effect as a [layer x head] heatmap (diverging around 0), top heads outlined."""
        from arrakis.viz.patching import plot_head_patching

        return plot_head_patching(self)

    def __repr__(self) -> str:
        heads = ", ".join(
            f"L{layer}H{head} {float(self.scores[layer, head]):+.3f}" for layer, head in self.top_heads(4)
        )
        notes = f"; {len(self.notes)} note(s): {self.notes[0]}" if self.notes else ""
        return (
            f"HeadPatching({self.describe()}; {self.metric} clean {self.clean_metric:.3f}, corrupted "
            f"{self.corrupted_metric:.3f}; top {heads}{notes})"
        )
