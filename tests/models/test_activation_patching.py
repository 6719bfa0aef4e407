"""Exact activation patching of heads against an independent computation.

The reference below uses no arrakis code: plain torch hooks on the Hugging Face modules, found
by their names in each family (q_proj/k_proj/v_proj, GPT-2's fused c_attn, GPT-NeoX's
interleaved query_key_value, Phi-3's qkv_proj; o_proj, c_proj, out_proj, dense), the head's
features sliced here, one patched run per head.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from arrakis.models.activation_patching import patch_heads_exact, run_with_patches
from tests.conftest import VARIANTS, prompt, shared

CHANNELS = ("z", "q", "k", "v", "pattern")
N, POS = 3, 8


# -- the independent reference ------------------------------------------------------------------


def hf_layers(hf: nn.Module) -> list[nn.Module]:
    return [m for name, m in hf.named_modules() if re.fullmatch(r"[a-z_]+\.(h|layers)\.\d+", name)]


def hf_attention(layer: nn.Module) -> nn.Module:
    return next(child for name, child in layer.named_children() if name in ("attn", "self_attn", "attention"))


def hf_module(attn: nn.Module, *suffixes: str) -> tuple[str, nn.Module]:
    for name, module in attn.named_modules():
        if name.split(".")[-1] in suffixes:
            return name.split(".")[-1], module
    raise LookupError(suffixes)


def feature_slice(attn: nn.Module, channel: str, head: int, shape: tuple[int, int, int]) -> tuple[nn.Module, slice]:
    """(module, features) of ``channel`` of query head ``head``: for z the output projection's
    input, otherwise the projection's output."""
    H, kv, dh = shape
    group = head // (H // kv)
    if channel == "z":
        return hf_module(attn, "o_proj", "c_proj", "out_proj", "dense")[1], slice(head * dh, (head + 1) * dh)
    name, module = hf_module(attn, f"{channel}_proj", "c_attn", "query_key_value", "qkv_proj")
    c = "qkv".index(channel)
    if name == "query_key_value":  # [h0: q k v | h1: q k v | ...]
        start = head * 3 * dh + c * dh
    elif name in ("c_attn", "qkv_proj"):  # [q (H heads) | k (kv heads) | v (kv heads)]
        start = (0, H * dh, (H + kv) * dh)[c] + (head if channel == "q" else group) * dh
    else:
        start = (head if channel == "q" else group) * dh
    return module, slice(start, start + dh)


def inputs(ids, mask):
    return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp_min(0)}


def reference(model, base, source, mask, dst, metric, channel, layer, head, where):
    """One head patched by hand: the metric per example [n]."""
    hf = model.hf_model
    shape = (model.cfg.n_heads, model.cfg.n_kv_heads, model.cfg.d_head)
    attn = hf_attention(hf_layers(hf)[layer])
    kept = {}
    if channel == "pattern":
        handle = attn.register_forward_hook(lambda m, a, out: kept.__setitem__("src", out[1][:, head].detach()))
        o_proj, cols = feature_slice(attn, "z", head, shape)
        v_proj, v_cols = feature_slice(attn, "v", head, shape)
    else:
        module, cols = feature_slice(attn, channel, head, shape)
        if channel == "z":
            handle = module.register_forward_pre_hook(lambda m, a: kept.__setitem__("src", a[0][..., cols].clone()))
        else:
            handle = module.register_forward_hook(lambda m, a, out: kept.__setitem__("src", out[..., cols].clone()))
    with torch.no_grad():
        hf(**inputs(source, mask))
    handle.remove()
    src, w = kept["src"], where[..., None]

    def write(t, values):
        t = t.clone()
        t[..., cols] = torch.where(w, values, t[..., cols])
        return t

    if channel == "pattern":
        handles = [
            v_proj.register_forward_hook(lambda m, a, out: kept.__setitem__("v", out[..., v_cols])),
            o_proj.register_forward_pre_hook(lambda m, a: (write(a[0], src @ kept["v"]),)),
        ]
    elif channel == "z":
        handles = [module.register_forward_pre_hook(lambda m, a: (write(a[0], src),))]
    else:
        handles = [module.register_forward_hook(lambda m, a, out: write(out, src))]
    try:
        with torch.no_grad():
            logits = hf(**inputs(base, mask)).logits
    finally:
        for h in handles:
            h.remove()
    return metric(logits[torch.arange(len(dst)), dst], torch.arange(len(dst)))


# -- fixtures ------------------------------------------------------------------------------------


