r"""Edge patching: every receiver's input rebuilt from the senders' outputs, in one forward pass
(docs/mathematics.md#task-circuits; the graph: ``arrakis.models.edge_graph``).

Patching the edge u -> v replaces u's contribution to v's input, and to v's input only, by
u's output on the source (corrupted) prompt. With a set P of patched edges, every receiver v
reads

    x_v = resid_v + sum over senders u with (u, v) in P of (out_u^source - out_u^run),

resid_v being the residual stream v reads in this run (attention: the layer's input; the MLP:
the input plus attention's output, or the layer's input under a parallel residual; the
logits: the last layer's output) and out_u^run u's output in this run (which itself moves
when u's inputs are patched). v's own norm is applied afresh to x_v; a head receiver's
channel (Q, K or V) is then projected with that head's columns of the projection (for K and V
under grouped-query attention: its KV head's) and spliced into the projection's output, so
rotary embeddings, q/k norms, masks and soft-capping stay the model's own. Patching every
edge gives every receiver its source input, hence the source run; patching none gives the
base run.

A circuit is a set of edges; running it patches every edge *not* in it. Many circuits run as
copies of the examples in one batch (rows = circuits x examples), each row with its own set:
the sender differences of a row, out^source - out^run, fill a [row, pos, sender, d_model]
buffer as the pass computes them, and each layer's receivers take their part of it through a
[row, sender, receiver] 0/1 matrix (one einsum per layer).

``EdgePass`` is that forward pass; with ``leaves=True`` it also adds a zero leaf to every
receiver input, so one backward pass gives dm/dx_v for every receiver (``edge_gradients``).
Every hook is removed when a pass ends, also when it raises.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor, nn

from arrakis.models.adapters import qkv_index
from arrakis.models.adapters.base import linear_params, module_at
from arrakis.models.edge_graph import CHANNELS, EdgeGraph
from arrakis.models.head_channels import first_input, replace_input
from arrakis.models.hook_capture import read_output
from arrakis.models.hooked_model import HookedAutoModel

_MLP_NORMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> mlp_norms(model)


def sender_outputs(model: HookedAutoModel, ids: Tensor, mask: Tensor | None) -> Tensor:
    """Every sender's output as it enters the residual stream, [batch, sender, pos, d_model]
    in the graph's sender order (embed; per layer its heads, then its MLP), float32."""
    cfg = model.cfg
    names = ["blocks.0.hook_resid_pre"]
    for layer in range(cfg.n_layers):
        names += [f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_mlp_out"]
        if cfg.attn_post_norm:
            names.append(f"blocks.{layer}.ln1_post.hook_in")
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names, attention_mask=mask)
    parts = [cache["blocks.0.hook_resid_pre"].float()[:, None]]
    for layer in range(cfg.n_layers):
        post = cache[f"blocks.{layer}.ln1_post.hook_in"] if cfg.attn_post_norm else None
        parts.append(model.head_outputs(layer, cache[f"blocks.{layer}.attn.hook_z"], post)[0].transpose(1, 2))
        parts.append(cache[f"blocks.{layer}.hook_mlp_out"].float()[:, None])
    return torch.cat(parts, 1)


