r"""Attention knockout (Geva et al. 2023): a hooked model run with attention edges blocked,
one knockout at a time or many batched.

Blocking the edge i <- j of head h sets its pre-softmax score to the most negative float,
through the additive attention mask each layer receives, so softmax renormalises the rest
of the row exactly (docs/mathematics.md):

    A'[h, i, j] = 0,      A'[h, i, k] = A[h, i, k] / (1 - A[h, i, j])   (k != j)

A row with every key blocked has nothing left to renormalise: it is refused.

Batched: many knocked-out copies of one prompt run as one batch, each copy with its own
edges. A knockout whose edges all sit in query rows >= q0 cannot change anything before
q0, so the clean prefix ids[:q0] runs once, with its key/value cache, and only the suffix
q0..position runs per copy. Logits are kept at one position only: the output embedding
sees that position's hidden state alone. When every edge is in dst's row (flow
verification), the copies are one token each, and they run as the query tokens of a single
sequence over a single prefix cache, all at dst's position id, each masked from the others
(2.5x faster than a batch row per copy at 60 tokens, 4x at 500, in a tenth of the memory);
a family whose attention masks by position itself (GPT-Neo) keeps a batch row per copy.

The functions take any ``AttentionModel`` (``HookedAutoModel`` is one, and its methods
``run_with_attention_knockout`` and ``knockout_logits`` call these). Every hook is removed
when the call ends, also when it raises.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from arrakis.models.adapters.base import FamilyAdapter, module_at
from arrakis.models.batching import check_position
from arrakis.models.config import ModelShape
from arrakis.progress import progress as progress_bar

Edge = tuple[int | None, int, int]  # (head or None for every head, query_pos, key_pos)
Knockout = Mapping[int, Sequence[Edge]]  # layer -> edges blocked in that layer
DEFAULT_BUDGET = 1 << 30  # bytes of activations one knockout batch may use


class AttentionModel(Protocol):
    """What an intervention needs of a model: its Hugging Face module (eager attention), the
    family adapter, the shape, and the checks of its inputs. ``HookedAutoModel`` is one."""

    hf_model: Any
    adapter: FamilyAdapter
    cfg: ModelShape

    def require_forward(self) -> None: ...

    def check_input_ids(self, input_ids: Any) -> Tensor: ...

    def forward_inputs(self, input_ids: Any, attention_mask: Any = None) -> dict[str, Tensor]: ...


def check_knockouts(cfg: ModelShape, knockouts: Sequence[Knockout], n_pos: int) -> list[dict[int, list[Edge]]]:
    """Validated knockouts as plain dicts, or an error that names the bad layer, head or edge."""
    out = []
    for knockout in knockouts:
        if not isinstance(knockout, Mapping):
            raise TypeError(f"a knockout maps layer -> [(head, query, key), ...], got {type(knockout).__name__}")
        clean: dict[int, list[Edge]] = {}
        for layer, edges in knockout.items():
            what = f"knockout layer {layer}"
            if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < cfg.n_layers:
                raise ValueError(f"{what} is out of range: this model has {cfg.n_layers} layers (0-{cfg.n_layers - 1})")
            clean[layer] = []
            for edge in edges:
                if not isinstance(edge, Sequence) or len(edge) != 3:
                    raise ValueError(f"{what}: an edge is (head, query_pos, key_pos), got {edge!r}")
                head, query, key = edge
                if head is not None and (
                    isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < cfg.n_heads
                ):
                    raise ValueError(f"{what}: head {head!r} is out of range (an int 0-{cfg.n_heads - 1}, or None)")
                if not all(isinstance(p, int) and not isinstance(p, bool) for p in (query, key)):
                    raise TypeError(f"{what}: positions must be ints, got {query!r} -> {key!r}")
                if not 0 <= key <= query < n_pos:
                    raise ValueError(f"{what}: edge {query} -> {key} must satisfy 0 <= key <= query < {n_pos}")
                clean[layer].append((head, query, key))
        out.append(clean)
    return out


def check_rows_keep_a_key(plans: Sequence[Mapping[int, Sequence[Edge]]], attention_mask: Tensor | None = None) -> None:
    """Refuse a knockout that blocks every key a query may attend to: softmax would have nothing
    left to renormalise. The keys a query at position q may attend to are 0..q, less those
    ``attention_mask`` [batch, pos] marks as padding (in any batch row where q is a real token;
    sliding windows are not counted, so a row emptied only by its window is not caught)."""
    rows = None if attention_mask is None else attention_mask.bool().cpu()
    for plan in plans:
        for layer, edges in plan.items():
            blocked: dict[tuple[int | None, int], set[int]] = {}
            for head, query, key in edges:
                blocked.setdefault((head, query), set()).add(key)
            for (head, query), keys in blocked.items():
                if head is not None:
                    keys = keys | blocked.get((None, query), set())
                if len(keys) <= query and rows is None:
                    continue  # some causal key is left
                visible = [set(range(query + 1))] if rows is None else _visible_keys(rows, query)
                if any(seen and seen <= keys for seen in visible):
                    who = "every head" if head is None else f"head {head}"
                    raise ValueError(
                        f"knockout layer {layer}, {who}, query {query}: every key it can attend to is blocked "
                        f"({sorted(keys)}), so nothing is left for softmax to renormalise; leave at least one "
                        f"of keys 0-{query} unblocked"
                    )


def _visible_keys(rows: Tensor, query: int) -> list[set[int]]:
    """Per batch row where ``query`` is a real token, the real keys 0..query it may attend to."""
    return [set(row[: query + 1].nonzero().flatten().tolist()) for row in rows if row[query]]


def additive_mask(kwargs: dict) -> Tensor:
    """The additive 4-D float attention mask an attention module was called with."""
    mask = kwargs.get("attention_mask")
    if mask is None or mask.dim() != 4 or not mask.dtype.is_floating_point:
        raise RuntimeError(f"attention knockout needs an additive 4-D float mask, got {type(mask).__name__}")
    return mask


def knockout_hook(n_heads: int, rows: list[list[Edge]], first_query: int) -> Callable:
    """A pre-hook on an attention module: batch row b blocks ``rows[b]``'s edges (query
    positions counted from ``first_query``, where the pass starts)."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        mask = additive_mask(kwargs)
        # [batch or 1, 1, query_pos, key_pos] -> one mask per copy and head
        mask = mask.expand(len(rows), n_heads, *mask.shape[2:]).clone()
        blocked = torch.finfo(mask.dtype).min
        for b, edges in enumerate(rows):
            for head, query, key in edges:
                mask[b, slice(None) if head is None else head, query - first_query, key] = blocked
        return args, {**kwargs, "attention_mask": mask}

    return hook


