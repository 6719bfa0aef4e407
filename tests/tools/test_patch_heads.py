"""``WriteReadAnalyzer.patch_heads`` on tiny models: exact scores against patched runs done
here with plain torch hooks on the Hugging Face modules (no arrakis code), the signs of
noising and denoising, normalised scores, the result's round trip and plot, and bad input
refused before any forward pass."""

from __future__ import annotations

import json

import pytest
import torch

from arrakis.tasks import Task
from arrakis.tools import WriteReadAnalyzer
from arrakis.tools.results import HeadPatching
from tests.conftest import shared

HEADS = [(0, 1), (1, 3)]


def make_task(model, n: int = 4, seed: int = 0) -> Task:
    """Random prompts of different lengths (so they run padded), the twin differing at two positions."""
    g = torch.Generator().manual_seed(seed)
    rows = [
        torch.randint(1, 512, (int(length),), generator=g).tolist()
        for length in torch.randint(6, 10, (n,), generator=g)
    ]
    corrupted = [[t if p not in (1, 3) else (t * 13) % 511 + 1 for p, t in enumerate(row)] for row in rows]
    answers = torch.randint(1, 512, (n,), generator=g).tolist()
    return Task(rows, corrupted, answer=answers, foil=[a % 511 + 1 for a in answers], model=model)


def o_proj(model, layer: int) -> torch.nn.Module:
    """The module whose input is the heads' z: GPT-2's attn.c_proj, Llama's self_attn.o_proj."""
    hf = model.hf_model
    if model.cfg.family == "gpt2":
        return hf.transformer.h[layer].attn.c_proj
    return hf.model.layers[layer].self_attn.o_proj


def hand_metric(model, task: Task, ids, layer=None, head=None, source=None) -> torch.Tensor:
    """Each example run alone (no padding); with ``source`` (ids), head ``head``'s z in
    ``layer`` at every position replaced by its value in the source run. [n]"""
    d_head, out = model.cfg.d_head, []
    cols = None if head is None else slice(head * d_head, (head + 1) * d_head)
    for i in range(task.n):
        length = int(task.attention_mask[i].sum())
        kept = {}
        if source is not None:
            grab = o_proj(model, layer).register_forward_pre_hook(
                lambda m, a, kept=kept: kept.__setitem__("z", a[0][..., cols].clone())
            )
            with torch.no_grad():
                model.hf_model(source[i : i + 1, :length])
            grab.remove()

            def write(m, a, kept=kept):
                z = a[0].clone()
                z[..., cols] = kept["z"]
                return (z,)

            handle = o_proj(model, layer).register_forward_pre_hook(write)
        with torch.no_grad():
            logits = model.hf_model(ids[i : i + 1, :length]).logits[0, int(task.dst[i])]
        if source is not None:
            handle.remove()
        out.append(logits[task.answer[i]] - logits[task.foil[i]])
    return torch.stack(out)


@pytest.mark.parametrize("variant", ["gpt2", "llama"])
@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_exact_scores_are_the_metric_change_of_hand_patched_runs(variant, direction):
    model = shared(variant)
    task = make_task(model)
    result = WriteReadAnalyzer(model).patch_heads(task, "z", direction=direction)
    clean = hand_metric(model, task, task.clean_ids)
    corrupted = hand_metric(model, task, task.corrupted_ids)
    assert result.clean_metric == pytest.approx(float(clean.mean()), abs=1e-4)
    assert result.corrupted_metric == pytest.approx(float(corrupted.mean()), abs=1e-4)
    for layer, head in HEADS:
        if direction == "noising":  # the clean run with the head from the corrupted run: the drop
            patched = hand_metric(model, task, task.clean_ids, layer, head, task.corrupted_ids)
            expected = clean - patched
        else:  # the corrupted run with the head from the clean run: the recovery
            patched = hand_metric(model, task, task.corrupted_ids, layer, head, task.clean_ids)
            expected = patched - corrupted
        assert torch.allclose(result.per_example[:, layer, head], expected, atol=1e-4)
        assert float(result.scores[layer, head]) == pytest.approx(float(expected.mean()), abs=1e-4)
        gap = float(clean.mean() - corrupted.mean())
        assert float(result.normalised[layer, head]) == pytest.approx(float(expected.mean()) / gap, rel=1e-3)
    assert result.per_example.shape == (task.n, model.cfg.n_layers, model.cfg.n_heads)
    assert any("does not remove the behaviour" in note for note in result.notes) == (result.gap <= 0)


