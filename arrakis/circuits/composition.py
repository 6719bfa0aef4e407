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
D^2 per pair instead of d_head^2 * D. Each Gram is F^T F with F = R W^T (d_head x D) and
R^T R the d_head x d_head Gram of the other factor: (W_V W_O)^T (W_V W_O) = W_O^T (W_V^T W_V)
W_O and so on. Because both Grams are symmetric, only their upper triangle is used (tiles above
the diagonal weighted by 2), which halves the work; the Grams are built a tile at a time, so
memory stays bounded whatever the model's size; and the pairs with l1 < l2 are multiplied as
halves of layer segments (the first half's writers against the second half's readers, then
each half), batched level by level, so that no pair with l1 >= l2 is computed.

Grouped-query attention: when G query heads share each K (V) head, the K (V) mode of a
writer and every reader of one shared head c is <X^T X, S_r>, X = (R_V W_O[w]) W_K[c] a
d_head x d_head matrix and S_r = W_Q^T W_Q (W_O W_O^T for V) the reader's small Gram: one
large product per writer layer, 2 D d_head^2 per writer and shared head, i.e. 2 D d_head^2 / G
per pair. That path is taken where it is no dearer than the Gram one (2 d_head^2 <= 1.25 D G;
Llama-3.2-1B: 2 * 64^2 = 2048 * 4 / 4). Shared heads are found by exact equality of the
expanded stacks.

All functions here are pure: they take stacked weights and return tensors.
"""

from __future__ import annotations

import functools
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


def _group_size(W: Tensor) -> int:
    """How many consecutive query heads share each head of W [n_layers, n_heads, ...] (grouped-
    query K or V expanded to query heads): the largest G dividing n_heads such that every head
    equals, exactly, the first of its block of G; 1 when none are shared."""
    n_layers, n_heads = W.shape[:2]
    for G in range(n_heads, 1, -1):
        if n_heads % G:
            continue
        first_rows = W[:, :, :1].unflatten(1, (-1, G))  # a quick test on one row before the whole
        if not torch.equal(first_rows, first_rows[:, :, :1].expand_as(first_rows)):
            continue
        firsts = W[:, ::G].unsqueeze(2)  # [L, H / G, 1, ...]
        if all(
            torch.equal(W[layer].unflatten(0, (-1, G)), firsts[layer].expand(-1, G, *W.shape[2:]))
            for layer in range(n_layers)
        ):
            return G
    return 1


def _small_gram(A: Tensor, head_chunk: int, transpose: bool = False, group: int = 1) -> Tensor:
    """A^T A per head in float32, a chunk of heads at a time: [L, H, D, d_head] -> [L * H, d_head,
    d_head] (``transpose``: A A^T for [L, H, d_head, D]); heads shared by ``group`` query heads
    are computed once. A chunk's float32 copy is kept near 8 MiB, so it is multiplied while
    still in cache (at Llama-3.2-1B's shapes 16 heads: 0.09 s a stack instead of 0.16 s)."""
    n_layers = A.shape[0]
    A = A[:, ::group].flatten(0, 1)
    d_head = A.shape[-2] if transpose else A.shape[-1]
    head_chunk = max(1, min(head_chunk, (8 << 20) // (4 * A[0].numel())))
    out = torch.empty(A.shape[0], d_head, d_head, device=A.device)
    for start in range(0, A.shape[0], head_chunk):
        chunk = A[start : start + head_chunk].float()
        out[start : start + head_chunk] = (
            chunk @ chunk.transpose(-1, -2) if transpose else chunk.transpose(-1, -2) @ chunk
        )
    return out.view(n_layers, -1, d_head, d_head).repeat_interleave(group, 1).flatten(0, 1)


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
    G[..., :rows].mul_(_diagonal_weights(rows, G.device))
    return G


@functools.lru_cache(maxsize=8)
def _diagonal_weights(rows: int, device: torch.device) -> Tensor:
    return torch.ones(rows, rows, device=device).triu(1) * 2 + torch.eye(rows, device=device)


def _pair_products(out: Tensor, G_w: Tensor, G_r: Tensor, n_layers: int, alpha: float = 1.0) -> None:
    """out[w, r] += alpha <G_w[w], G_r[r]> for every writer w and reader r with the writer's layer
    first, and for no other pair: a segment of layers splits in two, its first half's writers meet
    its second half's readers in one product, and each half splits alike. The products of one
    level are batched (one call for a run of equal segments), which keeps both cores busy on the
    small ones."""
    n_heads, segments = G_w.shape[0] // n_layers, [(0, n_layers)]
    while segments:
        runs: list[list[tuple[int, int]]] = []
        for lo, hi in segments:
            # a run is contiguous segments of one size (a segment of one layer, dropped, leaves a gap)
            if runs and runs[-1][-1][1] == lo and runs[-1][-1][1] - runs[-1][-1][0] == hi - lo:
                runs[-1].append((lo, hi))
            else:
                runs.append([(lo, hi)])
        for run in runs:
            (lo, hi), count = run[0], len(run)
            size, half = hi - lo, (hi - lo) // 2
            rows = slice(lo * n_heads, (lo + count * size) * n_heads)
            A = G_w[rows].view(count, size * n_heads, -1)[:, : half * n_heads]
            B = G_r[rows].view(count, size * n_heads, -1)[:, half * n_heads :]
            products = torch.bmm(A, B.mT)
            for (lo, hi), product in zip(run, products, strict=True):
                mid = lo + half
                out[lo * n_heads : mid * n_heads, mid * n_heads : hi * n_heads].add_(product, alpha=alpha)
        segments = [part for lo, hi in segments for part in ((lo, lo + (hi - lo) // 2), (lo + (hi - lo) // 2, hi))]
        segments = [(lo, hi) for lo, hi in segments if hi - lo >= 2]


def _gram_numerators(writer, readers, numerators, d_model, band, head_chunk, n_layers, progress) -> None:
    """||OV[w] M[r]||_F^2 = <(OV)^T OV, M M^T>_F for the modes in ``readers``, band by band."""
    n, d_head = writer[0].shape[0], writer[0].shape[-1]
    scratch = _Scratch(writer[0].device)
    for r0 in progress_bar(range(0, d_model, band), "composition", "band", enabled=progress):
        r1 = min(r0 + band, d_model)
        shape = (n, r1 - r0, d_model - r0)
        cast = scratch.take("cast", (min(head_chunk, n), d_model - r0, d_head))
        G_w = _band_gram(*writer, r0, r1, head_chunk, scratch.take("writer", shape), cast)
        G_w = _weigh_upper_band(G_w).flatten(1)
        for m, reader in readers.items():
            G_r = _band_gram(*reader, r0, r1, head_chunk, scratch.take("reader", shape), cast).flatten(1)
            _pair_products(numerators[m], G_w, G_r, n_layers)


def _root(S: Tensor) -> Tensor:
    """R [n, d, d] float32 with R^T R = S for symmetric positive semi-definite S [n, d, d], in
    float64: a Cholesky factor, or where that fails (singular S) from an eigendecomposition
    (batched eigh is slow and erratic under threads, so only those heads use it)."""
    S = S.double()
    L, info = torch.linalg.cholesky_ex(S)
    R = L.mT
    failed = info.nonzero().flatten()
    if failed.numel():
        evals, evecs = torch.linalg.eigh(S[failed])
        R[failed] = evals.clamp_min(0).sqrt()[..., None] * evecs.mT
    return R.float()


def _factor(A: Tensor, S: Tensor, head_chunk: int, transpose: bool = False) -> Tensor:
    """F = R A^T [n, d_head, D] float32, R^T R = S, so that F^T F = A S A^T, the Gram of a mode
    (``transpose``: F = R A for A [n, d_head, D])."""
    R = _root(S)
    out = torch.empty(A.shape[0], R.shape[-1], A.shape[-1] if transpose else A.shape[-2], device=A.device)
    chunk_heads = max(1, head_chunk // 16)  # small chunks: the factors themselves take the memory
    for start in range(0, A.shape[0], chunk_heads):
        heads = slice(start, start + chunk_heads)
        chunk = A[heads].float()
        torch.bmm(R[heads], chunk if transpose else chunk.mT, out=out[heads])
    return out


def _factored_numerators(
    F_w: Tensor, readers: dict, numerators: dict, band: int, width: int, n_layers: int, progress: bool
) -> None:
    """<(OV)^T OV, M M^T>_F from F_w^T F_w and F_r^T F_r, tile by tile of the upper triangle:
    rows [r0, r0 + band) x columns [c0, c0 + width) of every head's Grams, built from the
    factors (d_head x d_head products, no cast) and multiplied pairwise. Tiles above the
    diagonal count twice (the mirror image below); the diagonal square is weighted in place."""
    n, _, d_model = F_w.shape
    scratch = _Scratch(F_w.device)
    for r0 in progress_bar(range(0, d_model, band), "composition", "band", enabled=progress):
        r1 = min(r0 + band, d_model)
        tiles = [(r0, r1, 1.0)] + [(c0, min(c0 + width, d_model), 2.0) for c0 in range(r1, d_model, width)]
        for c0, c1, alpha in tiles:
            shape = (n, r1 - r0, c1 - c0)
            G_w = torch.bmm(F_w[:, :, r0:r1].mT, F_w[:, :, c0:c1], out=scratch.take("writer", shape))
            if c0 == r0:
                _weigh_upper_band(G_w)
            for m, F_r in readers.items():
                G_r = torch.bmm(F_r[:, :, r0:r1].mT, F_r[:, :, c0:c1], out=scratch.take("reader", shape))
                _pair_products(numerators[m], G_w.flatten(1), G_r.flatten(1), n_layers, alpha)


def _shared_numerators(W_O: Tensor, S_V: Tensor, readers, numerators, progress) -> None:
    """The K or V numerators when ``G`` query heads share each K (V) head, a writer layer at a time.

    With S_V = R^T R and X = (R W_O[w]) W_r[c] (d_head x d_head) for the reader's shared head c,
    ||OV[w] M[r]||_F^2 = <X^T X, S[r]>_F (S = S_Q for K, S_O for V): one large product per writer
    layer against every later shared head, 2 D d_head^2 per (writer, shared head) pair.
    """
    n_layers, n_heads, d_head, d_model = W_O.shape
    R = _root(S_V).view(n_layers, n_heads, d_head, d_head)
    right = {}  # the shared heads side by side: [D, n_layers * n_shared * d_head] float32
    for m, (W_r, G, _) in readers.items():
        right[m] = W_r[:, ::G].float().permute(2, 0, 1, 3).reshape(d_model, -1)
    for l1 in progress_bar(range(n_layers - 1), "composition", "layer", enabled=progress):
        writer = (R[l1] @ W_O[l1].float()).flatten(0, 1)  # [H * d_head, D]
        for m, (_, G, S) in readers.items():
            n_shared = n_heads // G
            X = writer @ right[m][:, (l1 + 1) * n_shared * d_head :]  # [H * d_head, C * d_head]
            X = X.view(n_heads, d_head, -1, d_head).transpose(1, 2).contiguous()  # [H, C, d_head, d_head]
            P = torch.bmm(X.flatten(0, 1).mT, X.flatten(0, 1)).view(n_heads, -1, d_head**2).transpose(0, 1)
            S_later = S.view(n_layers * n_shared, G, d_head * d_head)[(l1 + 1) * n_shared :]
            scores = torch.bmm(P, S_later.mT)  # [C, H, G]
            numerators[m][l1 * n_heads : (l1 + 1) * n_heads, (l1 + 1) * n_heads :] = scores.permute(1, 0, 2).flatten(1)


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
        band: rows of the Grams built at once (64 by default).
        memory_budget: bytes for temporaries. When the float32 factors F of the Grams fit in
            half of it, they are computed once and the Grams are built in tiles (of the rest of
            that half, or an eighth of the budget: wider tiles are faster; at Llama-3.2-1B's
            shapes the default's are 512 columns wide, 1024 with 1.5 GiB);
            otherwise the weights are cast a chunk of heads at a time, band by band (the band
            then as many rows as fit: 2 x n_heads_total x band x D float32 values).
        layer_block: no longer used (pairs are now split by layer segments, none wasted);
            kept so that existing calls still work.
        head_chunk: heads cast to float32 at once.
        progress: show a progress bar over the bands.

    Returns:
        {mode: [n_layers, n_heads, n_layers, n_heads]} float32, zero where l1 >= l2.
    """
    modes = tuple(check_mode(m) for m in ((modes,) if isinstance(modes, str) else modes))
    n_layers, n_heads, d_model, d_head = W_Q.shape
    n, device = n_layers * n_heads, W_Q.device
    groups = {"K": _group_size(W_K), "V": _group_size(W_V)}
    S_V, S_O = _small_gram(W_V, head_chunk, group=groups["V"]), _small_gram(W_O, head_chunk, transpose=True)
    ov_sq = (S_V * S_O).sum((-1, -2))  # ||W_V W_O||_F^2 = tr(S_V S_O)
    W_Q_, W_K_, W_V_ = (w.flatten(0, 1) for w in (W_Q, W_K, W_V))
    small, reader_sq, gram_readers, shared_readers = {"V": S_O}, {"V": ov_sq}, {}, {}
    if "Q" in modes or "K" in modes:
        S_Q, S_K = _small_gram(W_Q, head_chunk), _small_gram(W_K, head_chunk, group=groups["K"])
        small["Q"], small["K"] = S_K, S_Q
        reader_sq["Q"] = reader_sq["K"] = (S_Q * S_K).sum((-1, -2))  # ||W_Q W_K^T||_F^2
    for m, W_r in zip(MODES, (W_Q_, W_K_, W_V_), strict=True):
        # Per pair, the Gram path costs about 1.25 D^2; the shared-head one 2 D d_head^2 / G.
        if m in modes and m in groups and 2 * d_head**2 <= 1.25 * d_model * groups[m]:
            shared_readers[m] = (W_K if m == "K" else W_V, groups[m], small[m])
        elif m in modes:
            gram_readers[m] = (W_r, small[m])
    # Writer Gram (OV)^T (OV) = W_O^T S_V W_O; reader Grams M M^T: QK -> W_Q S_K W_Q^T,
    # QK^T -> W_K S_Q W_K^T, OV -> W_V S_O W_V^T.
    numerators = {m: torch.zeros(n, n, device=device) for m in modes}
    factor_bytes = (1 + len(gram_readers)) * n * d_head * d_model * 4
    if gram_readers and 2 * factor_bytes <= memory_budget:  # the factors of every Gram, in float32
        band = band or 64
        tile_bytes = max(memory_budget // 8, memory_budget // 2 - factor_bytes)  # two tiles of n Grams
        width = max(band, min(d_model, tile_bytes // (2 * n * band * 4)))
        F_w = _factor(W_O.flatten(0, 1), S_V, head_chunk, transpose=True)
        F_r = {m: _factor(W_r, S, head_chunk) for m, (W_r, S) in gram_readers.items()}
        _factored_numerators(F_w, F_r, numerators, band, width, n_layers, progress)
        del F_w, F_r
    elif gram_readers:  # too large: cast a chunk of heads at a time, band by band
        if band is None:
            band = max(1, min(64, memory_budget // (2 * n * d_model * 4)))
        writer = (W_O.flatten(0, 1).transpose(-1, -2), S_V)
        _gram_numerators(writer, gram_readers, numerators, d_model, band, head_chunk, n_layers, progress)
    if shared_readers:
        _shared_numerators(W_O, S_V, shared_readers, numerators, progress)
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