def _copies_hook(n_heads: int, rows: list[list[Edge]], n_prefix: int) -> Callable:
    """A pre-hook on an attention module for copies run as query tokens of one sequence: copy b
    is the token at position ``n_prefix`` (the same ids and position id), appended after the
    clean prefix's cache. Each copy sees the prefix as the first copy's row of the model's own
    mask allows (causality, sliding windows) and its own key, not the other copies; then its
    edges are blocked, per head."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        new = copies_mask(kwargs, n_heads, len(rows), n_prefix)
        blocked = torch.finfo(new.dtype).min
        for b, edges in enumerate(rows):
            for head, _, key in edges:
                new[0, slice(None) if head is None else head, b, key if key < n_prefix else n_prefix + b] = blocked
        return args, {**kwargs, "attention_mask": new}

    return hook


def copies_mask(kwargs: dict, n_heads: int, n_copies: int, n_prefix: int) -> Tensor:
    """The additive mask [1, head, copy, n_prefix + n_copies] of ``n_copies`` copies of the token at
    position ``n_prefix`` run as the query tokens of one sequence after the prefix's cache: each
    copy sees the prefix as the model's own mask (in ``kwargs``) lets a query at ``n_prefix`` see it
    (causality, sliding windows), and its own key, never the other copies."""
    mask = additive_mask(kwargs)
    row = mask[0, 0, 0, : n_prefix + 1]  # what a query at position n_prefix may see
    copies = torch.arange(n_copies, device=mask.device)
    blocked = torch.finfo(mask.dtype).min
    new = torch.full((1, n_heads, n_copies, n_prefix + n_copies), blocked, dtype=mask.dtype, device=mask.device)
    new[..., :n_prefix] = row[:n_prefix]
    new[0, :, copies, n_prefix + copies] = row[n_prefix]
    return new


def prefix_cache(model: AttentionModel, input_ids: Tensor, n_prefix: int) -> tuple[DynamicCache, str]:
    """The key/value cache of ``input_ids[:, :n_prefix]`` (every key, also in sliding-window
    layers: mask columns stay positions), computed without a graph, and the keyword the model
    takes it by."""
    cache, cache_arg = DynamicCache(), _cache_argument(model.hf_model)
    with torch.no_grad():
        model.hf_model(input_ids=input_ids[:, :n_prefix], use_cache=True, **{cache_arg: cache})
    return cache, cache_arg


@contextmanager
def logits_at(hf_model: nn.Module, index: int) -> Iterator[None]:
    """Only the hidden state at ``index`` (of the positions this pass runs) reaches the
    output embedding: logits [batch, 1, d_vocab] instead of [batch, pos, d_vocab]."""
    head = hf_model.get_output_embeddings()

    def pre_hook(module: nn.Module, args: tuple) -> tuple:
        return (args[0][:, index : index + 1], *args[1:])

    handle = head.register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


def run_with_attention_knockout(
    model: AttentionModel, input_ids: Tensor | Sequence, knockouts: Knockout, *, attention_mask: Any = None
) -> Any:
    """Run ``model`` on a batch with the edges of ``knockouts`` blocked in every batch row;
    Hugging Face's output (``HookedAutoModel.run_with_attention_knockout``)."""
    model.require_forward()
    inputs = model.forward_inputs(input_ids, attention_mask)
    input_ids = inputs["input_ids"]
    (plan,) = check_knockouts(model.cfg, [knockouts], input_ids.shape[1])
    check_rows_keep_a_key([plan], inputs.get("attention_mask"))
    layers = module_at(model.hf_model, model.adapter.layers)
    with ExitStack() as stack:
        for layer, edges in plan.items():
            attn = module_at(layers[layer], model.adapter.attn)
            hook = knockout_hook(model.cfg.n_heads, [edges] * input_ids.shape[0], 0)
            stack.callback(attn.register_forward_pre_hook(hook, with_kwargs=True).remove)
        with torch.no_grad():
            return model.hf_model(**inputs, use_cache=False)


