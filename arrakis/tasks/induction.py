"""Induction on repeated random tokens (Olsson et al. 2022), with a changed first half.

A prompt is [BOS] + A + A[:j + 1]: ``seq_len`` random tokens A, then the same tokens again,
cut after A[j]. At dst (the last token, the second A[j]) an induction head finds the earlier
A[j], attends to the token after it and copies it: the answer is A[j + 1], and the metric is
log p(answer), since there is no natural foil. src is the answer's first occurrence, the
position the induction head attends to from dst.

The corrupted twin keeps the second half and replaces the first with other random tokens B
(none of them in A): the pattern to copy is gone, and nothing else changes.

The tokens of A and B are distinct, so each occurs once per half and the answer is unique.
They come from the tokenizer's ordinary vocabulary (no special tokens; each id decodes to a
string that encodes back to that one id), or from every id for a model without a tokenizer.
"""

from __future__ import annotations

import random
from typing import Any

from arrakis.models import HookedAutoModel
from arrakis.tasks.task import Task

POOL = 1000  # distinct candidate tokens drawn once per task; examples sample from them
MAX_DRAWS = 50  # draws per pooled token before the tokenizer counts as having too few ordinary tokens


def ordinary_tokens(model: HookedAutoModel, size: int, rng: random.Random) -> list[int]:
    """``size`` distinct token ids, drawn at random from the ordinary vocabulary."""
    tokenizer = model.tokenizer
    if tokenizer is None:
        return rng.sample(range(model.cfg.d_vocab), min(size, model.cfg.d_vocab))
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    top = min(model.cfg.d_vocab, len(tokenizer))
    chosen: set[int] = set()
    for _ in range(size * MAX_DRAWS):
        if len(chosen) == size:
            break
        token = rng.randrange(top)
        if token in special or token in chosen:
            continue
        if tokenizer.encode(tokenizer.decode([token]), add_special_tokens=False) == [token]:
            chosen.add(token)
    return sorted(chosen)


SEQ_LEN = 30  # the default tokens per half: the embedded model completes 75% of these prompts (19% at 10)


def induction(model: HookedAutoModel, n: int = 32, seq_len: int | None = None, seed: int = 0) -> Task:
    """``n`` repeated-random-token prompts of ``seq_len`` tokens per half (default 30, or what
    the model's context allows; BOS first where the tokenizer has one), each cut at a random
    point j in the second half (seq_len // 2 <= j <= seq_len - 2, so prompts differ in length
    and run padded). answer = A[j + 1], src = its position in the first half, dst = the last
    token; corrupted: a different first half. Seeded: the same seed gives the same task.
    """
    if not isinstance(model, HookedAutoModel):
        raise TypeError(f"induction needs a HookedAutoModel, got {type(model).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (examples), got {n!r}")
    tokenizer: Any = model.tokenizer
    bos = [] if tokenizer is None or tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]
    if seq_len is None:
        seq_len = SEQ_LEN if model.cfg.n_ctx is None else max(3, min(SEQ_LEN, (model.cfg.n_ctx - len(bos)) // 2))
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 3:
        raise ValueError(f"seq_len must be an int >= 3 (tokens per half), got {seq_len!r}")
    if model.cfg.n_ctx is not None and len(bos) + 2 * seq_len > model.cfg.n_ctx:
        raise ValueError(f"seq_len {seq_len} makes prompts longer than this model's context of {model.cfg.n_ctx}")
    rng = random.Random(seed)
    pool = ordinary_tokens(model, max(POOL, 4 * seq_len), rng)
    if len(pool) < 2 * seq_len:
        raise ValueError(f"only {len(pool)} ordinary tokens found; seq_len {seq_len} needs {2 * seq_len}")
    clean, corrupted, answers, srcs = [], [], [], []
    for _ in range(n):
        tokens = rng.sample(pool, 2 * seq_len)
        first, other = tokens[:seq_len], tokens[seq_len:]
        j = rng.randint(seq_len // 2, seq_len - 2)
        clean.append(bos + first + first[: j + 1])
        corrupted.append(bos + other + first[: j + 1])
        answers.append(first[j + 1])
        srcs.append(len(bos) + j + 1)
    return Task(clean, corrupted, answer=answers, src=srcs, model=model, name="induction")
