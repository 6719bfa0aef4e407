r"""Activation patching of attention heads, exact and batched (docs/mathematics.md).

For head h of layer l and a channel c (``head_channels``: z, q, k, v or pattern), the patched
run is the *base* run with c of head h, at the chosen positions, taken from the *source* run:

    noising:    base = clean,     source = corrupted    (what breaks when h is corrupted)
    denoising:  base = corrupted, source = clean        (what h alone restores)

and the answer is ``metric(logits at dst)`` of every patched run, per example: [n, n_layers,
n_heads]. The source run's activations are captured once per batch of examples (one forward
pass with read-only hooks). The patched runs are batched: one forward pass holds many copies
of the example batch, copy c with its own (layer, head) patch (batch rows c*b..c*b+b-1), as
many copies as fit the memory budget; only the logits at each row's dst are computed.

Nothing before layer l changes in a copy patched at layer l, so the copies share the base run
up to there: the heads are patched in layer order, the base run's residual stream at the input
of each pass's first patched layer is captured once per example batch (as many layers' as fit
the memory budget), and a pass starts there: the blocks before it are not run, each returns
the captured states (its ``forward`` replaced for that pass only). Which heads share a pass is
chosen to run the fewest layers in all (``pass_groups``): heads scattered over the model go in
several passes, each starting late, not in one pass from the earliest layer.

Under grouped-query attention a k or v patch of query head h replaces the K or V of h's whole
KV group (those heads share it). A "pattern" patch replaces the query rows of h's attention
probabilities at the chosen positions; eager attention has no hook between softmax and
``A @ v``, so the rows of ``z = A v`` are recomputed from the source pattern and the layer's
own values instead, which is the same number.

Every hook is removed when a call ends, also when it raises; the model is not changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from arrakis.models.adapters.base import module_at
from arrakis.models.head_channels import (
    Site,
    call_metric,
    check_heads,
    check_question,
    first_input,
    logits_at_rows,
    position_mask_of,
    replace_input,
    rows_per_pass,
    site,
    source_activations,
)
from arrakis.models.interventions import DEFAULT_BUDGET, AttentionModel
from arrakis.progress import progress as progress_bar


@dataclass(frozen=True)
class Patch:
    """Channel values of one head written into batch rows ``rows`` of the pass: ``values``
    [b, pos, d_head] (for "pattern" [b, query_pos, key_pos]) where ``where`` [b, pos] is True."""

    head: int
    values: Tensor
    where: Tensor
    rows: slice = field(default_factory=lambda: slice(None))


def write_patches(t: Tensor, s: Site, patches: Sequence[Patch]) -> Tensor:
    """``t`` (a projection's output, or the output projection's input, [batch, pos, features])
    with each patch's head features replaced at its positions."""
    t = t.clone()
    for p in patches:
        cols = s.head_columns(p.head).to(t.device)
        old = t[p.rows][..., cols]  # [b, pos, d_head]
        t[p.rows, :, cols] = torch.where(p.where[..., None], p.values.to(t.dtype), old)
    return t


def pattern_to_z(patches: Sequence[Patch], values: Tensor, v_site: Site) -> list[Patch]:
    """Pattern patches as z patches: rows of z = A' v, with v [batch, pos, features] the value
    projection's output of this pass."""
    out = []
    for p in patches:
        v = values[p.rows][..., v_site.head_columns(p.head).to(values.device)]  # [b, key_pos, d_head]
        z = p.values.to(v.dtype) @ v  # [b, query_pos, key_pos] x [b, key_pos, d_head] -> [b, query_pos, d_head]
        out.append(Patch(p.head, z, p.where, p.rows))
    return out


def input_writer(s: Site, patches: Sequence[Patch]) -> Callable:
    """A pre-hook writing ``patches`` into the module's input (the z site)."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return replace_input(args, kwargs, write_patches(first_input(args, kwargs), s, patches))

    return hook


def output_writer(s: Site, patches: Sequence[Patch]) -> Callable:
    """A forward hook writing ``patches`` into the module's output (a q/k/v projection)."""

    def hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        return write_patches(out, s, patches)

    return hook


