r"""Composition scores between attention heads (Elhage et al., 2021; TransformerLens).

For a writer head h1 in layer l1 and a reader head h2 in a later layer l2,

    score = ||OV[h1] M[h2]||_F / (||OV[h1]||_F ||M[h2]||_F)

with M = QK (Q-composition: the writer feeds the reader's queries), QK^T (K-composition:
its keys) or OV (V-composition: its values), where OV = W_V W_O and QK = W_Q W_K^T are
D x D matrices of rank <= d_head. Random matrices score about 1/sqrt(D). Pairs with
l1 >= l2 are zero and never computed.

No D x D matrix is formed per pair. With the Gram matrices A^T A and B B^T,

    ||A B||_F^2 = tr(B^T A^T A B) = <A^T A, B B^T>_F

so all pairs of a mode are one matrix product of flattened per-head Grams, at a cost of
D^2 per pair instead of d_head^2 * D. The Grams themselves come from d_head x d_head
pieces: (W_V W_O)^T (W_V W_O) = W_O^T (W_V^T W_V) W_O and so on. Because both Grams are
symmetric, only their upper triangle is used (off-diagonal entries weighted by 2), which
halves the work; and the Grams are built a band of rows at a time, so memory stays bounded
(a few hundred MiB at most) whatever the model's size.

All functions here are pure: they take stacked weights and return tensors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MODES = ("Q", "K", "V")


def check_mode(mode: str) -> str:
    """Normalise a composition mode ("q" -> "Q") or raise naming the valid ones."""
    if not isinstance(mode, str) or mode.upper() not in MODES:
        raise ValueError(f"unknown composition mode {mode!r}; expected one of 'Q', 'K', 'V'")
    return mode.upper()


def _gram(X: Tensor) -> Tensor:
    """X^T X for a stack of [n, D, d_head] -> [n, d_head, d_head]."""
    return X.transpose(-1, -2) @ X


def _factors(W_Q: Tensor, W_K: Tensor, W_V: Tensor, W_O: Tensor, modes: tuple[str, ...]):
    """Each Gram as X @ Y^T with X, Y [n_heads_total, D, d_head], and the squared norms.

    Writer (OV)^T (OV) = W_O^T S_V W_O; reader Grams M M^T: QK -> W_Q S_K W_Q^T,
    QK^T -> W_K S_Q W_K^T, OV -> W_V S_O W_V^T, with S_x = W_x^T W_x and S_O = W_O W_O^T.
    """
    W_OT = W_O.transpose(-1, -2)  # [n, D, d_head]
    S_V, S_O = _gram(W_V), _gram(W_OT)
    ov_sq = (S_V * S_O).sum((-1, -2))  # ||W_V W_O||_F^2 = tr(S_V S_O)
    writer = (W_OT @ S_V, W_OT)
    readers, reader_sq = {}, {}
    if "Q" in modes or "K" in modes:
        S_Q, S_K = _gram(W_Q), _gram(W_K)
        qk_sq = (S_Q * S_K).sum((-1, -2))  # ||W_Q W_K^T||_F^2
        if "Q" in modes:
            readers["Q"], reader_sq["Q"] = (W_Q @ S_K, W_Q), qk_sq
        if "K" in modes:
            readers["K"], reader_sq["K"] = (W_K @ S_Q, W_K), qk_sq
    if "V" in modes:
        readers["V"], reader_sq["V"] = (W_V @ S_O, W_V), ov_sq
    return writer, ov_sq, readers, reader_sq


def _weigh_upper_band(G: Tensor) -> Tensor:
    """Turn a band of rows [r0, r0 + rows) x columns [r0, D) of symmetric Grams, in place,
    into its share of the Frobenius inner product: 2 above the diagonal, 1 on it, 0 below
    (entries below are counted through their mirror image above)."""
    rows = G.shape[-2]
    G[..., rows:].mul_(2.0)
    G[..., :rows].mul_(torch.ones(rows, rows, device=G.device).triu(1) * 2 + torch.eye(rows, device=G.device))
    return G


def composition_scores(
    W_Q: Tensor,
    W_K: Tensor,
    W_V: Tensor,
    W_O: Tensor,
    modes: tuple[str, ...] | str = MODES,
    *,
    band: int = 64,
    layer_block: int = 8,
) -> dict[str, Tensor]:
    """Composition scores of every writer/reader pair, for each mode.

    Args:
        W_Q, W_K, W_V: [n_layers, n_heads, d_model, d_head] (K, V expanded to query heads).
        W_O: [n_layers, n_heads, d_head, d_model].
        modes: any of "Q", "K", "V".
        band: rows of the Grams built at once (memory ~ 4 * n_heads_total * band * D floats).
        layer_block: writer layers per matrix product (pairs below the block are skipped).

    Returns:
        {mode: [n_layers, n_heads, n_layers, n_heads]}, zero where l1 >= l2.
    """
    modes = tuple(check_mode(m) for m in ((modes,) if isinstance(modes, str) else modes))
    n_layers, n_heads, d_model, _ = W_Q.shape
    flat = [w.reshape(n_layers * n_heads, *w.shape[2:]).float() for w in (W_Q, W_K, W_V, W_O)]
    (Xw, Yw), ov_sq, readers, reader_sq = _factors(*flat, modes)
    n = n_layers * n_heads
    numerators = {m: torch.zeros(n, n, device=Xw.device) for m in modes}
    # writer layer blocks: rows [a*H, b*H) only meet readers in layers > a
    blocks = [(a, min(a + layer_block, n_layers)) for a in range(0, n_layers - 1, layer_block)]
    for r0 in range(0, d_model, band):
        r1 = min(r0 + band, d_model)
        # [n, rows, d_head] x [n, d_head, D - r0] -> [n, rows, D - r0]: a band of the upper triangle
        G_w = _weigh_upper_band(Xw[:, r0:r1] @ Yw[:, r0:].transpose(-1, -2)).flatten(1)
        for m in modes:
            X, Y = readers[m]
            G_r = (X[:, r0:r1] @ Y[:, r0:].transpose(-1, -2)).flatten(1)
            for a, b in blocks:
                rows, cols = slice(a * n_heads, b * n_heads), slice((a + 1) * n_heads, n)
                numerators[m][rows, cols].addmm_(G_w[rows], G_r[cols].T)  # <A^T A, B B^T> per pair
    layer = torch.arange(n_layers, device=Xw.device).repeat_interleave(n_heads)
    later = layer[:, None] < layer[None, :]  # writer layer < reader layer
    out = {}
    for m in modes:
        denominator = (ov_sq[:, None] * reader_sq[m][None, :]).sqrt()
        scores = numerators[m].clamp_min(0).sqrt() / denominator.clamp_min(torch.finfo(torch.float32).tiny)
        out[m] = torch.where(later, scores, 0.0).view(n_layers, n_heads, n_layers, n_heads)
    return out


def composition_baseline(d_model: int) -> float:
    """What two random matrices score: about 1/sqrt(d_model)."""
    return 1.0 / math.sqrt(d_model)


def composition_scores_brute_force(W_Q: Tensor, W_K: Tensor, W_V: Tensor, W_O: Tensor, mode: str) -> Tensor:
    """The definition, one explicit D x D product per pair (for tests on small models)."""
    mode = check_mode(mode)
    n_layers, n_heads = W_Q.shape[:2]
    OV = W_V.double() @ W_O.double()  # [L, H, D, D]
    QK = W_Q.double() @ W_K.double().transpose(-1, -2)
    right = {"Q": QK, "K": QK.transpose(-1, -2), "V": OV}[mode]
    out = torch.zeros(n_layers, n_heads, n_layers, n_heads, dtype=torch.float64)
    for l1 in range(n_layers):
        for h1 in range(n_heads):
            for l2 in range(l1 + 1, n_layers):
                for h2 in range(n_heads):
                    A, B = OV[l1, h1], right[l2, h2]
                    out[l1, h1, l2, h2] = torch.linalg.norm(A @ B) / (torch.linalg.norm(A) * torch.linalg.norm(B))
    return out.float()