def test_patching_every_head_at_the_twins_identical_positions_changes_nothing():
    """Only positions 1 and 3 differ: z at the first position depends on position 0 alone."""
    model = shared("gpt2")
    result = WriteReadAnalyzer(model).patch_heads(make_task(model), positions=[0])
    assert result.scores.abs().max() < 1e-4 and result.positions == [0]
    moved = WriteReadAnalyzer(model).patch_heads(make_task(model), positions=[1, 3, 5])
    assert moved.scores.abs().max() > 1e-3


def test_estimates_and_grouped_kv_say_what_they_are():
    model = shared("llama")  # 4 query heads, 2 KV heads
    task = make_task(model)
    result = WriteReadAnalyzer(model).patch_heads(task, "k", method="integrated", steps=3)
    assert result.method == "integrated" and result.steps == 3
    assert any("grouped-query" in note for note in result.notes)
    assert any("integrated estimates" in note for note in result.notes)
    scores = result.scores  # heads of one KV group share one K: the same score
    assert torch.allclose(scores[:, 0], scores[:, 1], atol=1e-5) and torch.allclose(
        scores[:, 2], scores[:, 3], atol=1e-5
    )
    exact = WriteReadAnalyzer(model).patch_heads(task, "k")
    assert "grouped-query" in exact.notes[0] and len(exact.notes) == 1
    assert "integrated" in repr(result) and "grouped-query" in result.summary()


def test_top_heads_round_trip_plot_and_repr():
    model = shared("gpt2")
    result = WriteReadAnalyzer(model).patch_heads(make_task(model))
    flat = result.scores.flatten()
    best = int(flat.argmax())
    assert result.top_heads(1) == [(best // 4, best % 4)]
    assert len(result.top_heads(3)) == 3 and float(result.scores[result.top_heads(3)[2]]) <= float(flat.max())
    again = HeadPatching.from_dict(json.loads(json.dumps(result.to_dict())))
    assert torch.allclose(again.scores, result.scores) and torch.allclose(again.normalised, result.normalised)
    assert (again.channel, again.method, again.direction, again.positions) == ("z", "exact", "noising", "all")
    assert again.clean_metric == pytest.approx(result.clean_metric)
    from matplotlib.figure import Figure

    assert isinstance(result.plot(), Figure)
    head = result.top_heads(1)[0]
    assert f"L{head[0]}H{head[1]}" in repr(result) and "clean" in repr(result) and "corrupted" in repr(result)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"channel": "x"}, "unknown channel 'x'; expected one of 'z', 'q', 'k', 'v', 'pattern'"),
        ({"positions": [99]}, "positions: 99 is not a position"),
        ({"positions": "last"}, "unknown positions 'last'"),
        ({"positions": []}, "positions must be 'all', 'dst' or a non-empty list"),
        ({"method": "guess"}, "unknown method 'guess'; expected one of 'exact', 'attribution', 'integrated'"),
        ({"direction": "up"}, "unknown direction 'up'"),
        ({"steps": 0}, "steps must be a positive int"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
    ],
)
def test_bad_arguments_are_refused_before_any_forward(change, message):
    model = shared("gpt2")
    task = make_task(model)
    calls: list[int] = []
    handle = model.hf_model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=message):
            WriteReadAnalyzer(model).patch_heads(task, **change)
    finally:
        handle.remove()
    assert calls == []


def test_a_task_without_twins_or_from_another_vocabulary_is_refused():
    model = shared("gpt2")
    tool = WriteReadAnalyzer(model)
    with pytest.raises(ValueError, match="no corrupted prompts"):
        tool.patch_heads(Task([[1, 2, 3]], answer=4, foil=5))
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        tool.patch_heads(Task([[1, 2, 600]], [[1, 3, 600]], answer=4, foil=5))
    with pytest.raises(TypeError, match=r"needs an arrakis\.tasks\.Task"):
        tool.patch_heads([[1, 2, 3]])
