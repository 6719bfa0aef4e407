"""Batches of prompts of different lengths: padding, attention masks, position ids, datasets.

A padded batch carries an ``attention_mask`` [batch, pos] (1 on real tokens, 0 on padding),
as Hugging Face's tokenizers give it. Every forward pass takes it, and position ids follow
it: position p of a row is the number of real tokens before p, so a left-padded prompt sees
the same positions as when it runs alone. Real queries never attend to padded keys, so a
prompt's numbers at its real positions do not depend on what the padding holds; statistics
over positions count real tokens only.

Datasets: ``iter_batches`` turns a tensor of ids (with its mask), a list of strings, a list
of id rows, or any iterable of those into padded batches of ``batch_size`` prompts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

PADDING_SIDES = ("right", "left")


class TokenSource(Protocol):
    """What ``iter_batches`` needs of a model: its checks of token ids, its tokenizer, the
    pad id and the device. ``HookedAutoModel`` is one."""

    @property
    def device(self) -> torch.device: ...

    @property
    def pad_token_id(self) -> int: ...

    def check_input_ids(self, input_ids: Any) -> Tensor: ...

    def require_tokenizer(self) -> Any: ...


class Tokens(NamedTuple):
    """Padded token ids and their attention mask, both [batch, pos] (a pair: ``ids, mask = ...``)."""

    input_ids: Tensor
    attention_mask: Tensor


def pad(rows: list[list[int]], pad_id: int, padding_side: str = "right", device: Any = None) -> Tokens:
    """Rows of token ids of any lengths, padded with ``pad_id`` on ``padding_side``."""
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if not rows or any(len(row) == 0 for row in rows):
        raise ValueError("every prompt needs at least one token; got an empty one (or no prompts)")
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        span = slice(0, len(row)) if padding_side == "right" else slice(width - len(row), width)
        ids[b, span] = torch.as_tensor(row, dtype=torch.long)
        mask[b, span] = 1
    return Tokens(ids.to(device), mask.to(device))


def check_attention_mask(attention_mask: Any, input_ids: Tensor) -> Tensor | None:
    """A 0/1 LongTensor of input_ids' shape on its device (None stays None), or an error that
    says what is wrong with it."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, Tensor):
        try:
            attention_mask = torch.as_tensor(attention_mask)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"attention_mask must be a tensor of 0s and 1s, got {type(attention_mask).__name__}"
            ) from err
    if attention_mask.dtype.is_floating_point or attention_mask.dtype.is_complex:
        raise TypeError(f"attention_mask must hold 0/1 as bool or integers, got dtype {attention_mask.dtype}")
    if attention_mask.dim() == 1:
        attention_mask = attention_mask.unsqueeze(0)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask has shape {list(attention_mask.shape)} but input_ids {list(input_ids.shape)}; "
            "they must come from the same batch"
        )
    mask = attention_mask.long()
    if ((mask != 0) & (mask != 1)).any():
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (real tokens)")
    empty = (mask.sum(-1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"attention_mask row(s) {empty} have no real token; drop those prompts")
    return mask.to(input_ids.device)


def check_position(pos: Any, n_pos: int, what: str = "position") -> int:
    """A position of a prompt of ``n_pos`` tokens, negative counting from the end, as 0..n_pos-1."""
    if isinstance(pos, bool) or not isinstance(pos, int) or not -n_pos <= pos < n_pos:
        plural = "position" if n_pos == 1 else "positions"
        raise ValueError(f"{what} {pos!r} is out of range: the prompt has {n_pos} {plural} ({-n_pos} to {n_pos - 1})")
    return pos % n_pos


def position_ids(attention_mask: Tensor) -> Tensor:
    """Each position's index among its row's real tokens (padding gets 0): [batch, pos]."""
    return (attention_mask.cumsum(-1) - 1).clamp_min(0)


def real_rows(input_ids: Tensor, attention_mask: Tensor | None, index: int) -> Tensor:
    """Row ``index`` of a batch without its padding: [1, real tokens]."""
    row = input_ids[index]
    return row[attention_mask[index].bool()][None] if attention_mask is not None else row[None]


def iter_batches(
    model: TokenSource, data: Any, attention_mask: Any = None, batch_size: int | None = None
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """(input_ids, attention_mask or None) batches of at most ``batch_size`` prompts (None:
    one batch of everything), padded on the right.

    ``data``: a tensor of ids [batch, pos] or [pos] (with ``attention_mask``), a string, or
    an iterable of strings (needs a tokenizer) and/or id rows (lists or 1-D tensors).
    """
    if isinstance(data, Tensor) or (isinstance(data, list | tuple) and data and isinstance(data[0], int)):
        ids = model.check_input_ids(data)
        mask = check_attention_mask(attention_mask, ids)
        step = batch_size or ids.shape[0]
        for start in range(0, ids.shape[0], step):
            yield ids[start : start + step], None if mask is None else mask[start : start + step]
        return
    if attention_mask is not None:
        raise ValueError("attention_mask goes with a tensor of ids; a list of prompts is padded here")
    prompts = [data] if isinstance(data, str) else data
    if not isinstance(prompts, Iterable):
        raise TypeError(f"input must be token ids, a string or an iterable of prompts, got {type(data).__name__}")
    batch: list[list[int]] = []
    any_prompt = False
    for prompt in prompts:
        batch.append(_row(model, prompt))
        any_prompt = True
        if batch_size is not None and len(batch) == batch_size:
            yield _padded(model, batch)
            batch = []
    if batch:
        yield _padded(model, batch)
    if not any_prompt:
        raise ValueError("input_ids is empty: no prompts given; pass token ids [batch, pos], a string or prompts")


def _row(model: TokenSource, prompt: Any) -> list[int]:
    if isinstance(prompt, str):
        return model.require_tokenizer().encode(prompt, add_special_tokens=False)
    row = model.check_input_ids(prompt)
    if row.shape[0] != 1:
        raise ValueError(f"each prompt of a dataset is one sequence, got a batch of {row.shape[0]}")
    return row[0].tolist()


def _padded(model: TokenSource, rows: list[list[int]]) -> tuple[Tensor, Tensor | None]:
    if len({len(row) for row in rows}) == 1:
        return torch.tensor(rows, dtype=torch.long, device=model.device), None
    ids, mask = pad(rows, model.pad_token_id, "right", model.device)
    return ids, mask