def task(d_vocab: int, seed: int = 1):
    clean = prompt(d_vocab, N, POS, seed)
    corrupted = clean.clone()
    corrupted[:, : POS // 2] = prompt(d_vocab, N, POS // 2, seed + 7)
    mask = torch.ones(N, POS, dtype=torch.long)
    mask[1, :2] = 0  # one left-padded example
    dst = torch.tensor([POS - 1, POS - 1, POS - 2])
    answer, foil = torch.tensor([3, 5, 7]), torch.tensor([11, 13, 17])

    def metric(logits, examples):
        rows = torch.arange(len(examples))
        return logits[rows, answer[examples]] - logits[rows, foil[examples]]

    return clean, corrupted, mask, dst, metric


def some_heads(cfg) -> list[tuple[int, int]]:
    last = cfg.n_layers - 1
    return [(0, 1), (last, 0), (last, cfg.n_heads - 1)]


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_exact_patching_matches_plain_hooks(variant: str, channel: str) -> None:
    model = shared(variant)
    clean, corrupted, mask, dst, metric = task(model.cfg.d_vocab)
    heads = some_heads(model.cfg)
    for direction in ("noising", "denoising"):
        base, source = (clean, corrupted) if direction == "noising" else (corrupted, clean)
        for positions in ("all", [2, -1]):
            got = patch_heads_exact(
                model, clean, corrupted, mask, dst, metric, channel=channel, positions=positions,
                direction=direction, heads=heads,
            )  # fmt: skip
            where = torch.zeros(N, POS, dtype=torch.bool)
            where[:, [2, POS - 1] if positions != "all" else slice(None)] = True
            for layer, head in heads:
                want = reference(model, base, source, mask, dst, metric, channel, layer, head, where)
                torch.testing.assert_close(got[:, layer, head], want, atol=1e-4, rtol=1e-4)
            moved = (got[:, heads[0][0], heads[0][1]] - got[:, heads[1][0], heads[1][1]]).abs().max()
            assert moved > 1e-6  # the heads' patches differ, so the comparison means something
            untouched = torch.ones_like(got, dtype=torch.bool)
            for layer, head in heads:
                untouched[:, layer, head] = False
            assert got[untouched].isnan().all()


@pytest.mark.parametrize("channel", ["z", "v", "pattern"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_passes_that_start_at_a_later_layer_match_plain_hooks(variant: str, channel: str) -> None:
    # one copy per pass (batch_size=N): each pass starts at its head's layer from the base
    # run's captured residual stream, the blocks before it not run
    model = shared(variant)
    clean, corrupted, mask, dst, metric = task(model.cfg.d_vocab)
    last = model.cfg.n_layers - 1
    heads = [(last, 1), (1, 0), (last, 0)]
    calls = []
    handle = hf_attention(hf_layers(model.hf_model)[0]).register_forward_hook(lambda *a: calls.append(1))
    try:
        got = patch_heads_exact(model, clean, corrupted, mask, dst, metric, channel=channel, heads=heads, batch_size=N)
    finally:
        handle.remove()
    where = torch.ones(N, POS, dtype=torch.bool)
    for layer, head in heads:
        want = reference(model, clean, corrupted, mask, dst, metric, channel, layer, head, where)
        torch.testing.assert_close(got[:, layer, head], want, atol=1e-4, rtol=1e-4)
    # block 0's attention ran in the source run and the base run only: every pass skipped it
    assert len(calls) == 2
    assert all("forward" not in block.__dict__ for block in hf_layers(model.hf_model))


@pytest.mark.parametrize("variant", ["gpt2", "llama-mqa-bias", "gemma3", "phi3-mqa", "gpt-neox"])
@pytest.mark.parametrize("channel", CHANNELS)
def test_same_source_gives_the_clean_metric(variant: str, channel: str) -> None:
    model = shared(variant)
    clean, _, mask, dst, metric = task(model.cfg.d_vocab)
    got = patch_heads_exact(model, clean, clean, mask, dst, metric, channel=channel, positions="dst")
    with torch.no_grad():
        logits = model.hf_model(**inputs(clean, mask)).logits[torch.arange(N), dst]
    want = metric(logits, torch.arange(N))
    assert not got.isnan().any()
    torch.testing.assert_close(got, want[:, None, None].expand_as(got), atol=1e-4, rtol=1e-4)


def test_dst_positions_patch_one_row_per_example() -> None:
    model = shared("llama")
    clean, corrupted, mask, dst, metric = task(model.cfg.d_vocab)
    heads = some_heads(model.cfg)
    got = patch_heads_exact(model, clean, corrupted, mask, dst, metric, positions="dst", heads=heads)
    where = torch.nn.functional.one_hot(dst, POS).bool()
    for layer, head in heads:
        want = reference(model, clean, corrupted, mask, dst, metric, "z", layer, head, where)
        torch.testing.assert_close(got[:, layer, head], want, atol=1e-4, rtol=1e-4)


def test_batching_does_not_change_the_answer() -> None:
    model = shared("qwen2")
    clean, corrupted, mask, dst, metric = task(model.cfg.d_vocab)
    one = patch_heads_exact(model, clean, corrupted, mask, dst, metric, channel="v", batch_size=1)
    many = patch_heads_exact(model, clean, corrupted, mask, dst, metric, channel="v")
    torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-5)


def test_run_with_patches_writes_every_head_at_once() -> None:
    model = shared("gpt2")
    clean, corrupted, mask, dst, metric = task(model.cfg.d_vocab)
    _, cache = model.run_with_cache(corrupted, attention_mask=mask)
    cfg = model.cfg
    patches = {(i, h): cache["z", i][:, :, h] for i in range(cfg.n_layers) for h in range(cfg.n_heads)}
    logits = run_with_patches(model, clean, mask, patches, channel="z")
    # every head's z from the corrupted run, at every position: z is all attention adds, but the
    # MLPs and embeddings stay clean, so this is neither run; compare with the reference per head
    one = run_with_patches(model, clean, mask, {(1, 2): patches[(1, 2)]}, channel="z")
    where = torch.ones(N, POS, dtype=torch.bool)
    want = reference(model, clean, corrupted, mask, dst, metric, "z", 1, 2, where)
    torch.testing.assert_close(metric(one[torch.arange(N), dst], torch.arange(N)), want, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        clean_logits = model.hf_model(**inputs(clean, mask)).logits
    assert (logits - clean_logits).abs().max() > 1e-3


def test_hooks_are_removed_when_the_metric_or_forward_raises() -> None:
    model = shared("llama")
    clean, corrupted, mask, dst, _ = task(model.cfg.d_vocab)

    def bad_metric(logits, examples):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        patch_heads_exact(model, clean, corrupted, mask, dst, bad_metric)
    with pytest.raises(ValueError, match="metric must return one value per example"):
        patch_heads_exact(model, clean, corrupted, mask, dst, lambda logits, e: logits)
    with pytest.raises(RuntimeError, match="boom"):
        patch_heads_exact(model, clean, corrupted, mask, dst, bad_metric, heads=[(1, 0)], batch_size=N)
    for module in model.hf_model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert "forward" not in module.__dict__  # the skipped blocks run again


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"channel": "out"}, "channel must be one of 'z', 'q', 'k', 'v', 'pattern'"),
        ({"direction": "both"}, "direction must be 'noising' or 'denoising'"),
        ({"positions": "last"}, "positions must be 'all', 'dst' or a list of ints"),
        ({"positions": [POS]}, f"positions: {POS} is not a position"),
        ({"positions": []}, "positions must be"),
        ({"dst": torch.tensor([0, 1, POS])}, "dst of example"),
        ({"dst": torch.tensor([0, 0, POS - 1])}, "points at padding"),
        ({"dst": torch.tensor([1, 2])}, "dst must hold one integer position per example"),
        ({"corrupted_ids": torch.zeros(N, POS - 1, dtype=torch.long)}, "must have the same shape"),
        ({"heads": [(0, 99)]}, r"heads: \(0, 99\) is not a \(layer, head\)"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
    ],
)
def test_bad_input_is_refused_before_any_forward(change: dict, message: str) -> None:
    model = shared("gpt2")
    clean, corrupted, mask, dst, metric = task(model.cfg.d_vocab)
    calls = []
    handle = model.hf_model.register_forward_pre_hook(lambda *a: calls.append(1))
    kwargs = {"clean_ids": clean, "corrupted_ids": corrupted, "attention_mask": mask, "dst": dst, "metric": metric}
    kwargs.update(change)
    try:
        with pytest.raises(ValueError, match=message):
            patch_heads_exact(model, **kwargs)
    finally:
        handle.remove()
    assert not calls


