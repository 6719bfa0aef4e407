"""Token ids in and out of a model: encoding prompts, decoding ids, and the checks every
forward pass runs on its ``input_ids`` before anything is computed.

Padding without a mask. A batch of prompts of different lengths is padded with the pad id,
and its ``attention_mask`` says which positions are padding; without the mask the pads
would be read as tokens (shifting every position of a left-padded row). The pad id can also
be a real token (a chat prompt's ``<|im_end|>``, GPT-2's ``<|endoftext|>`` as BOS), so a batch
without a mask is refused only where it is clearly padded (``check_unmasked_padding``):

- rows begin with runs of the pad id of different lengths (left padding: a row has a
  leading run the others do not), or
- rows end with runs of the pad id of different lengths, the longest at least two (right
  padding; one trailing pad id alone may be a real end-of-turn token).

A batch of one row, a model without a tokenizer (no pad id is known) and an explicit mask are
never refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from arrakis.models.batching import PADDING_SIDES, Tokens, pad


def pad_id_of(tokenizer: Any) -> int | None:
    """The tokenizer's pad token id, else its EOS id, else None."""
    for name in ("pad_token_id", "eos_token_id"):
        token = getattr(tokenizer, name, None)
        if isinstance(token, int):
            return token
    return None


def encode(
    tokenizer: Any, text: Any, prepend_bos: bool, padding_side: str, pad_id: int, device: Any
) -> Tensor | Tokens:
    """Token ids of a string, [1, pos]; of a list of strings, ``Tokens(input_ids,
    attention_mask)`` padded on ``padding_side`` with ``pad_id``."""
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if not isinstance(text, str | list | tuple):
        raise TypeError(
            f"to_tokens takes a string or a non-empty list of strings, got {type(text).__name__} "
            "(token ids need no encoding: pass them to the model as they are)"
        )
    texts = [text] if isinstance(text, str) else list(text)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError("to_tokens takes a string or a non-empty list of strings")
    rows = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    if prepend_bos:
        if tokenizer.bos_token_id is None:
            raise ValueError("prepend_bos=True, but this tokenizer has no BOS token")
        rows = [[tokenizer.bos_token_id, *r] for r in rows]
    if any(not r for r in rows):
        raise ValueError(f"prompt {texts[[len(r) for r in rows].index(0)]!r} has no tokens")
    if isinstance(text, str):
        return torch.tensor(rows, dtype=torch.long, device=device)
    return pad(rows, pad_id, padding_side, device)


def decode_each(tokenizer: Any, tokens: Tensor | Sequence[int], d_vocab: int) -> list[str]:
    """Each id of one sequence ([pos] or [1, pos]) as its string."""
    ids = torch.as_tensor(tokens).flatten() if not isinstance(tokens, Tensor) else tokens
    if ids.dim() > 1:
        if ids.shape[0] != 1:
            raise ValueError(f"to_str_tokens takes one sequence, got a batch of {ids.shape[0]}")
        ids = ids[0]
    if ids.dtype == torch.bool or ids.dtype.is_floating_point or ids.dtype.is_complex:
        raise TypeError(f"to_str_tokens takes integer token ids, got dtype {ids.dtype}")
    if ids.numel():
        check_vocabulary(ids, d_vocab, "to_str_tokens: token id")
    return [tokenizer.decode([i]) for i in ids.tolist()]


def check_vocabulary(ids: Tensor, d_vocab: int, what: str = "token id") -> None:
    """An error naming the first id outside 0..d_vocab-1 and where it is, if there is one."""
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= d_vocab:
        bad = lo if lo < 0 else hi
        where = [int(i) for i in (ids == bad).nonzero()[0]]
        raise ValueError(
            f"{what} {bad} at {where} is out of range: this model's vocabulary has {d_vocab} tokens (0-{d_vocab - 1})"
        )


def check_input_ids(input_ids: Any, d_vocab: int, n_ctx: int | None) -> Tensor:
    """Token ids as a LongTensor [batch, pos] (a [pos] row becomes a batch of one), or an
    error that says what is wrong: not ids, empty, wrong shape, out of the vocabulary, longer
    than the context."""
    if not isinstance(input_ids, Tensor):
        if isinstance(input_ids, Sequence) and len(input_ids) == 0:
            raise ValueError("input_ids is empty; pass at least one token id ([batch, pos] with pos >= 1)")
        try:
            input_ids = torch.as_tensor(input_ids)
        except (TypeError, ValueError) as err:
            raise TypeError(f"input_ids must be a tensor of token ids, got {type(input_ids).__name__}") from err
    if input_ids.dtype == torch.bool or input_ids.dtype.is_floating_point or input_ids.dtype.is_complex:
        raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.dim() != 2 or input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
        raise ValueError(f"input_ids must have shape [batch, pos] with pos >= 1, got {tuple(input_ids.shape)}")
    check_vocabulary(input_ids, d_vocab)
    if n_ctx is not None and input_ids.shape[1] > n_ctx:
        raise ValueError(f"a prompt of {input_ids.shape[1]} tokens is longer than this model's context of {n_ctx}")
    return input_ids.long()


def _run_lengths(is_pad: Tensor) -> Tensor:
    """Per row of a bool [batch, pos], the length of its leading run of True."""
    return is_pad.long().cumprod(-1).sum(-1)


def check_unmasked_padding(input_ids: Tensor, pad_id: int | None) -> None:
    """Refuse a batch [batch, pos] that is clearly padded with ``pad_id`` but came without an
    attention mask (the rule is in this module's docstring)."""
    if pad_id is None or input_ids.shape[0] < 2:
        return
    is_pad = input_ids == pad_id
    if not bool(is_pad[:, 0].any() or is_pad[:, -1].any()):
        return
    leading, trailing = _run_lengths(is_pad), _run_lengths(is_pad.flip(-1))
    side = None
    if int(leading.max()) > int(leading.min()):
        side, runs = "left", leading
    elif int(trailing.max()) > int(trailing.min()) and int(trailing.max()) >= 2:
        side, runs = "right", trailing
    if side is not None:
        row = int(runs.argmax())
        raise ValueError(
            f"input_ids looks {side}-padded (row {row} {'starts' if side == 'left' else 'ends'} with "
            f"{int(runs[row])} pad tokens, id {pad_id}, that other rows do not) but no attention_mask was "
            "given, so the pads would be read as tokens; pass attention_mask (1 on real tokens, 0 on "
            "padding), as to_tokens([...]) returns it"
        )
