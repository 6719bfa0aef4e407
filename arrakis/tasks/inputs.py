"""What a task is made of, checked before any forward pass: prompts as token rows, one token
per answer and foil, and positions per example.

Every error names the example and the argument ("example 3: clean has 12 tokens, corrupted
13"), so a wrong dataset is found where it was built, not deep inside a patched run.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from arrakis.models import HookedAutoModel


def tokenizer_of(model: HookedAutoModel | None, what: str) -> Any:
    """The model's tokenizer, or an error saying that strings need one."""
    if model is None:
        raise ValueError(f"{what} holds strings: pass model= (its tokenizer turns them into tokens), or token ids")
    return model.require_tokenizer()


def prompt_rows(prompts: Any, model: HookedAutoModel | None, what: str) -> list[list[int]]:
    """Token rows of ``prompts``: a string, a list of strings (encoded without special tokens, as
    ``model.to_tokens`` does), a list of id rows, or a [n, pos] (or [pos]) tensor of ids."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, Tensor):
        if prompts.dtype.is_floating_point or prompts.dtype == torch.bool or prompts.dim() not in (1, 2):
            raise TypeError(f"{what} must hold integer token ids [n, pos], got {prompts.dtype} {tuple(prompts.shape)}")
        prompts = prompts.reshape(-1, prompts.shape[-1]).tolist()
    if not isinstance(prompts, Sequence):
        raise TypeError(f"{what} must be a list of strings or of token id rows, or ids [n, pos]; got {prompts!r}")
    if len(prompts) == 0:
        raise ValueError(f"{what} is empty: a task needs at least one example")
    if prompts and isinstance(prompts[0], numbers.Integral):  # one row of ids
        prompts = [prompts]
    rows = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            row = tokenizer_of(model, what).encode(prompt, add_special_tokens=False)
        elif isinstance(prompt, Tensor | Sequence):
            row = torch.as_tensor(prompt).flatten().tolist()
            if not all(isinstance(t, int) and t >= 0 for t in row):
                raise TypeError(f"example {i}: {what} must hold non-negative integer token ids, got {prompt!r}")
        else:
            raise TypeError(f"example {i}: {what} must be a string or a row of token ids, got {type(prompt).__name__}")
        if not row:
            raise ValueError(f"example {i}: {what} has no tokens")
        if model is not None and max(row) >= model.cfg.d_vocab:
            raise ValueError(
                f"example {i}: {what} has token id {max(row)}, outside this model's vocabulary of {model.cfg.d_vocab}"
            )
        rows.append(row)
    return rows


def per_example(value: Any, n: int, what: str) -> list[Any]:
    """One value for every example: a single value is used for all, a list must have n."""
    if isinstance(value, Tensor):
        value = value.tolist() if value.dim() else value.item()
    if isinstance(value, list | tuple):
        if len(value) != n:
            raise ValueError(f"{what} has {len(value)} entries but the task has {n} examples; give one per example")
        return list(value)
    return [value] * n


def token_id(value: Any, model: HookedAutoModel | None, what: str, example: int) -> int:
    """One token id: an int in the vocabulary, or a string that the tokenizer makes one token."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral | str):
        raise TypeError(f"example {example}: {what} must be a token id or a one-token string, got {value!r}")
    if isinstance(value, str):
        tokenizer = tokenizer_of(model, what)
        ids = tokenizer.encode(value, add_special_tokens=False)
        if len(ids) != 1:
            pieces = [tokenizer.decode([i]) for i in ids]
            raise ValueError(
                f"example {example}: {what} {value!r} is {len(ids)} tokens {pieces}, not one; "
                "pick a word that is one token (with its leading space)"
            )
        return int(ids[0])
    d_vocab = None if model is None else model.cfg.d_vocab
    if value < 0 or (d_vocab is not None and value >= d_vocab):
        raise ValueError(f"example {example}: {what} id {value} is out of range (vocabulary 0-{(d_vocab or 1) - 1})")
    return int(value)


def last_occurrence(row: list[int], token: int, before: int) -> int | None:
    """The last position < ``before`` that holds ``token``, or None."""
    for pos in range(before - 1, -1, -1):
        if row[pos] == token:
            return pos
    return None


def position(value: Any, row: list[int], model: HookedAutoModel | None, what: str, example: int, before: int) -> int:
    """A position of ``row``: an int (negative counts from the end of its real tokens), or a
    token (id or string), found at its last occurrence before ``before``."""
    n_pos = len(row)
    if isinstance(value, str):
        token = token_id(value, model, what, example)
        found = last_occurrence(row, token, before)
        if found is None:
            where = "in the clean prompt" if before >= n_pos else f"before dst (position {before})"
            raise ValueError(f"example {example}: {what} token {value!r} (id {token}) does not occur {where}")
        return found
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"example {example}: {what} must be a position (int) or a token string, got {value!r}")
    if not -n_pos <= value < n_pos:
        raise ValueError(
            f"example {example}: {what} {value} is out of range: the clean prompt has {n_pos} tokens "
            f"({-n_pos} to {n_pos - 1})"
        )
    return int(value) % n_pos