def mlp_norms(model: HookedAutoModel) -> list[nn.Module | None]:
    """Per layer, the norm whose output the MLP reads (ln2, or ln1 where a parallel-residual
    family shares it), or None where the MLP reads the residual stream itself; found once by
    running two tokens and matching the MLP's input against each norm's output."""
    if model in _MLP_NORMS:
        return _MLP_NORMS[model]
    a = model.adapter
    blocks = module_at(model.hf_model, a.layers)
    seen: dict[int, dict[str, Tensor]] = {}
    handles = []
    try:
        for layer, block in enumerate(blocks):
            seen[layer] = {}
            for key, norm in _norms(block, a).items():
                handles.append(norm.register_forward_hook(_keep(seen[layer], key)))
            mlp = module_at(block, a.mlp)
            handles.append(mlp.register_forward_pre_hook(_keep_input(seen[layer]), with_kwargs=True))
        with torch.no_grad():
            model.hf_model(input_ids=torch.zeros(1, 2, dtype=torch.long, device=model.device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    norms: list[nn.Module | None] = []
    for layer, block in enumerate(blocks):
        got, candidates = seen[layer], _norms(block, a)
        found = [candidates[key] for key in ("ln2", "ln1") if key in got and torch.equal(got[key], got["mlp_in"])]
        norms.append(found[0] if found else None)
    _MLP_NORMS[model] = norms
    return norms


SPARSE = 0.05  # below this share of patched (or of kept) edges, the sum runs over those edges alone


def patched_sum(weights: Tensor, diff: Tensor) -> Tensor:
    """sum_s weights[b, r, s] diff[b, s] for 0/1 ``weights`` [rows, receivers, senders] and
    ``diff`` [rows, senders, features]: [rows, receivers, features]. Every sender before the
    receivers has an edge to them, so where most edges are patched the sum is the total less
    the kept edges'; where few edges are on either side, a sparse product over them alone."""
    density = float(weights.mean()) if weights.numel() else 0.0
    if SPARSE <= density <= 1 - SPARSE:
        return torch.bmm(weights.to(diff.dtype), diff)
    complement = density > 0.5
    chosen = (weights < 0.5) if complement else (weights > 0.5)
    rows, receivers, _ = weights.shape
    b, r, s = chosen.nonzero(as_tuple=True)
    picked = diff.new_zeros(rows * receivers, diff.shape[-1])
    picked.index_add_(0, b * receivers + r, diff[b, s])  # only the chosen (row, sender) pairs are read
    picked = picked.view(rows, receivers, -1)
    return diff.sum(1, keepdim=True) - picked if complement else picked


def _norms(block: nn.Module, adapter: Any) -> dict[str, nn.Module]:
    """The block's ln1 and ln2 modules that exist (a parallel-residual StableLM has no ln2)."""
    found = {}
    for key, path in (("ln1", adapter.ln1), ("ln2", adapter.ln2)):
        try:
            module = block.get_submodule(path) if path is not None else None
        except AttributeError:  # the path names an attribute that is None, not a module
            module = None
        if module is not None:
            found[key] = module
    return found


def _keep(store: dict[str, Tensor], key: str) -> Callable:
    def hook(module: nn.Module, args: tuple, out: Any) -> None:
        store[key] = read_output(args, {}, out).detach()

    return hook


def _keep_input(store: dict[str, Tensor]) -> Callable:
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        store["mlp_in"] = first_input(args, kwargs).detach()

    return hook


class EdgePass:
    """One forward pass of ``model`` with every receiver's input rebuilt (the module doc).

    ``source`` [batch, sender, pos, d_model] (the batch's examples) and ``patched`` [rows,
    sender, receiver] (0/1 float; rows = copies x batch, copy-major) give the patched edges of
    each row; both None: nothing patched. ``leaves``: add a
    zero leaf (requiring grad) to every receiver input, kept in ``self.leaves`` per receiver
    group ("heads", layer) [rows, pos, receivers, d_model], ("mlp", layer) and ("logits", 0)
    [rows, pos, d_model]. ``embed_shift`` [rows, pos, d_model] is added to the embeddings (the
    residual stream entering layer 0), for integrated gradients along the input.
    """

    def __init__(
        self,
        model: HookedAutoModel,
        graph: EdgeGraph,
        source: Tensor | None = None,
        patched: Tensor | None = None,
        *,
        leaves: bool = False,
        embed_shift: Tensor | None = None,
    ) -> None:
        self.model, self.graph, self.cfg = model, graph, model.cfg
        self.source, self.patched = source, patched
        self.make_leaves, self.embed_shift = leaves, embed_shift
        self.leaves: dict[tuple[str, int], Tensor] = {}
        self.diff: Tensor | None = None  # [rows, sender, pos, d_model]: source - run, filled as the pass goes
        self.resid: dict[str, Tensor] = {}
        self.head_inputs: dict[int, dict[str, Tensor]] = {}
        n_heads, n_kv = self.cfg.n_heads, self.cfg.n_kv_heads
        self.sizes = {"q": n_heads, "k": n_kv, "v": n_kv}

    # -- where senders and receivers sit in the graph's order --------------------------------

    def head_senders(self, layer: int) -> slice:
        start = 1 + layer * (self.cfg.n_heads + 1)
        return slice(start, start + self.cfg.n_heads)

    def mlp_sender(self, layer: int) -> int:
        return 1 + layer * (self.cfg.n_heads + 1) + self.cfg.n_heads

    def receivers(self, layer: int) -> slice:
        """The head receivers of ``layer`` (Q, then K, then V); its MLP receiver follows them."""
        per_layer = self.cfg.n_heads + 2 * self.cfg.n_kv_heads + 1
        return slice(layer * per_layer, (layer + 1) * per_layer - 1)

    # -- the receiver inputs ----------------------------------------------------------------

    def rebuilt(self, resid: Tensor, columns: slice | int, key: tuple[str, int], upstream: int) -> Tensor:
        """resid [rows, pos, d] plus the patched senders' differences for the receivers at
        ``columns`` (a slice: [rows, pos, receivers, d]; an int: [rows, pos, d]), plus a leaf;
        only the first ``upstream`` senders can write before these receivers read."""
        many = isinstance(columns, slice)
        x = resid[:, :, None] if many else resid
        if self.patched is not None and self.diff is not None:
            weights = self.patched[:, :upstream, columns]  # [rows, sender, receivers] or [rows, sender]
            if not many:
                weights = weights[..., None]
            rows, _, n_pos, d = self.diff.shape
            diff = self.diff[:, :upstream].reshape(rows, upstream, n_pos * d)
            moved = patched_sum(weights.transpose(1, 2), diff)  # [rows, receivers, pos * d]
            moved = moved.view(rows, -1, n_pos, d).transpose(1, 2).to(resid.dtype)  # [rows, pos, receivers, d]
            x = x + (moved if many else moved[:, :, 0])
        elif many:
            x = x.expand(-1, -1, columns.stop - columns.start, -1)
        if self.make_leaves:
            leaf = torch.zeros(x.shape, dtype=x.dtype, device=x.device, requires_grad=True)
            self.leaves[key] = leaf
            x = x + leaf
        return x

    def record(self, senders: slice | int, run: Tensor) -> None:
        """Keep source - run for ``senders`` (run: [rows, pos, d] or [rows, pos, heads, d])."""
        if self.source is None:
            return
        batch = self.source.shape[0]
        if self.diff is None:  # every slot is written before a receiver reads it
            self.diff = self.source.new_empty(run.shape[0], *self.source.shape[1:])
        if isinstance(senders, slice):  # heads: run [rows, pos, heads, d]
            run = run.transpose(1, 2)
        copies = self.diff.view(-1, batch, *self.diff.shape[1:])  # [copy, batch, sender, pos, d]
        copies[:, :, senders] = self.source[None, :, senders] - run.detach().float().view(-1, batch, *run.shape[1:])

    # -- the hooks --------------------------------------------------------------------------

    def hooks(self, stack: ExitStack) -> None:
        a, cfg = self.model.adapter, self.cfg
        blocks = module_at(self.model.hf_model, a.layers)
        norms = mlp_norms(self.model)
        for layer, block in enumerate(blocks):
            self.add(stack, block, True, self.on_block(layer))
            projections: dict[int, tuple[nn.Module, list[str]]] = {}
            for channel in CHANNELS:
                module = module_at(block, getattr(a, channel))
                projections.setdefault(id(module), (module, []))[1].append(channel)
            ln1 = module_at(block, a.ln1) if a.ln1 is not None else None
            for module, channels in projections.values():
                self.add(stack, module, False, self.on_projection(layer, channels, ln1))
            self.add(stack, module_at(block, a.o), True, self.on_z(layer))
            self.add(stack, module_at(block, a.attn), False, self.on_attention(layer))
            mlp = module_at(block, a.mlp)
            if not cfg.parallel_residual:
                mid = module_at(block, a.ln2) if a.ln2 is not None else mlp
                self.add(stack, mid, True, self.on_resid_mid())
            self.add(stack, mlp, True, self.on_mlp_input(layer, norms[layer]))
            mlp_out = module_at(block, a.mlp_post_norm) if a.mlp_post_norm is not None else mlp
            self.add(stack, mlp_out, False, self.on_mlp_output(layer))
        self.add(stack, module_at(self.model.hf_model, a.ln_final), True, self.on_final_norm())

    @staticmethod
    def add(stack: ExitStack, module: nn.Module, pre: bool, hook: Callable) -> None:
        if pre:
            handle = module.register_forward_pre_hook(hook, with_kwargs=True)
        else:
            handle = module.register_forward_hook(hook, with_kwargs=True)
        stack.callback(handle.remove)

    def on_block(self, layer: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            hidden = first_input(args, kwargs)
            changed = None
            if layer == 0 and self.embed_shift is not None:
                hidden = hidden + self.embed_shift.to(hidden.dtype)
                changed = replace_input(args, kwargs, hidden)
            if layer == 0:
                self.record(0, hidden)
            self.resid["pre"] = hidden
            self.head_inputs.pop(layer - 1, None)
            return changed

        return hook

    def channel_inputs(self, layer: int, ln1: nn.Module | None) -> dict[str, Tensor]:
        """The normalised input of every head receiver of ``layer``, per channel:
        [rows, pos, heads of the channel, d_model]."""
        if layer not in self.head_inputs:
            x = self.rebuilt(self.resid["pre"], self.receivers(layer), ("heads", layer), self.head_senders(layer).start)
            if ln1 is not None:
                x = ln1.forward(x)  # forward(): no hooks of its own run on the rebuilt inputs
            n_q, n_kv = self.sizes["q"], self.sizes["k"]
            self.head_inputs[layer] = {
                "q": x[:, :, :n_q],
                "k": x[:, :, n_q : n_q + n_kv],
                "v": x[:, :, n_q + n_kv :],
            }
        return self.head_inputs[layer]

    def on_projection(self, layer: int, channels: list[str], ln1: nn.Module | None) -> Callable:
        a, cfg = self.model.adapter, self.cfg

        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Tensor) -> Tensor:
            inputs = self.channel_inputs(layer, ln1)
            weight, bias = linear_params(module, a.conv1d)
            out = out.clone()
            for channel in channels:
                index = qkv_index(a.qkv_layout, channel, cfg.n_heads, cfg.n_kv_heads, cfg.d_head).to(out.device)
                w = weight[index]  # [heads, d_head, d_model]
                y = torch.einsum("bphd,hkd->bphk", inputs[channel].to(w.dtype), w)
                if bias is not None:
                    y = y + bias[index]
                out[..., index.flatten()] = y.flatten(-2).to(out.dtype)
            return out

        return hook

    def on_z(self, layer: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            z = first_input(args, kwargs)
            self.resid["z"] = z.view(*z.shape[:-1], self.cfg.n_heads, self.cfg.d_head)

        return hook

    def on_attention(self, layer: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            if self.source is None:
                return
            post = read_output(args, kwargs, out) if self.cfg.attn_post_norm else None
            self.record(self.head_senders(layer), self.model.head_outputs(layer, self.resid["z"], post)[0])

        return hook

    def on_resid_mid(self) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            self.resid["mid"] = first_input(args, kwargs)

        return hook

    def on_mlp_input(self, layer: int, norm: nn.Module | None) -> Callable:
        receiver = self.receivers(layer).stop  # the MLP receiver follows the layer's head receivers

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            resid = self.resid["pre"] if self.cfg.parallel_residual else self.resid["mid"]
            # under a parallel residual the layer's own heads write after its MLP reads
            upstream = self.head_senders(layer).start if self.cfg.parallel_residual else self.mlp_sender(layer)
            x = self.rebuilt(resid, receiver, ("mlp", layer), upstream)
            return replace_input(args, kwargs, norm.forward(x) if norm is not None else x)

        return hook

    def on_mlp_output(self, layer: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            self.record(self.mlp_sender(layer), read_output(args, kwargs, out))

        return hook

    def on_final_norm(self) -> Callable:
        receiver = len(self.graph.receivers) - 1

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            x = self.rebuilt(first_input(args, kwargs), receiver, ("logits", 0), len(self.graph.senders))
            return replace_input(args, kwargs, x)

        return hook
