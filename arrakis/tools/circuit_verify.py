"""``circuits(verify=True)``: each weight-based composition edge tested by path patching
(the mathematics and the intervention: ``arrakis.models.path_patching``; docs/mathematics.md#composition).

One clean pass over the probe keeps the writers' z and the readers' inputs, patterns and z;
then the runs of each reader layer go as copies of the probe in one pass that starts at that
layer from the clean residual stream and stops after it. The null is the same patch
on ``n_null`` random writer -> reader pairs of the same two layers; each edge gets its
causal effect and the effect's ratio to the mean of that null.
"""

from __future__ import annotations

import random
from typing import Any

import torch
from torch import Tensor

from arrakis.models import HookedAutoModel
from arrakis.models.path_patching import attention_kl, output_change, patched_readers, writer_outputs
from arrakis.progress import progress as progress_bar

Head = tuple[int, int]
COPIES = 16  # path-patching runs of one reader layer per pass, as copies of the probe batch


def edge_effects(
    model: HookedAutoModel,
    ids: Tensor,
    mask: Tensor | None,
    pairs: list[tuple[Head, Head]],
    channel: str,
) -> list[float]:
    """The path-patching effect of each (writer, reader) pair through ``channel`` on the probe."""
    writer_layers = sorted({w[0] for w, _ in pairs})
    reader_layers = sorted({r[0] for _, r in pairs})
    names = [f"blocks.{layer}.attn.hook_z" for layer in writer_layers]
    names += [f"blocks.{layer}.ln1_post.hook_in" for layer in writer_layers] if model.cfg.attn_post_norm else []
    for layer in reader_layers:
        names += [f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.attn.hook_z"]
    inputs = model.forward_inputs(ids, mask)
    _, cache = model.run_with_cache(ids, names=sorted(set(names)), attention_mask=mask)
    rows = torch.ones(ids.shape, device=model.device) if mask is None else inputs["attention_mask"].float()
    outputs = {layer: writer_outputs(model, cache, layer) for layer in writer_layers}  # [batch, pos, head, D]
    W_O = model.head_weights(folded=False).W_O
    by_layer: dict[int, list[int]] = {}
    for index, (_, (l2, _)) in enumerate(pairs):
        by_layer.setdefault(l2, []).append(index)
    jobs = [
        (l2, indices[start : start + COPIES])
        for l2, indices in by_layer.items()
        for start in range(0, len(indices), COPIES)
    ]
    effects = [0.0] * len(pairs)
    for l2, indices in progress_bar(jobs, "path patching", "pass", enabled=len(jobs) >= 4):
        resid = cache[f"blocks.{l2}.hook_resid_pre"].float()
        runs = []
        for index in indices:
            (l1, h1), (_, h2) = pairs[index]
            out = outputs[l1][:, :, h1]  # [batch, pos, D]
            mean = (out * rows[..., None]).sum((0, 1)) / rows.sum()  # over the probe's real tokens
            runs.append((h2, resid - out + mean))
        patched = patched_readers(model, inputs, l2, channel, runs, cache[f"blocks.{l2}.hook_resid_pre"])
        for index, (h2, _), result in zip(indices, runs, patched, strict=True):
            if channel == "v":
                clean = cache[f"blocks.{l2}.attn.hook_z"][:, :, h2].float()
                effects[index] = output_change(clean, result, W_O[l2, h2].float().to(clean.device), rows)
            else:
                effects[index] = attention_kl(cache[f"blocks.{l2}.attn.hook_pattern"][:, h2].float(), result, rows)
    return effects


def verify_circuit(
    model: HookedAutoModel, ids: Tensor, mask: Tensor | None, edges: list[tuple[Head, Head]], mode: str, *,
    n_null: int = 8, seed: int = 0,
) -> tuple[list[float], dict[str, Any]]:  # fmt: skip
    """Effects of ``edges`` and the null of random pairs of the same layers: (effects, record)."""
    n_heads = model.cfg.n_heads
    rng = random.Random(seed)
    layer_pairs = sorted({(w[0], r[0]) for w, r in edges})
    tested = set(edges)
    nulls = {}
    for l1, l2 in layer_pairs:  # random pairs of the same layers, not the edges under test
        candidates = [
            ((l1, a), (l2, b)) for a in range(n_heads) for b in range(n_heads) if ((l1, a), (l2, b)) not in tested
        ]
        nulls[(l1, l2)] = rng.sample(candidates, min(n_null, len(candidates))) or [edges[0]]
    every = list(edges) + [pair for pairs in nulls.values() for pair in pairs]
    effects = edge_effects(model, ids, mask, every, mode.lower())
    found, start = {}, len(edges)
    for key, pairs in nulls.items():
        found[key], start = effects[start : start + len(pairs)], start + len(pairs)
    null_mean = {key: sum(values) / len(values) for key, values in found.items()}
    record = {
        "channel": mode.lower(),
        "metric": "mean KL of the reader's attention rows" if mode != "V" else "relative change of its output",
        "n_null": n_null,
        "null": {f"L{l1}->L{l2}": value for (l1, l2), value in null_mean.items()},
        "null_effects": {f"L{l1}->L{l2}": values for (l1, l2), values in found.items()},
        "n_tokens": int(ids.numel() if mask is None else mask.sum()),
    }
    edge_effects_ = effects[: len(edges)]
    ratios = [effect / max(null_mean[(w[0], r[0])], 1e-12) for effect, (w, r) in zip(edge_effects_, edges, strict=True)]
    return [*zip(edge_effects_, ratios, strict=True)], record


def verify_edges(
    model: HookedAutoModel, ids: Tensor, mask: Tensor | None, edges: list, mode: str, *, n_null: int = 8
) -> dict[str, Any]:
    """``verify_circuit`` on a circuit's edges (``CircuitEdge``), filling in each one's
    ``causal_effect`` and ``ratio_to_null``; returns the record."""
    pairs = [(e.writer, e.reader) for e in edges]
    results, record = verify_circuit(model, ids, mask, pairs, mode, n_null=n_null)
    for edge, (effect, ratio) in zip(edges, results, strict=True):
        edge.causal_effect, edge.ratio_to_null = effect, ratio
    return record
