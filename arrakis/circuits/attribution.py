r"""Edge attribution: what knocking out one attention edge does to a metric, to first order,
for every edge at once (attribution patching: Nanda 2023; Syed et al. 2023; Kramar et al.
2024), and the routes that chains of such edges form.

Knocking out edge i <- j of a head (Geva et al. 2023) zeroes A[i, j] and renormalises the
row, so for the row's other keys k:

    dA[i, j] = -A[i, j]            dA[i, k] = A[i, k] A[i, j] / (1 - A[i, j])

With g = dm/dA (one backward pass gives it for every layer), the first-order change in the
metric m is sum_k g[i, k] dA[i, k]; with S_i = sum_k g[i, k] A[i, k] it simplifies to

    dm ~ A[i, j] (S_i - g[i, j]) / (1 - A[i, j])

and the *drop* -dm is what ``edge_attributions`` returns: positive when the edge carries
something the metric needs, negative when it works against it.

Routes. An edge of layer l from position j to position i (j < i) links node (l, j) to
node (l + 1, i) of a graph over (layer boundary, position); staying in a position's
residual stream from one layer to the next is free. A route src -> k -> ... -> dst climbs
in layer at each hop and is as strong as its weakest edge; ``strongest_routes`` finds the
strongest ones exactly, by a beam of the ``n`` best bottlenecks at every node (the
bottleneck is monotone in each edge, so the n best routes to a node extend the n best
routes to its predecessors).
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-6  # 1 - A is clamped here: an edge holding all of its row's attention


def edge_attributions(pattern: Tensor, grad: Tensor) -> Tensor:
    """The first-order drop in the metric when each edge is knocked out.

    Args:
        pattern: [..., query_pos, key_pos] attention weights (each row sums to 1 over its keys).
        grad: the same shape, dm/dA.

    Returns:
        [..., query_pos, key_pos]: A (g - S) / (1 - A), with S the row's sum of g * A.
    """
    row = (grad * pattern).sum(-1, keepdim=True)  # S_i: [..., query_pos, 1]
    return pattern * (grad - row) / (1 - pattern).clamp_min(EPS)


def strongest_routes(edges: list[Tensor], n: int, *, budget: int = 1 << 20) -> list[tuple[float, list]]:
    """The ``n`` strongest routes from row 0 to the last row through a stack of edge scores.

    Args:
        edges: one [head, rows, rows] tensor per layer, in layer order: ``edges[l][h, i, j]``
            is the strength of the hop j -> i (j < i) through head h of that layer. Only
            positive strengths (and j < i) count as edges.
        n: how many routes.
        budget: about how many candidate scores one step of the beam may hold; rows are
            processed a chunk at a time beyond it. Small chunks are also faster: buffers
            under the allocator's threshold are reused instead of faulted in afresh (measured
            at 500 tokens: 0.9 s against 1.7 s with one chunk of every row).

    Returns:
        [(strength, [(layer index, head, source row, target row), ...]), ...], strongest
        first, each route's strength the smallest of its hops' (ties: any order).
    """
    n_heads, n_rows, _ = edges[0].shape
    beam = torch.full((n_rows, n), -torch.inf)  # the n best bottlenecks of routes ending at each row
    beam[0, 0] = torch.inf  # the empty route at row 0
    pointers = []  # per layer [rows, n, 3]: (head or -1 to stay, source row, source slot)
    below = torch.ones(n_rows, n_rows, dtype=torch.bool).tril(-1)  # j < i
    chunk = max(1, min(n_rows, budget // max(1, (n_heads * n_rows + 1) * n)))
    for scores in edges:
        scores = torch.where(below & (scores > 0), scores.float(), -torch.inf)  # [head, rows, rows]
        new_beam = torch.empty_like(beam)
        layer_pointers = torch.empty(n_rows, n, 3, dtype=torch.long)
        for start in range(0, n_rows, chunk):
            rows = slice(start, min(start + chunk, n_rows))
            # hop: min(edge, route to its source): [rows, head, sources, 1] vs [1, 1, sources, n]
            hop = torch.minimum(scores[:, rows].transpose(0, 1)[..., None], beam[None, None])
            candidates = torch.cat([hop.flatten(1), beam[rows]], dim=1)  # the last n: stay in place
            top, flat = candidates.topk(n, dim=1)
            new_beam[rows] = top
            n_hop = n_heads * n_rows * n
            is_hop = flat < n_hop
            head = torch.where(is_hop, flat // (n_rows * n), -1)
            source = torch.where(is_hop, (flat // n) % n_rows, torch.arange(rows.start, rows.stop)[:, None])
            slot = torch.where(is_hop, flat % n, flat - n_hop)
            layer_pointers[rows] = torch.stack([head, source, slot], dim=-1)
        beam = new_beam
        pointers.append(layer_pointers)
    routes = []
    last = n_rows - 1
    for slot in range(n):
        strength = float(beam[last, slot])
        if not strength > 0 or strength == float("inf"):  # no route, or dst is src
            break
        hops, row, s = [], last, slot
        for index in range(len(edges) - 1, -1, -1):
            head, source, s = (int(x) for x in pointers[index][row, s])
            if head >= 0:
                hops.append((index, head, source, row))
            row = source
        routes.append((strength, hops[::-1]))
    return routes


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors (ties get their average rank); NaN
    when either is constant or has fewer than two values."""
    if x.numel() < 2:
        return float("nan")
    rx, ry = _ranks(x.double().flatten()), _ranks(y.double().flatten())
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = rx.norm() * ry.norm()
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


def _ranks(x: Tensor) -> Tensor:
    order = x.argsort()
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=x.dtype)
    for value in x.unique():  # average ranks over ties
        tied = x == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks
