r"""Head roles from attention patterns, as TransformerLens's ``detect_head`` ("mul").

For a detection pattern M (1 on the cells a head of that role attends to, 0 elsewhere) and
an attention pattern A, the score is the attention mass on M's cells over the total mass,
sum(A * M) / sum(A), summed over every (real, unpadded) query position of every sequence:

- previous-token: M[i, i-1] = 1;
- duplicate-token: M[i, j] = 1 for j < i with token[j] == token[i];
- induction: M[i, j] = 1 for j <= i with token[j-1] == token[i], j - 1 < i: attend to the
  token after an earlier occurrence of the current one.

Since every row of A sums to 1, the score is the mean over query positions of the mass on
M's cells, counting positions where M is empty as 0: on a sequence of T random tokens
repeated twice, a perfect induction head scores about 1/2, a perfect previous-token head
(T' - 1)/T' for length T'.
"""

from __future__ import annotations

import torch
from torch import Tensor

ROLES = ("previous_token", "duplicate_token", "induction")


def previous_token_pattern(tokens: Tensor) -> Tensor:
    """[batch, pos] -> [batch, pos, pos] with ones on the subdiagonal."""
    pos = tokens.shape[-1]
    return torch.diag(torch.ones(pos - 1), -1).expand(tokens.shape[0], pos, pos).to(tokens.device)


def duplicate_token_pattern(tokens: Tensor) -> Tensor:
    """M[b, i, j] = 1 where j < i and tokens[b, j] == tokens[b, i]."""
    same = tokens[:, :, None] == tokens[:, None, :]  # [batch, query_pos, key_pos]
    return torch.tril(same, diagonal=-1).float()


def induction_pattern(tokens: Tensor) -> Tensor:
    """M[b, i, j] = 1 where j <= i and tokens[b, j - 1] == tokens[b, i] (j - 1 < i)."""
    duplicate = duplicate_token_pattern(tokens)
    shifted = torch.zeros_like(duplicate)
    shifted[:, :, 1:] = duplicate[:, :, :-1]  # key j -> the token after key j - 1
    return torch.tril(shifted)


DETECTORS = {
    "previous_token": previous_token_pattern,
    "duplicate_token": duplicate_token_pattern,
    "induction": induction_pattern,
}


def role_hits(pattern: Tensor, detection: Tensor) -> Tensor:
    """sum(A * M) over the batch and cells: pattern [batch, head, q, k], detection [batch, q, k] -> [head]."""
    return torch.einsum("bhqk,bqk->h", pattern, detection)


def role_scores(pattern: Tensor, detection: Tensor) -> Tensor:
    """pattern [batch, head, q, k], detection [batch, q, k] -> [head]: sum(A * M) / sum(A)
    over the batch (every row of A sums to 1, so sequences of one length weigh equally)."""
    return role_hits(pattern, detection) / pattern.sum((0, -1, -2))


def repeated_random_tokens(
    d_vocab: int, seq_len: int, n_repeats: int, n_sequences: int, seed: int, bos: int | None = None
) -> Tensor:
    """[n_sequences, (bos) + seq_len * n_repeats]: random tokens, repeated, after an optional BOS."""
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(0, d_vocab, (n_sequences, seq_len), generator=generator)
    tokens = first.repeat(1, n_repeats)
    if bos is not None:
        tokens = torch.cat([torch.full((n_sequences, 1), bos), tokens], dim=1)
    return tokens
