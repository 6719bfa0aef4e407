"""Which writer -> reader pairs make a circuit: the composition scores filtered by head roles
and by their ratio to the baseline, strongest first (docs/mathematics.md#composition).

A pair (l1, h1) -> (l2, h2) is an edge when l1 < l2, its composition score is at least
``min_ratio`` x the baseline 1/sqrt(d_model), and, with a role filter, the writer (or the
reader) scores at least ``role_threshold`` for that role. An empty circuit says which
filter emptied it.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from arrakis.circuits.roles import ROLES
from arrakis.tools.base import check_choice, check_positive_int
from arrakis.tools.results import CircuitEdge, CompositionScores, HeadRoles


def check_filters(
    writer_role: str | None, reader_role: str | None, role_threshold: object, min_ratio: object, top_k: object
) -> int | None:
    """Checks the filters (before anything is computed); returns ``top_k`` (None: every edge)."""
    for role in (writer_role, reader_role):
        if role is not None:
            check_choice(role, ROLES, "head role")
    if isinstance(min_ratio, bool) or not isinstance(min_ratio, numbers.Real) or not min_ratio > 0:
        raise ValueError(f"min_ratio must be positive, got {min_ratio!r}")
    if top_k is not None:
        top_k = check_positive_int(top_k, "top_k")
    if (writer_role or reader_role) and (
        isinstance(role_threshold, bool) or not isinstance(role_threshold, numbers.Real) or not 0 < role_threshold <= 1
    ):
        raise ValueError(f"role_threshold must be in (0, 1] (role scores are attention shares), got {role_threshold!r}")
    return top_k


def circuit_edges(
    comp: CompositionScores,
    roles: HeadRoles | None,
    *,
    writer_role: str | None,
    reader_role: str | None,
    role_threshold: float,
    min_ratio: float,
    top_k: int | None,
) -> tuple[list[CircuitEdge], list[str]]:
    """The edges that pass the filters, strongest first (at most ``top_k``), each with both
    heads' role scores; and the notes (why the circuit is empty, where it is)."""
    n_layers = comp.tensor.shape[0]
    layer = torch.arange(n_layers, device=comp.tensor.device)
    allowed = (layer[:, None] < layer[None, :])[:, None, :, None].expand(comp.tensor.shape)  # [L, H, L, H]
    if writer_role:
        allowed = allowed & (roles.scores(writer_role) >= role_threshold)[:, :, None, None]
    if reader_role:
        allowed = allowed & (roles.scores(reader_role) >= role_threshold)[None, None, :, :]
    keep = allowed & (comp.tensor >= min_ratio * comp.baseline)
    index = keep.nonzero().tolist()
    values = [float(comp.tensor[tuple(i)]) for i in index]
    order = sorted(range(len(index)), key=lambda k: -values[k])[: top_k if top_k is not None else None]

    def role_dict(layer: int, head: int) -> dict[str, float]:
        if roles is None:
            return {}
        return {role: round(float(roles.scores(role)[layer, head]), 4) for role in ROLES}

    edges = [
        CircuitEdge(
            writer=(index[k][0], index[k][1]),
            reader=(index[k][2], index[k][3]),
            score=values[k],
            ratio=values[k] / comp.baseline,
            writer_roles=role_dict(index[k][0], index[k][1]),
            reader_roles=role_dict(index[k][2], index[k][3]),
        )
        for k in order
    ]
    if edges:
        return edges, []
    filters = {role: role_threshold for role in (writer_role, reader_role) if role}
    return edges, [why_no_edge(comp, allowed, min_ratio, roles, filters)]


def why_no_edge(
    comp: CompositionScores, allowed: Tensor, min_ratio: float, roles: HeadRoles | None, filters: dict[str, float]
) -> str:
    """Which filter emptied a circuit: the role filters (``filters``: role -> threshold), or
    min_ratio (naming the strongest pair the filters allow)."""
    if not allowed.any():
        counts = [f"{int((roles.scores(r) >= t).sum())} heads score >= {t:g} as {r}" for r, t in filters.items()]
        return f"no pair of heads in increasing layers passes the role filters ({'; '.join(counts)})"
    scores = comp.tensor.masked_fill(~allowed, -1.0)
    a, b, c, d = (int(i) for i in torch.unravel_index(scores.argmax(), scores.shape))
    ratio = float(scores[a, b, c, d]) / comp.baseline
    return (
        f"the strongest {comp.mode}-composition the role filters allow is L{a}H{b} -> L{c}H{d}, "
        f"{ratio:.2f}x the baseline: below min_ratio {min_ratio:g}"
    )
