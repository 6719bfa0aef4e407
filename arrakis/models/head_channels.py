"""Where one head's channel lives in a Hugging Face module, and the checks of a patching question.

Activation patching (``activation_patching``) and its gradient estimates
(``patching_gradients``) read and write the same five channels of head h in layer l, named as
TransformerLens names them (docs/architecture.md, the hook table):

- ``"z"``: the head's output before W_O, the features ``h * d_head ... (h + 1) * d_head`` of
  what enters the output projection;
- ``"q"``, ``"k"``, ``"v"``: the head's slice of the projection's output (before rotary and
  q/k norms), cut by the adapter's ``qkv_index``; under grouped-query attention K and V
  exist once per KV head, so a k or v of query head h is the whole KV group of h;
- ``"pattern"``: the head's attention probabilities [query_pos, key_pos]. Eager attention
  offers no hook between softmax and ``A @ v``, so a pattern is written through what it
  makes: the head's ``z = A v`` rows at the chosen query positions are recomputed from the
  new pattern and the layer's own values (read at the value projection in the same pass),
  exactly what the attention would have computed with those probabilities.

A ``Site`` says which module call holds a channel (the output projection's input, or a q/k/v
projection's output) and which features of it belong to each head.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from arrakis.models.adapters import qkv_index
from arrakis.models.adapters.base import module_at
from arrakis.models.batching import check_attention_mask
from arrakis.models.config import ModelShape
from arrakis.models.interventions import AttentionModel
from arrakis.models.weights import kv_groups

CHANNELS = ("z", "q", "k", "v", "pattern")
DIRECTIONS = ("noising", "denoising")
POSITION_MODES = ("all", "dst")


@dataclass(frozen=True)
class Site:
    """Channel ``channel`` of one layer: read at ``module``'s input (``pre``) or output.

    ``columns`` [n_c, d_head]: the features of each of its n_c heads (KV heads for k and v);
    ``group`` [n_heads]: the row of ``columns`` query head h reads.
    """

    module: nn.Module
    pre: bool
    columns: Tensor
    group: Tensor

    def head_columns(self, head: int) -> Tensor:
        return self.columns[int(self.group[head])]


def site(model: AttentionModel, layer: int, channel: str) -> Site:
    """Where ``channel`` (z, q, k or v) of ``layer`` is read; "pattern" is written at the z site."""
    a, cfg = model.adapter, model.cfg
    block = module_at(model.hf_model, a.layers)[layer]
    if channel in ("z", "pattern"):
        columns = torch.arange(cfg.n_heads * cfg.d_head).view(cfg.n_heads, cfg.d_head)
        return Site(module_at(block, a.o), True, columns, torch.arange(cfg.n_heads))
    columns = qkv_index(a.qkv_layout, channel, cfg.n_heads, cfg.n_kv_heads, cfg.d_head)
    group = torch.arange(cfg.n_heads) if channel == "q" else kv_groups(cfg.n_heads, cfg.n_kv_heads)
    return Site(module_at(block, getattr(a, channel)), False, columns, group)


def group_representatives(cfg: ModelShape, channel: str) -> Tensor:
    """For each row of a site's ``columns``, one query head that reads it: [n_c]."""
    if channel in ("k", "v") and cfg.n_kv_heads < cfg.n_heads:
        return torch.arange(cfg.n_kv_heads) * (cfg.n_heads // cfg.n_kv_heads)
    return torch.arange(cfg.n_heads)


def replace_input(args: tuple, kwargs: dict, new: Tensor) -> tuple[tuple, dict]:
    """A pre-hook's (args, kwargs) with the module's first input replaced by ``new``."""
    if args:
        return (new, *args[1:]), kwargs
    key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
    return args, {**kwargs, key: new}


def first_input(args: tuple, kwargs: dict) -> Tensor:
    """A module's first input (hidden states), given positionally or by keyword."""
    if args:
        return args[0]
    return kwargs["hidden_states"] if "hidden_states" in kwargs else next(iter(kwargs.values()))


@dataclass(frozen=True)
class Question:
    """A checked patching question: the base run (patched) and the source run (patched from),
    both [n, pos]; the mask or None; each example's dst [n]; the positions to patch [n, pos]."""

    base_ids: Tensor
    source_ids: Tensor
    attention_mask: Tensor | None
    dst: Tensor
    position_mask: Tensor
    channel: str
    direction: str

    @property
    def n(self) -> int:
        return self.base_ids.shape[0]

    def rows(self, start: int, stop: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
        """(base ids, source ids, mask, dst, position mask) of examples start..stop-1."""
        mask = None if self.attention_mask is None else self.attention_mask[start:stop]
        s = slice(start, stop)
        return self.base_ids[s], self.source_ids[s], mask, self.dst[s], self.position_mask[s]


def check_question(
    model: AttentionModel,
    clean_ids: Any,
    corrupted_ids: Any,
    attention_mask: Any,
    dst: Any,
    channel: str,
    positions: str | Sequence[int],
    direction: str,
) -> Question:
    """Every argument of a patching call checked (before any forward pass), or one error naming it."""
    if channel not in CHANNELS:
        raise ValueError(f"channel must be one of {', '.join(map(repr, CHANNELS))}; got {channel!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'noising' or 'denoising'; got {direction!r}")
    clean = model.check_input_ids(clean_ids)
    corrupted = model.check_input_ids(corrupted_ids)
    if clean.shape != corrupted.shape:
        raise ValueError(
            f"clean_ids {list(clean.shape)} and corrupted_ids {list(corrupted.shape)} must have the same shape "
            "(each corrupted prompt as long as its clean twin)"
        )
    mask = check_attention_mask(attention_mask, clean)
    for ids in (clean, corrupted):
        model.forward_inputs(ids, mask)  # the model's own checks (unmasked padding), before any pass
    n, n_pos = clean.shape
    dst = torch.as_tensor(dst).to(clean.device)
    if dst.dtype.is_floating_point or dst.dtype == torch.bool or dst.shape != (n,):
        raise ValueError(f"dst must hold one integer position per example, shape [{n}]; got {list(dst.shape)}")
    bad = ((dst < -n_pos) | (dst >= n_pos)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"dst of example(s) {bad} is out of range: the prompts have {n_pos} positions (0-{n_pos - 1})")
    dst = dst.long() % n_pos
    if mask is not None:
        padded = (mask[torch.arange(n, device=dst.device), dst] == 0).nonzero().flatten().tolist()
        if padded:
            raise ValueError(f"dst of example(s) {padded} points at padding; dst must be a real token")
    position_mask = position_mask_of(positions, dst, n_pos)
    base, source = (clean, corrupted) if direction == "noising" else (corrupted, clean)
    return Question(base, source, mask, dst, position_mask, channel, direction)


def position_mask_of(positions: Any, dst: Tensor, n_pos: int) -> Tensor:
    """[n, pos] bool: True where a patch applies ("all", "dst", or a list of ints, negative from the end)."""
    n = dst.shape[0]
    if isinstance(positions, str):
        if positions not in POSITION_MODES:
            raise ValueError(f"positions must be 'all', 'dst' or a list of ints; got {positions!r}")
        if positions == "all":
            return torch.ones(n, n_pos, dtype=torch.bool, device=dst.device)
        return nn.functional.one_hot(dst, n_pos).bool()
    if not isinstance(positions, Sequence) or len(positions) == 0:
        raise ValueError(f"positions must be 'all', 'dst' or a non-empty list of ints; got {positions!r}")
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, int) or not -n_pos <= p < n_pos:
            raise ValueError(f"positions: {p!r} is not a position of these prompts (ints {-n_pos} to {n_pos - 1})")
    mask = torch.zeros(n, n_pos, dtype=torch.bool, device=dst.device)
    mask[:, [p % n_pos for p in positions]] = True
    return mask


def check_heads(cfg: ModelShape, heads: Any) -> list[tuple[int, int]]:
    """(layer, head) pairs to patch, every head by default; an error names a pair out of range."""
    if heads is None:
        return [(layer, head) for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]
    out = []
    for pair in heads:
        ok = isinstance(pair, Sequence) and len(pair) == 2
        ok = ok and all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
        if not ok or not (0 <= pair[0] < cfg.n_layers and 0 <= pair[1] < cfg.n_heads):
            raise ValueError(
                f"heads: {pair!r} is not a (layer, head) of this model "
                f"(layers 0-{cfg.n_layers - 1}, heads 0-{cfg.n_heads - 1})"
            )
        out.append((int(pair[0]), int(pair[1])))
    if not out:
        raise ValueError("heads is empty: pass (layer, head) pairs, or None for every head")
    return out


def source_activations(model: Any, ids: Tensor, mask: Tensor | None, channel: str) -> list[Tensor]:
    """Per layer, ``channel`` of every head from one forward pass: [batch, pos, head, d_head]
    (k and v expanded to query heads), or for "pattern" [batch, head, query_pos, key_pos]."""
    names = [f"blocks.{layer}.attn.hook_{channel}" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(ids, names, attention_mask=mask)
    return [cache[name] for name in names]


def call_metric(metric: Any, logits: Tensor, examples: Tensor) -> Tensor:
    """``metric(logits [b, d_vocab], example_index [b])``, checked to give one number per row: [b]."""
    value = metric(logits, examples)
    if not isinstance(value, Tensor) or value.shape != (logits.shape[0],):
        shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"metric must return one value per example, a tensor [{logits.shape[0]}]; got {shape}")
    return value


@contextmanager
def logits_at_rows(hf_model: nn.Module, index: Tensor) -> Iterator[None]:
    """Only the hidden state at ``index[b]`` of each batch row b reaches the output embedding:
    logits [batch, 1, d_vocab] instead of [batch, pos, d_vocab]."""
    head = hf_model.get_output_embeddings()

    def pre_hook(module: nn.Module, args: tuple) -> tuple:
        hidden = args[0]  # [batch, pos, d_model] -> [batch, 1, d_model]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return (hidden[rows, index.to(hidden.device)][:, None], *args[1:])

    handle = head.register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


def rows_per_pass(cfg: ModelShape, n_pos: int, budget: int, *, with_graph: bool = False) -> int:
    """How many batch rows of ``n_pos`` tokens fit ``budget`` bytes of activations (patterns,
    residual, MLP; every layer's when a backward pass keeps the graph)."""
    per_row = 4 * n_pos * (3 * cfg.n_heads * n_pos + 16 * cfg.d_model)
    if with_graph:
        per_row *= cfg.n_layers
    return max(1, budget // per_row)