def pattern_writers(s: Site, v_site: Site, patches: Sequence[Patch]) -> tuple[Callable, Callable]:
    """A forward hook keeping the value projection's output, and a pre-hook on the output
    projection writing the patched rows of z = A' v."""
    seen: dict[str, Tensor] = {}

    def keep_v(module: nn.Module, args: tuple, out: Tensor) -> None:
        seen["v"] = out

    def write_z(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        z_patches = pattern_to_z(patches, seen.pop("v"), v_site)
        return replace_input(args, kwargs, write_patches(first_input(args, kwargs), s, z_patches))

    return keep_v, write_z


@contextmanager
def patching_hooks(model: AttentionModel, channel: str, plan: Mapping[int, Sequence[Patch]]) -> Iterator[None]:
    """Hooks that write ``plan`` (layer -> patches) into the next forward passes; removed on exit,
    also when the pass raises."""
    with ExitStack() as stack:
        for layer, patches in plan.items():
            s = site(model, layer, channel)
            if channel == "pattern":
                v_site = site(model, layer, "v")
                keep_v, write_z = pattern_writers(s, v_site, patches)
                stack.callback(v_site.module.register_forward_hook(keep_v).remove)
                stack.callback(s.module.register_forward_pre_hook(write_z, with_kwargs=True).remove)
            elif s.pre:
                stack.callback(s.module.register_forward_pre_hook(input_writer(s, patches), with_kwargs=True).remove)
            else:
                stack.callback(s.module.register_forward_hook(output_writer(s, patches)).remove)
        yield


def run_with_patches(
    model: AttentionModel,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    patches: Mapping[tuple[int, int], Tensor],
    *,
    channel: str = "z",
    positions: str | Sequence[int] = "all",
    dst: Tensor | None = None,
) -> Tensor:
    """One forward pass with every (layer, head) -> values of ``patches`` written at once; the
    logits [batch, pos, d_vocab].

    ``values``: [batch, pos, d_head] for z, q, k, v (a k or v patch writes its head's KV
    group), [batch, query_pos, key_pos] for "pattern"; written at ``positions`` ("all", a list
    of ints, or "dst" with ``dst`` [batch])."""
    model.require_forward()
    inputs = model.forward_inputs(input_ids, attention_mask)
    n, n_pos = inputs["input_ids"].shape
    dst_t = torch.zeros(n, dtype=torch.long) if dst is None else torch.as_tensor(dst).long() % n_pos
    where = position_mask_of(positions, dst_t.to(inputs["input_ids"].device), n_pos)
    plan: dict[int, list[Patch]] = {}
    for (layer, head), values in check_heads_map(model, patches).items():
        plan.setdefault(layer, []).append(Patch(head, values, where))
    with patching_hooks(model, channel, plan), torch.no_grad():
        return model.hf_model(**inputs, use_cache=False).logits


def check_heads_map(model: AttentionModel, patches: Mapping[tuple[int, int], Tensor]) -> dict[tuple[int, int], Tensor]:
    if not isinstance(patches, Mapping):
        raise TypeError(f"patches maps (layer, head) -> values, got {type(patches).__name__}")
    return dict(zip(check_heads(model.cfg, list(patches)), patches.values(), strict=True))


def patch_heads_exact(
    model: AttentionModel,
    clean_ids: Tensor,
    corrupted_ids: Tensor,
    attention_mask: Tensor | None,
    dst: Tensor,
    metric: Callable[[Tensor, Tensor], Tensor],
    *,
    channel: str = "z",
    positions: str | Sequence[int] = "all",
    direction: str = "noising",
    heads: Sequence[tuple[int, int]] | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> Tensor:
    """The metric of every single-head patched run: [n, n_layers, n_heads] (NaN for heads not in ``heads``).

    Args:
        clean_ids, corrupted_ids: [n, pos], the same shape (and the same ``attention_mask``).
        dst: [n], each example's position whose logits the metric reads.
        metric: ``metric(logits [b, d_vocab], example_index [b]) -> [b]`` (indices into the n examples).
        channel: "z", "q", "k", "v" or "pattern" (module docstring).
        positions: "all", "dst" (each example's own) or a list of ints (negative from the end).
        direction: "noising" (clean run, head from corrupted) or "denoising" (the reverse).
        heads: (layer, head) pairs to patch; None for every head.
        batch_size: batch rows per forward pass (copies x examples); None: what fits 1 GiB.
    """
    model.require_forward()
    question = check_question(model, clean_ids, corrupted_ids, attention_mask, dst, channel, positions, direction)
    todo = sorted(check_heads(model.cfg, heads))  # layer order: a pass starts at its first layer
    cfg, n, n_pos = model.cfg, question.n, question.base_ids.shape[1]
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int (rows per forward pass) or None; got {batch_size!r}")
    rows = batch_size or rows_per_pass(cfg, n_pos, DEFAULT_BUDGET)
    per_batch = min(n, rows)
    copies = max(1, rows // per_batch)
    if copies > cfg.n_heads:  # whole layers per pass: each pass starts at a layer boundary
        copies -= copies % cfg.n_heads
    out = torch.full((n, cfg.n_layers, cfg.n_heads), float("nan"))
    groups = pass_groups([layer for layer, _ in todo], cfg.n_layers, copies)
    jobs = [(start, group) for start in range(0, n, per_batch) for group in groups]
    firsts = sorted({todo[group.start][0] for group in groups} - {0})  # each pass's first layer
    per_state = 4 * per_batch * n_pos * cfg.d_model
    kept = (
        [firsts[i * len(firsts) // k] for i in range(k)] if (k := min(len(firsts), DEFAULT_BUDGET // per_state)) else []
    )
    source: tuple[int, list[Tensor], Starts] | None = None
    for start, group in progress_bar(jobs, "patching", "pass", enabled=progress):
        stop = min(n, start + per_batch)
        base, src_ids, mask, dst_b, where = question.rows(start, stop)
        if source is None or source[0] != start:  # the source run and the base's states, once per example batch
            source = (start, source_activations(model, src_ids, mask, channel), block_inputs(model, base, mask, kept))
        chunk = todo[group]
        logits = patched_copies(model, channel, base, mask, dst_b, where, source[1], chunk, source[2])
        b = stop - start
        examples = torch.arange(start, stop, device=logits.device).repeat(len(chunk))
        values = call_metric(metric, logits, examples).detach().float().view(len(chunk), b).cpu()
        for c, (layer, head) in enumerate(chunk):
            out[start:stop, layer, head] = values[c]
    return out


def pass_groups(layers: Sequence[int], n_layers: int, copies: int) -> list[slice]:
    """Heads (their ``layers``, in layer order) split into passes of at most ``copies`` heads.

    A pass runs every copy from its first head's layer to the end, so a pass of k heads
    starting at layer s costs k (n_layers - s) copy-layers, plus a fixed cost per pass (taken
    as half a copy of the whole model: the capture, the logits, the launches). The split of
    least total cost is found by dynamic programming over where each pass starts; only the
    first head of a layer, or the earliest start the pass size allows, is tried as a start.
    Heads spread over many layers thus run in several shallow passes rather than one pass
    from the earliest layer; all heads of a model still run in whole-layer passes."""
    m, overhead = len(layers), n_layers / 2
    best, cut = [0.0] + [float("inf")] * m, [0] * (m + 1)
    starts = [i for i in range(m) if i == 0 or layers[i] != layers[i - 1]]
    for j in range(1, m + 1):
        lowest = max(0, j - copies)
        for i in {lowest, *(i for i in starts if lowest <= i < j)}:
            cost = best[i] + overhead + (j - i) * (n_layers - layers[i])
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], m
    while j > 0:
        groups.append(slice(cut[j], j))
        j = cut[j]
    return groups[::-1]


def patched_copies(
    model: AttentionModel,
    channel: str,
    ids: Tensor,
    mask: Tensor | None,
    dst: Tensor,
    where: Tensor,
    source: list[Tensor],
    chunk: Sequence[tuple[int, int]],
    starts: Starts | None = None,
) -> Tensor:
    """Logits at dst [len(chunk) * b, d_vocab] of the example batch ``ids`` [b, pos], copied once
    per (layer, head) of ``chunk``, copy c patched at that head from ``source`` (per layer:
    [b, pos, head, d_head], or [b, head, query_pos, key_pos] for "pattern"). With ``starts``,
    the pass starts at the latest kept block input at or before the first head's layer."""
    b = ids.shape[0]
    plan: dict[int, list[Patch]] = {}
    for c, (layer, head) in enumerate(chunk):
        values = source[layer][:, head] if channel == "pattern" else source[layer][:, :, head]
        plan.setdefault(layer, []).append(Patch(head, values, where, slice(c * b, (c + 1) * b)))
    inputs = model.forward_inputs(ids.repeat(len(chunk), 1), None if mask is None else mask.repeat(len(chunk), 1))
    with ExitStack() as stack, torch.no_grad():
        stack.enter_context(logits_at_rows(model.hf_model, dst.repeat(len(chunk))))
        stack.enter_context(patching_hooks(model, channel, plan))
        from_layer, state = (0, None) if starts is None else starts.at(min(layer for layer, _ in chunk))
        if state is not None:
            stack.enter_context(skipped_blocks(model, from_layer, state.repeat(len(chunk), 1, 1), starts.arity))
        return model.hf_model(**inputs, use_cache=False).logits[:, 0].float()


@dataclass(frozen=True)
class Starts:
    """The base run's residual stream entering some blocks (layer -> [b, pos, d_model]), and the
    form of a block's output: 0 for a tensor, else the length of the tuple it returns."""

    states: dict[int, Tensor]
    arity: int = 0

    def at(self, layer: int) -> tuple[int, Tensor | None]:
        """The latest kept block input at or before ``layer``: (its layer, states), or (0, None)."""
        kept = max((k for k in self.states if k <= layer), default=0)
        return kept, self.states.get(kept)


def block_inputs(model: AttentionModel, ids: Tensor, mask: Tensor | None, layers: Sequence[int]) -> Starts:
    """The residual stream entering each block of ``layers`` (all > 0), from one plain run."""
    if not layers:
        return Starts({})
    blocks = module_at(model.hf_model, model.adapter.layers)
    states: dict[int, Tensor] = {}
    arity: list[int] = []

    def keep(layer: int) -> Callable:
        return lambda module, args, kwargs: states.__setitem__(layer, first_input(args, kwargs).detach())

    def form(module: nn.Module, args: tuple, out: object) -> None:
        arity.append(len(out) if isinstance(out, tuple) else 0)

    with ExitStack() as stack, torch.no_grad():
        stack.callback(blocks[0].register_forward_hook(form).remove)
        for layer in layers:
            stack.callback(blocks[layer].register_forward_pre_hook(keep(layer), with_kwargs=True).remove)
        model.hf_model(**model.forward_inputs(ids, mask), use_cache=False)
    return Starts(states, arity[0])


@contextmanager
def skipped_blocks(model: AttentionModel, layer: int, state: Tensor, arity: int) -> Iterator[None]:
    """Blocks 0..layer-1 not run: each returns ``state`` (the input of block ``layer``) in the
    form its own output has (``arity``: a tensor, or a tuple led by the hidden states); every
    block's own forward back on exit."""
    out = (state, *([None] * (arity - 1))) if arity else state
    blocks = module_at(model.hf_model, model.adapter.layers)
    with ExitStack() as stack:
        for block in blocks[:layer]:
            block.forward = lambda *args, **kwargs: out  # an instance attribute over the class's forward
            stack.callback(delattr, block, "forward")
        yield
