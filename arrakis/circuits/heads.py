r"""Write and read scores of attention heads, and the threshold rule that selects heads.

Write score of head h (docs/mathematics.md#write-heads):

- from weights: ||OV[h]||_F with OV = W_V' W_O, computed as sqrt(tr(S_V S_O)) from the
  d_head x d_head Grams S_V = W_V'^T W_V' and S_O = W_O W_O^T (no D x D matrix);
- from data: the mean over (real, unpadded) tokens of ||z[h] W_O[h]||_2, the size of what
  it writes;
- along a direction u: ||OV[h] u^||_2 = ||W_V' (W_O u^)||_2 from weights, and the mean of
  |<z[h] W_O[h], u^>| from data.

Read score of head h through channel c in {Q, K, V} for a direction u (docs/mathematics.md#read-heads):

    ||u^ W_c'[h]||_2 / (||W_c'[h]||_F / sqrt(D))

how much more than an average direction the head reads u; 1.0 is isotropic, since the mean
of ||u W||^2 over unit directions u is ||W||_F^2 / D.

Shares: share[h] = score[h] / sum(score). ``select_by_share`` takes the smallest set of
heads, strongest first (ties broken by head index), whose shares add up to the threshold.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def unit(direction: Tensor, like: Tensor | None = None) -> Tensor:
    """u / ||u|| (callers check that u is non-zero and finite), on ``like``'s device and dtype.

    u is first scaled by its largest entry, so that ||u|| neither overflows (u ~ 1e30 in
    float32) nor underflows, and only the unit vector is cast to ``like``'s dtype.
    """
    direction = direction / direction.abs().max()
    direction = direction / direction.norm()
    return direction if like is None else direction.to(device=like.device, dtype=like.dtype)


def ov_norms(W_V: Tensor, W_O: Tensor) -> Tensor:
    """||W_V[h] W_O[h]||_F per head: W_V [..., D, d_head], W_O [..., d_head, D] -> [...]."""
    S_V = W_V.transpose(-1, -2) @ W_V  # [..., d_head, d_head]
    S_O = W_O @ W_O.transpose(-1, -2)
    return (S_V * S_O).sum((-1, -2)).clamp_min(0).sqrt()


def ov_along(W_V: Tensor, W_O: Tensor, direction: Tensor) -> Tensor:
    """||OV[h] u^||_2 per head: how much the head can write along u."""
    # [..., d_head, D] x [D] -> [..., d_head];  [..., D, d_head] x [..., d_head] -> [..., D]
    return (W_V @ (W_O @ unit(direction, W_O)).unsqueeze(-1)).squeeze(-1).norm(dim=-1)


def written_sizes(z: Tensor, W_O: Tensor, direction: Tensor | None = None) -> Tensor:
    """Per token, the size of what each head writes: ||z[h] W_O[h]||_2, or |<z[h] W_O[h], u^>|
    along a direction. z [batch, pos, head, d_head], W_O [head, d_head, D] -> [batch, pos, head].

    Computed through the d_head x d_head Gram W_O W_O^T (or the d_head vector W_O u^), so
    no [batch, pos, head, D] tensor is formed."""
    if direction is not None:
        along = W_O @ unit(direction, W_O)  # [head, d_head, D] x [D] -> [head, d_head]
        return torch.einsum("bphk,hk->bph", z, along).abs()
    gram = W_O @ W_O.transpose(-1, -2)  # [head, d_head, d_head]
    return torch.einsum("bphk,hkl,bphl->bph", z, gram, z).clamp_min(0).sqrt()


def read_scores(W: Tensor, direction: Tensor) -> Tensor:
    """||u^ W[h]||_2 / (||W[h]||_F / sqrt(D)) for W [..., D, d_head] -> [...]."""
    d_model = W.shape[-2]
    along = (unit(direction, W) @ W).norm(dim=-1)  # [D] x [..., D, d_head] -> [..., d_head]
    average = W.flatten(-2).norm(dim=-1) / math.sqrt(d_model)
    return along / average.clamp_min(torch.finfo(W.dtype).tiny)


def shares(scores: Tensor) -> Tensor:
    """score / sum(score); all zeros stay zeros."""
    total = scores.sum()
    return scores / total if total > 0 else torch.zeros_like(scores)


def select_by_share(scores: Tensor, threshold: float) -> list[int]:
    """The smallest set of heads, strongest first, whose shares add up to ``threshold``.

    Ties are broken by head index. Float rounding is forgiven at the boundary (a share sum
    within 1e-6 of the threshold counts), so threshold=1.0 selects every head with a
    non-zero score rather than failing on rounding; the strongest head is always taken
    when any score is positive, however small the threshold.
    """
    share = shares(scores.double())
    order = sorted(range(len(share)), key=lambda h: (-float(share[h]), h))
    chosen, total = [], 0.0
    for head in order:
        if (chosen and total >= threshold - 1e-6) or share[head] <= 0:
            break
        chosen.append(head)
        total += float(share[head])
    return chosen
