"""Results of the tools: small typed objects that also behave as what the original returned.

- ``HeadSelection`` is the list of ``(layer, head)`` tuples, and carries every head's score
  and share, the method, the threshold and the baseline;
- ``CompositionScores`` is the [n_layers, n_heads, n_layers, n_heads] tensor, labelled;
- ``HeadRoles`` holds previous-token, duplicate-token and induction scores per head;
- ``Circuit`` is the list of writer -> reader edges, joined with head roles.

Every result has ``to_dict()`` (JSON-ready) and ``from_dict()``, a ``plot()`` that returns
a matplotlib Figure (``arrakis.viz``, imported on demand) and a ``_repr_html_`` for notebooks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from arrakis.circuits import heads as head_math
from arrakis.circuits.roles import ROLES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Head = tuple[int, int]


class HeadSelection(list):
    """The selected heads as a list of ``(layer, head)``, strongest first, with the evidence.

    Attributes:
        layer: the layer the heads were chosen from.
        scores, shares: one float per head of that layer (index = head).
        method: how scores were computed, e.g. "weights", "data", "weights-direction",
            "direction-q", "composition-k".
        threshold: the share of the layer's total the selection covers at least.
        baseline: the score an unremarkable head would get (1.0 for isotropic reading,
            1/sqrt(d_model) for composition), or None where there is none.
        notes: remarks that qualify the numbers (e.g. grouped-query attention).
    """

    def __init__(
        self,
        heads: list[Head],
        *,
        layer: int,
        scores: list[float],
        shares: list[float],
        method: str,
        threshold: float,
        baseline: float | None = None,
        notes: list[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(tuple(h) for h in heads)
        self.layer = layer
        self.scores = [float(s) for s in scores]
        self.shares = [float(s) for s in shares]
        self.method = method
        self.threshold = float(threshold)
        self.baseline = baseline
        self.notes = list(notes or [])
        self.extra = dict(extra or {})

    @classmethod
    def from_scores(
        cls,
        layer: int,
        scores: Tensor,
        threshold: float,
        method: str,
        *,
        baseline: float | None = None,
        notes: list[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> HeadSelection:
        """The smallest set of heads, strongest first, whose shares of ``scores`` [head]
        (non-negative) add up to at least ``threshold``."""
        scores = scores.detach().float().cpu()
        chosen = head_math.select_by_share(scores, threshold)
        return cls(
            [(layer, h) for h in chosen],
            layer=layer,
            scores=scores.tolist(),
            shares=head_math.shares(scores).tolist(),
            method=method,
            threshold=threshold,
            baseline=baseline,
            notes=notes,
            extra=extra,
        )

    @property
    def heads(self) -> list[Head]:
        return list(self)

    def covered(self) -> float:
        """The share of the layer's total that the selected heads make up."""
        return sum(self.shares[h] for _, h in self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "heads": [list(h) for h in self],
            "layer": self.layer,
            "scores": self.scores,
            "shares": self.shares,
            "method": self.method,
            "threshold": self.threshold,
            "baseline": self.baseline,
            "notes": self.notes,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadSelection:
        data = dict(data)
        return cls([tuple(h) for h in data.pop("heads")], **data)

    def plot(self, values: str = "scores") -> Figure:
        """The layer's heads as a 1 x n_heads heatmap, selected heads outlined. For several
        layers, pass a list of selections to ``arrakis.viz.plot_head_scores``."""
        from arrakis.viz.heads import plot_head_scores

        return plot_head_scores(self, values=values)

    def _repr_html_(self) -> str:
        from arrakis.viz.html import head_selection_html

        return head_selection_html(self)

    def __repr__(self) -> str:
        body = ", ".join(f"L{layer}H{head} ({self.shares[head]:.0%})" for layer, head in self)
        return f"HeadSelection([{body}], method={self.method!r}, covers {self.covered():.0%} >= {self.threshold:.0%})"


class CompositionScores(torch.Tensor):
    """Composition scores [writer_layer, writer_head, reader_layer, reader_head].

    A tensor (index it, compare it, pass it to torch) that also knows its ``mode`` ("Q",
    "K" or "V"), whether the weights were ``folded``, and the ``baseline`` 1/sqrt(d_model)
    that random matrices score. Operations on it return plain tensors.
    """

    mode: str
    folded: bool
    baseline: float
    notes: list[str]  # what the weight-based score leaves out (rotary, q/k norm scales)

    @staticmethod
    def __new__(
        cls, scores: Tensor, *, mode: str, folded: bool, baseline: float, notes: list[str] | None = None
    ) -> CompositionScores:
        obj = torch.Tensor._make_subclass(cls, scores.detach())
        obj.mode, obj.folded, obj.baseline, obj.notes = mode, folded, float(baseline), list(notes or [])
        return obj

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))

    @property
    def tensor(self) -> Tensor:
        return self.as_subclass(Tensor)

    def top(self, k: int = 10) -> list[tuple[Head, Head, float]]:
        """The k strongest (writer, reader, score) edges."""
        t = self.tensor
        n_layers, n_heads = t.shape[:2]
        values, flat = t.flatten().topk(min(k, t.numel()))
        out = []
        for value, index in zip(values.tolist(), flat.tolist(), strict=True):
            l1, h1, l2, h2 = torch.unravel_index(torch.tensor(index), (n_layers, n_heads, n_layers, n_heads))
            out.append(((int(l1), int(h1)), (int(l2), int(h2)), float(value)))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "folded": self.folded,
            "baseline": self.baseline,
            "notes": self.notes,
            "scores": self.tensor.tolist(),
        }

    def plot(self) -> Figure:
        """The (L*H) x (L*H) writer x reader matrix, colours diverging at the baseline."""
        from arrakis.viz.composition import plot_composition

        return plot_composition(self)

    def _repr_html_(self) -> str:
        from arrakis.viz.html import composition_html

        return composition_html(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompositionScores:
        scores = torch.tensor(data["scores"], dtype=torch.float32)
        return cls(scores, mode=data["mode"], folded=data["folded"], baseline=data["baseline"], notes=data.get("notes"))

    def __repr__(self) -> str:
        n_layers, n_heads = self.shape[:2]
        (w, r, s), *_ = self.top(1) or [((0, 0), (0, 0), 0.0)]
        return (
            f"CompositionScores({self.mode}, {n_layers} layers x {n_heads} heads, folded={self.folded}, "
            f"baseline {self.baseline:.3f}, strongest L{w[0]}H{w[1]} -> L{r[0]}H{r[1]} {s:.3f})"
        )

    def __reduce_ex__(self, protocol: int):
        return (_rebuild_composition, (self.to_dict(),))


def _rebuild_composition(data: dict[str, Any]) -> CompositionScores:
    return CompositionScores.from_dict(data)


@dataclass
class HeadRoles:
    """Role scores per head, each [n_layers, n_heads] (see ``arrakis.circuits.roles``)."""

    previous_token: Tensor
    duplicate_token: Tensor
    induction: Tensor
    n_tokens: int  # positions per sequence the patterns came from
    n_sequences: int
    source: str  # "repeated random tokens (seq_len=..., n_repeats=..., seed=...)" or "input_ids"

    def scores(self, role: str) -> Tensor:
        if role not in ROLES:
            raise ValueError(f"unknown head role {role!r}; expected one of {', '.join(ROLES)}")
        return getattr(self, role)

    def top(self, role: str, k: int = 5) -> list[tuple[Head, float]]:
        """The k heads with the highest score for a role, strongest first."""
        scores = self.scores(role)
        values, flat = scores.flatten().topk(min(k, scores.numel()))
        n_heads = scores.shape[1]
        return [((i // n_heads, i % n_heads), v) for v, i in zip(values.tolist(), flat.tolist(), strict=True)]

    def heads(self, role: str, threshold: float) -> list[Head]:
        """Heads scoring at least ``threshold`` for a role, strongest first."""
        return [head for head, value in self.top(role, self.scores(role).numel()) if value >= threshold]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for role in ROLES:
            data[role] = getattr(self, role).tolist()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadRoles:
        data = dict(data)
        for role in ROLES:
            data[role] = torch.tensor(data[role], dtype=torch.float32)
        return cls(**data)

    def plot(self) -> Figure:
        """Three layer x head heatmaps: previous-token, duplicate-token, induction."""
        from arrakis.viz.roles import plot_head_roles

        return plot_head_roles(self)

    def _repr_html_(self) -> str:
        from arrakis.viz.html import head_roles_html

        return head_roles_html(self)

    def __repr__(self) -> str:
        """A line per role with its strongest heads, never the whole tensors."""
        n_layers, n_heads = self.previous_token.shape
        lines = [f"HeadRoles({n_layers} layers x {n_heads} heads, on {self.source}; strongest:"]
        for role in ROLES:
            top = ", ".join(f"L{layer}H{head} {value:.2f}" for (layer, head), value in self.top(role, 3))
            lines.append(f"  {role}: {top})" if role == ROLES[-1] else f"  {role}: {top}")
        return "\n".join(lines)


@dataclass
class CircuitEdge:
    """One writer -> reader composition edge, with the roles of both heads."""

    writer: Head
    reader: Head
    score: float
    ratio: float  # score / baseline
    writer_roles: dict[str, float] = field(default_factory=dict)
    reader_roles: dict[str, float] = field(default_factory=dict)
    causal_effect: float | None = None  # path patching (verify=True): what the reader does differently
    ratio_to_null: float | None = None  # that effect over the mean effect of random pairs of the same layers

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "writer": list(self.writer), "reader": list(self.reader)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CircuitEdge:
        return cls(**{**data, "writer": tuple(data["writer"]), "reader": tuple(data["reader"])})


class Circuit(list):
    """Writer -> reader edges well above the composition baseline, strongest first.

    A list of ``CircuitEdge``; also holds the ``mode``, the ``baseline``, the ``min_ratio``
    edges had to reach, and the role filters applied.
    """

    def __init__(
        self,
        edges: list[CircuitEdge],
        *,
        mode: str,
        baseline: float,
        min_ratio: float,
        writer_role: str | None = None,
        reader_role: str | None = None,
        role_threshold: float | None = None,
        verification: dict[str, Any] | None = None,
        notes: list[str] | None = None,
    ) -> None:
        super().__init__(edges)
        self.mode, self.baseline, self.min_ratio = mode, float(baseline), float(min_ratio)
        self.writer_role, self.reader_role, self.role_threshold = writer_role, reader_role, role_threshold
        self.verification = verification
        self.notes = list(notes or [])  # e.g. why there is no edge

    def to_dict(self) -> dict[str, Any]:
        return {
            "edges": [e.to_dict() for e in self],
            "mode": self.mode,
            "baseline": self.baseline,
            "min_ratio": self.min_ratio,
            "writer_role": self.writer_role,
            "reader_role": self.reader_role,
            "role_threshold": self.role_threshold,
            "verification": self.verification,
            "notes": self.notes,
        }

    def summary(self) -> str:
        """One line: how many edges, and with path patching how many held against the null."""
        line = f"{len(self)} {self.mode}-composition edges >= {self.min_ratio:g} x baseline {self.baseline:.3f}"
        if self.verification is not None:
            held = sum(1 for e in self if e.ratio_to_null is not None and e.ratio_to_null > 3)
            line += (
                f"; path patching on {self.verification['n_tokens']} probe tokens: {held} of {len(self)} edges "
                f"move their reader > 3x as much as random pairs of the same layers"
            )
        return line

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Circuit:
        data = dict(data)
        return cls([CircuitEdge.from_dict(e) for e in data.pop("edges")], **data)

    def plot(self, min_role_score: float = 0.3) -> Figure:
        """The writer -> reader graph: heads by layer and index, coloured by strongest role."""
        from arrakis.viz.circuit import plot_circuit

        return plot_circuit(self, min_role_score=min_role_score)

    def _repr_html_(self) -> str:
        from arrakis.viz.html import circuit_html

        return circuit_html(self)

    def __repr__(self) -> str:
        lines = [f"Circuit({self.summary()})"]
        for e in self[:10]:
            causal = "" if e.causal_effect is None else f"  effect {e.causal_effect:.4f} ({e.ratio_to_null:.1f}x null)"
            edge = f"L{e.writer[0]}H{e.writer[1]} -> L{e.reader[0]}H{e.reader[1]}"
            lines.append(f"  {edge}  {e.score:.3f} ({e.ratio:.1f}x){causal}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)
