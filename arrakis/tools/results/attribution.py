"""``LogitAttribution``: which heads (and other components) write a token's logit, signed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class LogitAttribution:
    """Direct logit attribution at one position (docs/mathematics.md#write-heads).

    Attributes:
        heads: [n_layers, n_heads] each head's direct contribution to the logit (difference):
            positive heads write the token, negative heads suppress it.
        components: the other parts, in forward order ("embed", "pos_embed", "L3 attn bias",
            "L3 mlp", "bias": the final norm's and the unembedding's biases).
        total: the sum of every contribution; ``logit`` the model's own logit (difference)
            before any final soft-capping: they agree to float rounding.
        token, foil, pos: what was attributed where; ``token_str``, ``foil_str`` where known.
            Of a task: None where its examples differ.
        n_examples: of a task, how many examples the numbers are the means over (else None).
        writers, suppressors: heads sorted by contribution, positive and negative.
    """

    def __init__(
        self,
        heads: Tensor,
        components: dict[str, float],
        *,
        logit: float,
        token: int | None,
        pos: int | None,
        foil: int | None = None,
        token_str: str | None = None,
        foil_str: str | None = None,
        notes: list[str] | None = None,
        n_examples: int | None = None,
    ) -> None:
        self.heads = heads.detach().float().cpu()
        self.components = dict(components)
        self.logit, self.foil, self.n_examples = float(logit), foil, n_examples
        self.token = None if token is None else int(token)
        self.pos = None if pos is None else int(pos)
        self.token_str, self.foil_str = token_str, foil_str
        self.notes = list(notes or [])

    @property
    def total(self) -> float:
        return float(self.heads.double().sum()) + sum(self.components.values())

    def _ranked(self, sign: int) -> list[tuple[int, int]]:
        flat = [(float(v), layer, head) for (layer, head), v in _items(self.heads) if sign * v > 0]
        flat.sort(key=lambda item: (-sign * item[0], item[1:]))
        return [(layer, head) for _, layer, head in flat]

    @property
    def writers(self) -> list[tuple[int, int]]:
        """Heads that write the token (positive contribution), strongest first."""
        return self._ranked(+1)

    @property
    def suppressors(self) -> list[tuple[int, int]]:
        """Heads that suppress it (negative contribution), strongest first."""
        return self._ranked(-1)

    def describe(self) -> str:
        target = repr(self.token_str) if self.token_str is not None else str(self.token)
        if self.token is None:
            target = "of each example's answer"
        if self.foil is not None:
            target += f" - {self.foil_str!r}" if self.foil_str is not None else f" - {self.foil}"
        where = f"position {self.pos}" if self.pos is not None else "each example's dst"
        text = f"logit {target} at {where}: {self.logit:.3f}"
        return text if self.n_examples is None else f"mean {text} over {self.n_examples} examples"

    def to_dict(self) -> dict[str, Any]:
        return {
            "heads": self.heads.tolist(),
            "components": self.components,
            "logit": self.logit,
            "total": self.total,
            "token": self.token,
            "foil": self.foil,
            "pos": self.pos,
            "token_str": self.token_str,
            "foil_str": self.foil_str,
            "writers": [list(h) for h in self.writers[:10]],
            "suppressors": [list(h) for h in self.suppressors[:10]],
            "notes": self.notes,
            "n_examples": self.n_examples,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogitAttribution:
        return cls(
            torch.tensor(data["heads"]),
            data["components"],
            logit=data["logit"],
            token=data["token"],
            pos=data["pos"],
            foil=data.get("foil"),
            token_str=data.get("token_str"),
            foil_str=data.get("foil_str"),
            notes=data.get("notes"),
            n_examples=data.get("n_examples"),
        )

    def plot(self) -> Figure:
        """Every head's contribution (diverging colours around 0) and the other components."""
        from arrakis.viz.attribution import plot_logit_attribution

        return plot_logit_attribution(self)

    def _repr_html_(self) -> str:
        from arrakis.viz.html import logit_attribution_html

        return logit_attribution_html(self)

    def __repr__(self) -> str:
        def heads(items: list[tuple[int, int]]) -> str:
            return ", ".join(f"L{layer}H{head} {float(self.heads[layer, head]):+.3f}" for layer, head in items[:4])

        return (
            f"LogitAttribution({self.describe()}; writers {heads(self.writers) or '-'}; "
            f"suppressors {heads(self.suppressors) or '-'})"
        )


def _items(heads: Tensor) -> list[tuple[tuple[int, int], float]]:
    n_layers, n_heads = heads.shape
    return [((layer, head), float(heads[layer, head])) for layer in range(n_layers) for head in range(n_heads)]
