r"""Information-flow routes: how much of each part written into a position's residual
stream makes up the whole (Ferrando & Voita 2024, "Information Flow Routes", after ALTI).

At layer l, position i's residual stream after attention is the sum of its parts:

    y_i = x_i                                   (the residual itself)
        + sum_h sum_{j <= i} A[h, i, j] v_j W_O[h]   (each head's value contribution from j;
                                                      v_j includes b_V, which so counts once)
        + b_O

The importance of a part z for the whole y is its proximity max(||y||_1 - ||y - z||_1, 0),
normalised over all parts of y so that they sum to 1. Influence then propagates layer by
layer from a one-hot source: f_l(i) = sum_parts importance * f_{l-1}(source of the part),
where the residual's source is i itself, a head part's source is j, and b_O has none. MLPs
are position-local, so influence passes through them unchanged.

All functions are pure. Rows (query positions) are processed a chunk at a time, so memory
stays at chunk x heads x keys x d_model floats, never T^2 x H x D.
"""

from __future__ import annotations

import torch
from torch import Tensor

RESIDUAL = -1  # the "head" index of a residual (stay-in-place) hop in a route


def l1(x: Tensor) -> Tensor:
    return x.abs().sum(-1)


def part_importances(
    y: Tensor, residual: Tensor, pattern: Tensor, value_out: Tensor, b_O: Tensor, *, out: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Normalised proximities of every part of a few rows.

    Args:
        y: [rows, D] the wholes (residual + attention output).
        residual: [rows, D] the residual stream entering attention.
        pattern: [head, rows, keys] attention weights of those rows.
        value_out: [keys, head, D] v_j W_O[h] for every key position j.
        b_O: [D] the output bias (or [rows, D], one per row, where a post-norm scales it).
        out: optional scratch space of at least rows * keys * D floats, reused between calls.

    Returns:
        (residual [rows], heads [head, rows, keys], bias [rows]); for each row they are
        non-negative and sum to 1 (or are all 0 if no part is close to the whole).
    """
    n_heads, n_rows, n_keys = pattern.shape
    norm_y = l1(y)  # [rows]
    heads = torch.empty(n_heads, n_rows, n_keys, dtype=y.dtype, device=y.device)
    size = n_rows * n_keys * y.shape[-1]
    if out is None or out.numel() < size:
        out = torch.empty(size, dtype=y.dtype, device=y.device)
    diff = out[:size].view(n_rows, n_keys, y.shape[-1])
    for h in range(n_heads):  # one head at a time: [rows, keys, D] of scratch, reused
        # y - A[h, i, j] v_j W_O[h]: [rows, 1, D] - [rows, keys, 1] * [1, keys, D]
        torch.addcmul(y[:, None, :], pattern[h, :, :, None], value_out[None, :, h], value=-1.0, out=diff)
        heads[h] = norm_y[:, None] - torch.linalg.vector_norm(diff, ord=1, dim=-1)
    heads.clamp_min_(0)
    res = (norm_y - l1(y - residual)).clamp_min(0)
    bias = (norm_y - l1(y - b_O)).clamp_min(0)
    total = res + heads.sum((0, 2)) + bias
    scale = torch.where(total > 0, 1 / total.clamp_min(torch.finfo(total.dtype).tiny), 0.0)
    return res * scale, heads.mul_(scale[None, :, None]), bias * scale


def chunked_importances(
    y: Tensor,
    residual: Tensor,
    pattern: Tensor,
    value_out: Tensor,
    b_O: Tensor,
    *,
    first_key_row: int = 0,
    budget: int = 1 << 22,
):
    """``part_importances`` a chunk of rows at a time, with a scratch space of about
    ``budget`` floats reused throughout. Row r is query position ``first_key_row + r``, so a
    chunk only needs the keys up to its last row (attention is causal): the heads tensor it
    yields is [head, chunk_rows, keys of the chunk]. Yields (row slice, res, heads, bias)."""
    _, n_rows, n_keys = pattern.shape
    d_model = y.shape[-1]
    chunk = max(1, min(n_rows, budget // max(1, n_keys * d_model)))
    scratch = torch.empty(chunk * n_keys * d_model, dtype=y.dtype, device=y.device)
    for start in range(0, n_rows, chunk):
        rows = slice(start, min(start + chunk, n_rows))
        keys = min(n_keys, first_key_row + rows.stop)
        yield (
            rows,
            *part_importances(
                y[rows],
                residual[rows],
                pattern[:, rows, :keys],
                value_out[:keys],
                b_O[rows] if b_O.dim() == 2 else b_O,
                out=scratch,
            ),
        )