def knockout_logits(
    model: AttentionModel,
    input_ids: Tensor | Sequence,
    knockouts: Sequence[Knockout],
    position: int = -1,
    *,
    budget: int = DEFAULT_BUDGET,
    progress: bool = True,
    one_sequence: bool = True,
) -> Tensor:
    """Logits at ``position`` [len(knockouts), d_vocab] of one prompt (input_ids [1, pos] or
    [pos]), one row per knockout, computed in batches of copies whose activations fit
    ``budget`` bytes. An empty knockout ({}) gives the clean logits. ``one_sequence=False``
    runs copies as batch rows even where they could be query tokens of one sequence (for
    comparison)."""
    model.require_forward()
    input_ids = model.check_input_ids(input_ids)
    if input_ids.shape[0] != 1:
        raise ValueError(f"knockout_logits takes one prompt, got a batch of {input_ids.shape[0]}")
    if isinstance(knockouts, Mapping) or not isinstance(knockouts, Sequence):
        raise TypeError(
            f"knockouts must be a list of knockouts (each a dict layer -> edges), got {type(knockouts).__name__}; "
            "for one knockout pass [knockout]"
        )
    if len(knockouts) == 0:
        raise ValueError(
            "knockouts is empty: pass at least one knockout (a dict layer -> edges; {} gives the clean logits)"
        )
    n_pos = input_ids.shape[1]
    position = check_position(position, n_pos)
    plans = check_knockouts(model.cfg, knockouts, n_pos)
    check_rows_keep_a_key(plans)
    queries = [q for plan in plans for edges in plan.values() for _, q, _ in edges]
    if any(q > position for q in queries):
        raise ValueError(f"a knocked-out edge's query is after position {position}: it cannot change its logits")
    first = min(queries, default=position)  # nothing before it changes: run that prefix once
    if one_sequence and first == position > 0 and not model.adapter.masks_by_position:  # all in dst's row
        return _knockout_copies(model, input_ids, plans, position, budget=budget, progress=progress)
    cfg = model.cfg
    n_run = position + 1 - first
    keys = position + 1
    per_copy = 4 * n_run * (3 * cfg.n_heads * keys + 16 * cfg.d_model)  # patterns, residual, MLP
    if first > 0:  # each copy's own key/value cache, and one layer's keys and values expanded to every head
        per_copy += 4 * 2 * keys * cfg.d_head * (cfg.n_layers * cfg.n_kv_heads + cfg.n_heads)
    batch = max(1, min(len(plans), budget // max(1, per_copy)))
    layers = module_at(model.hf_model, model.adapter.layers)
    out = []
    with torch.no_grad():
        prefix, cache_arg = prefix_cache(model, input_ids, first) if first > 0 else (None, "")
        starts = range(0, len(plans), batch)
        for start in progress_bar(starts, "knockouts", "batch", enabled=progress and len(starts) >= 4):
            chunk = plans[start : start + batch]
            ids = input_ids[:, first : position + 1].expand(len(chunk), -1)
            cache = None
            if prefix is not None:
                cache = copy.deepcopy(prefix)
                cache.batch_repeat_interleave(len(chunk))
            with ExitStack() as stack:
                stack.enter_context(logits_at(model.hf_model, n_run - 1))
                for layer in sorted({layer for plan in chunk for layer in plan}):
                    rows = [plan.get(layer, []) for plan in chunk]
                    attn = module_at(layers[layer], model.adapter.attn)
                    handle = attn.register_forward_pre_hook(knockout_hook(cfg.n_heads, rows, first), with_kwargs=True)
                    stack.callback(handle.remove)
                kwargs: dict[str, Any] = {"use_cache": cache is not None}
                if cache is not None:
                    kwargs[cache_arg] = cache
                    kwargs["position_ids"] = torch.arange(first, position + 1, device=ids.device).expand(len(chunk), -1)
                out.append(model.hf_model(input_ids=ids, **kwargs).logits[:, -1].float())
    return torch.cat(out)


MAX_COPIES = 512  # copies per pass: their mask grows with its square


def _knockout_copies(
    model: AttentionModel,
    input_ids: Tensor,
    plans: list[dict[int, list[Edge]]],
    position: int,
    *,
    budget: int,
    progress: bool,
) -> Tensor:
    """``knockout_logits`` where every edge's query is ``position``: the clean prefix runs once;
    then all copies of the token at ``position`` run as the query tokens of one sequence over
    that one cache (no copy of it per knockout), each with its own edges blocked and the other
    copies masked out (``_copies_hook``), at ``position``'s position id."""
    cfg = model.cfg
    per_copy = 4 * (4 * cfg.n_heads * (position + 1) + 16 * cfg.d_model + cfg.d_vocab)
    batch = max(1, min(len(plans), MAX_COPIES, budget // per_copy))
    layers = module_at(model.hf_model, model.adapter.layers)
    out = []
    cache, cache_arg = prefix_cache(model, input_ids, position)
    with torch.no_grad():
        starts = range(0, len(plans), batch)
        for start in progress_bar(starts, "knockouts", "batch", enabled=progress and len(starts) >= 4):
            chunk = plans[start : start + batch]
            ids = input_ids[:, position : position + 1].expand(1, len(chunk))
            with ExitStack() as stack:
                for layer, block in enumerate(layers):  # every layer: the copies must not see each other
                    rows = [plan.get(layer, []) for plan in chunk]
                    attn = module_at(block, model.adapter.attn)
                    handle = attn.register_forward_pre_hook(_copies_hook(cfg.n_heads, rows, position), with_kwargs=True)
                    stack.callback(handle.remove)
                kwargs = {
                    cache_arg: copy.deepcopy(cache) if len(starts) > 1 else cache,
                    "position_ids": torch.full_like(ids, position),
                    "use_cache": True,
                }
                out.append(model.hf_model(input_ids=ids, **kwargs).logits[0].float())
    return torch.cat(out)


def _cache_argument(hf_model: nn.Module) -> str:
    """The key/value cache's keyword: ``cache`` from transformers 5.2x, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(hf_model.forward).parameters else "past_key_values"
