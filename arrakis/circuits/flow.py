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


def l1(x: Tensor) -> Tensor:
    return x.abs().sum(-1)


def part_importances(
    y: Tensor, residual: Tensor, pattern: Tensor, value_out: Tensor, b_O: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Normalised proximities of every part of a few rows.

    Args:
        y: [rows, D] the wholes (residual + attention output).
        residual: [rows, D] the residual stream entering attention.
        pattern: [head, rows, keys] attention weights of those rows.
        value_out: [keys, head, D] v_j W_O[h] for every key position j.
        b_O: [D] the output bias.

    Returns:
        (residual [rows], heads [head, rows, keys], bias [rows]); for each row they are
        non-negative and sum to 1 (or are all 0 if no part is close to the whole).
    """
    norm_y = l1(y)  # [rows]
    # [head, rows, keys, 1] * [head, 1, keys, D] -> [head, rows, keys, D]
    parts = pattern[..., None] * value_out.transpose(0, 1)[:, None]
    heads = (norm_y[None, :, None] - l1(y[None, :, None, :] - parts)).clamp_min(0)
    res = (norm_y - l1(y - residual)).clamp_min(0)
    bias = (norm_y - l1(y - b_O)).clamp_min(0)
    total = res + heads.sum((0, 2)) + bias
    scale = torch.where(total > 0, 1 / total.clamp_min(torch.finfo(total.dtype).tiny), 0.0)
    return res * scale, heads * scale[None, :, None], bias * scale


def chunked_importances(
    y: Tensor, residual: Tensor, pattern: Tensor, value_out: Tensor, b_O: Tensor, *, budget: int = 1 << 25
):
    """``part_importances`` a chunk of rows at a time, so that the [head, rows, keys, D]
    intermediate stays under ``budget`` floats. Yields (row slice, res, heads, bias)."""
    n_heads, n_rows, n_keys = pattern.shape
    chunk = max(1, budget // max(1, n_heads * n_keys * y.shape[-1]))
    for start in range(0, n_rows, chunk):
        rows = slice(start, min(start + chunk, n_rows))
        yield (rows, *part_importances(y[rows], residual[rows], pattern[:, rows], value_out, b_O))