def test_passes_are_split_to_run_the_fewest_layers():
    """pass_groups against every split of the heads into contiguous passes (brute force)."""
    import itertools
    import random

    from arrakis.models.activation_patching import pass_groups

    def cost(layers, cuts, n_layers):
        bounds = [0, *cuts, len(layers)]
        return sum(n_layers / 2 + (b - a) * (n_layers - layers[a]) for a, b in itertools.pairwise(bounds))

    rng = random.Random(0)
    for _ in range(60):
        n_layers, m = rng.randint(2, 12), rng.randint(1, 9)
        layers, copies = sorted(rng.randrange(n_layers) for _ in range(m)), rng.randint(1, 6)
        groups = pass_groups(layers, n_layers, copies)
        assert [g.start for g in groups] == [0, *(g.stop for g in groups[:-1])] and groups[-1].stop == m
        assert all(0 < g.stop - g.start <= copies for g in groups)
        feasible = [
            cuts
            for r in range(m)
            for cuts in itertools.combinations(range(1, m), r)
            if all(b - a <= copies for a, b in itertools.pairwise([0, *cuts, m]))
        ]
        best = min(cost(layers, cuts, n_layers) for cuts in feasible)
        got = cost(layers, [g.start for g in groups[1:]], n_layers)
        assert got == pytest.approx(best, abs=1e-9), (layers, copies)
    # scattered heads: several late passes rather than one from layer 0
    assert [(g.start, g.stop) for g in pass_groups([0, 20, 21, 22, 23], 24, 8)] == [(0, 1), (1, 5)]
