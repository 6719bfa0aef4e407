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

from arrakis.progress import progress as progress_bar

MODES = ("Q", "K", "V")


def check_mode(mode: str) -> str:
    """Normalise a composition mode ("q" -> "Q") or raise naming the valid ones."""
    if not isinstance(mode, str) or mode.upper() not in MODES:
        raise ValueError(f"unknown composition mode {mode!r}; expected one of 'Q', 'K', 'V'")
    return mode.upper()


def _small_gram(A: Tensor, head_chunk: int, transpose: bool = False) -> Tensor:
    """A^T A per head in float32, a chunk of heads at a time: [n, D, d_head] -> [n, d_head, d_head]
    (``transpose``: A A^T for [n, d_head, D])."""
    n, d_head = A.shape[0], A.shape[-1] if not transpose else A.shape[-2]
    out = torch.empty(n, d_head, d_head, device=A.device)
    for start in range(0, n, head_chunk):
        chunk = A[start : start + head_chunk].float()
        out[start : start + head_chunk] = (
            chunk @ chunk.transpose(-1, -2) if transpose else chunk.transpose(-1, -2) @ chunk
        )
    return out


def _factors(W_Q: Tensor, W_K: Tensor, W_V: Tensor, W_O: Tensor, modes: tuple[str, ...], head_chunk: int):
    """Each Gram as (A S) A^T, with A [n_heads_total, D, d_head] (the weights, any dtype, not
    copied) and S [n, d_head, d_head] float32; and the squared Frobenius norms.

    Writer (OV)^T (OV) = W_O^T S_V W_O; reader Grams M M^T: QK -> W_Q S_K W_Q^T,
    QK^T -> W_K S_Q W_K^T, OV -> W_V S_O W_V^T, with S_x = W_x^T W_x and S_O = W_O W_O^T.
    """
    W_OT = W_O.transpose(-1, -2)  # [n, D, d_head], a view
    S_V, S_O = _small_gram(W_V, head_chunk), _small_gram(W_O, head_chunk, transpose=True)
    ov_sq = (S_V * S_O).sum((-1, -2))  # ||W_V W_O||_F^2 = tr(S_V S_O)
    readers, reader_sq = {}, {}
    if "Q" in modes or "K" in modes:
        S_Q, S_K = _small_gram(W_Q, head_chunk), _small_gram(W_K, head_chunk)
        qk_sq = (S_Q * S_K).sum((-1, -2))  # ||W_Q W_K^T||_F^2
        if "Q" in modes:
            readers["Q"], reader_sq["Q"] = (W_Q, S_K), qk_sq
        if "K" in modes:
            readers["K"], reader_sq["K"] = (W_K, S_Q), qk_sq
    if "V" in modes:
        readers["V"], reader_sq["V"] = (W_V, S_O), ov_sq
    return (W_OT, S_V), ov_sq, readers, reader_sq


class _Scratch:
    """Buffers reused from band to band (allocating hundreds of MiB per band costs more in
    page faults than the arithmetic)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.buffers = device, {}

    def take(self, name: str, shape: tuple[int, ...]) -> Tensor:
        size = math.prod(shape)
        if name not in self.buffers or self.buffers[name].numel() < size:
            self.buffers[name] = torch.empty(size, device=self.device)
        return self.buffers[name][:size].view(shape)


def _band_gram(A: Tensor, S: Tensor, r0: int, r1: int, head_chunk: int, out: Tensor, cast: Tensor) -> Tensor:
    """Rows [r0, r1) x columns [r0, D) of every head's Gram (A S) A^T into ``out``
    [n, r1 - r0, D - r0]. Weights are cast to float32 (into ``cast``) a chunk of heads at a time."""
    n = A.shape[0]
    for start in range(0, n, head_chunk):
        heads = slice(start, min(start + head_chunk, n))
        Y = cast[: heads.stop - start].copy_(A[heads, r0:])  # [chunk, D - r0, d_head] in float32
        # [chunk, rows, d_head] x [chunk, d_head, d_head] x [chunk, d_head, D - r0]
        torch.matmul(Y[:, : r1 - r0] @ S[heads], Y.transpose(-1, -2), out=out[heads])
    return out


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
    band: int | None = None,
    layer_block: int | None = None,
    head_chunk: int = 256,
    memory_budget: int = 1 << 30,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Composition scores of every writer/reader pair, for each mode.

    Args:
        W_Q, W_K, W_V: [n_layers, n_heads, d_model, d_head] (K, V expanded to query heads).
            Any float dtype: they are cast to float32 a chunk of heads at a time, so bfloat16
            stacks of a large model are never copied whole.
        W_O: [n_layers, n_heads, d_head, d_model].
        modes: any of "Q", "K", "V".
        band: rows of the Grams built at once; by default as many as fit ``memory_budget``
            bytes ((1 + modes) x n_heads_total x band x D float32 values).
        layer_block: writer layers per matrix product (pairs below the block are skipped); by
            default enough for 64 heads, large enough for efficient products and small enough
            that few pairs with the reader at or before the writer are computed and dropped.
        head_chunk: heads cast to float32 at once.
        progress: show a progress bar over the bands.

    Returns:
        {mode: [n_layers, n_heads, n_layers, n_heads]} float32, zero where l1 >= l2.
    """
    modes = tuple(check_mode(m) for m in ((modes,) if isinstance(modes, str) else modes))
    n_layers, n_heads, d_model, _ = W_Q.shape
    flat = [w.reshape(n_layers * n_heads, *w.shape[2:]) for w in (W_Q, W_K, W_V, W_O)]
    writer, ov_sq, readers, reader_sq = _factors(*flat, modes, head_chunk)
    n, device = n_layers * n_heads, W_Q.device
    if band is None:
        band = max(1, min(64, memory_budget // ((1 + len(modes)) * n * d_model * 4)))
    if layer_block is None:
        layer_block = max(1, -(-64 // n_heads))
    numerators = {m: torch.zeros(n, n, device=device) for m in modes}
    # writer layer blocks: rows [a*H, b*H) only meet readers in layers > a
    blocks = [(a, min(a + layer_block, n_layers)) for a in range(0, n_layers - 1, layer_block)]
    bands = range(0, d_model, band)
    scratch = _Scratch(device)
    d_head = W_Q.shape[-1]
    for r0 in progress_bar(bands, "composition", "band", enabled=progress):
        r1 = min(r0 + band, d_model)
        shape = (n, r1 - r0, d_model - r0)
        cast = scratch.take("cast", (min(head_chunk, n), d_model - r0, d_head))
        G_w = _band_gram(*writer, r0, r1, head_chunk, scratch.take("writer", shape), cast)
        G_w = _weigh_upper_band(G_w).flatten(1)
        for m in modes:
            G_r = _band_gram(*readers[m], r0, r1, head_chunk, scratch.take("reader", shape), cast).flatten(1)
            for a, b in blocks:
                rows, cols = slice(a * n_heads, b * n_heads), slice((a + 1) * n_heads, n)
                numerators[m][rows, cols].addmm_(G_w[rows], G_r[cols].mT)  # <A^T A, B B^T> per pair
    layer = torch.arange(n_layers, device=device).repeat_interleave(n_heads)
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
