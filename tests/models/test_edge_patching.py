"""Edge patching and edge scores against independent computations.

The references below use no arrakis code beyond the models themselves: plain torch hooks on
the Hugging Face modules, found by their Hugging Face names per family (a small table here),
the head's features sliced by hand (Llama's separate q/k/v projections, GPT-2's fused Conv1D
c_attn, GPT-NeoX's per-head interleaved query_key_value), and gradients by torch.autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from arrakis.models.edge_graph import edge_graph
from arrakis.models.edge_runs import EdgeRunner, TaskRows, edge_scores
from tests.conftest import VARIANTS, prompt, shared

N, POS = 3, 7
ANSWER, FOIL = torch.tensor([3, 5, 7]), torch.tensor([11, 13, 17])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one intra-op thread (on a loaded machine, several threads spend
    100x the time waiting on each other); restored after this module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def metric(logits: Tensor, examples: Tensor) -> Tensor:
    """log p(answer) - log p(foil) of each example's row."""
    logp = logits.float().log_softmax(-1)
    rows = torch.arange(len(examples))
    return logp[rows, ANSWER[examples]] - logp[rows, FOIL[examples]]


def task(d_vocab: int, seed: int = 1) -> TaskRows:
    clean = prompt(d_vocab, N, POS, seed)
    corrupted = clean.clone()
    corrupted[:, : POS - 2] = prompt(d_vocab, N, POS - 2, seed + 7)
    return TaskRows(clean, corrupted, None, torch.full((N,), POS - 1), metric)


def plain_metric(model, ids: Tensor, dst: Tensor, mask: Tensor | None = None, examples: Tensor | None = None) -> Tensor:
    """The metric per example (``examples``: their indices in the task) from a plain Hugging Face forward pass."""
    kwargs = {"input_ids": ids}
    if mask is not None:
        kwargs.update(attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0))
    with torch.no_grad():
        logits = model.hf_model(**kwargs).logits
    examples = torch.arange(len(dst)) if examples is None else examples
    return metric(logits[torch.arange(len(dst)), dst], examples)


def no_hooks_left(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.hf_model.modules())


# -- the independent reference: Hugging Face module names per family -----------------------------


@dataclass
class Parts:
    layers: Callable[[nn.Module], nn.ModuleList]
    final_norm: Callable[[nn.Module], nn.Module]
    ln1: str
    ln2: str  # the norm whose output only the MLP reads
    attn: str
    qkv: str  # "separate" (q_proj, k_proj, v_proj), "concat" (GPT-2 c_attn), "interleaved" (GPT-NeoX)
    o: str
    mlp_out: str  # the module whose output is the MLP's write to the residual stream
    attn_post_norm: str | None = None


LLAMA = Parts(
    lambda hf: hf.model.layers, lambda hf: hf.model.norm,
    "input_layernorm", "post_attention_layernorm", "self_attn", "separate", "self_attn.o_proj", "mlp",
)  # fmt: skip
PARTS = {
    "llama": LLAMA,
    "llama-mqa-bias": LLAMA,
    "qwen2-mqa": LLAMA,
    "gpt2": Parts(
        lambda hf: hf.transformer.h, lambda hf: hf.transformer.ln_f,
        "ln_1", "ln_2", "attn", "concat", "attn.c_proj", "mlp",
    ),
    "gpt-neox": Parts(
        lambda hf: hf.gpt_neox.layers, lambda hf: hf.gpt_neox.final_layer_norm,
        "input_layernorm", "post_attention_layernorm", "attention", "interleaved", "attention.dense", "mlp",
    ),
    "gemma2": Parts(
        lambda hf: hf.model.layers, lambda hf: hf.model.norm,
        "input_layernorm", "pre_feedforward_layernorm", "self_attn", "separate", "self_attn.o_proj",
        "post_feedforward_layernorm", attn_post_norm="post_attention_layernorm",
    ),
}  # fmt: skip


def first_arg(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def with_first_arg(args: tuple, kwargs: dict, value: Tensor) -> tuple[tuple, dict]:
    if args:
        return (value, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": value}


def projection(
    model, parts: Parts, layer: int, channel: str, head: int
) -> tuple[nn.Module, slice, Tensor, Tensor | None]:
    """(module, its output features, W [d_head, d_model], b [d_head]) of one head's (or KV head's) channel."""
    dh, H, kv = model.cfg.d_head, model.cfg.n_heads, model.cfg.n_kv_heads
    attn = parts.layers(model.hf_model)[layer].get_submodule(parts.attn)
    c = "qkv".index(channel)
    if parts.qkv == "separate":
        module, start = attn.get_submodule(f"{channel}_proj"), head * dh
    elif parts.qkv == "concat":  # GPT-2 Conv1D: weight [d_model, 3 d_model]
        module, start = attn.c_attn, (0, H * dh, (H + kv) * dh)[c] + head * dh
    else:  # GPT-NeoX: [h0: q k v | h1: q k v | ...]
        module, start = attn.query_key_value, head * 3 * dh + c * dh
    cols = slice(start, start + dh)
    weight = module.weight[:, cols].T if parts.qkv == "concat" else module.weight[cols]
    return module, cols, weight, None if module.bias is None else module.bias[cols]


def head_out_weight(model, parts: Parts, layer: int, head: int) -> Tensor:
    """W_O[head] [d_head, d_model]."""
    o = parts.layers(model.hf_model)[layer].get_submodule(parts.o)
    cols = slice(head * model.cfg.d_head, (head + 1) * model.cfg.d_head)
    return o.weight[cols] if parts.qkv == "concat" else o.weight[:, cols].T


def run_hooked(model, ids: Tensor, hooks: list[tuple[nn.Module, str, Callable]], grad: bool = False) -> Tensor:
    """Logits [b, pos, vocab] of a plain forward pass with ``hooks`` (module, "pre"|"post", fn)."""
    handles = []
    try:
        for module, kind, fn in hooks:
            if kind == "pre":
                handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(fn))
        with torch.set_grad_enabled(grad):
            return model.hf_model(input_ids=ids).logits
    finally:
        for handle in handles:
            handle.remove()


def sender_output(model, parts: Parts, ids: Tensor, sender: tuple) -> Tensor:
    """The sender's write to the residual stream [b, pos, d_model] (float) on ``ids``."""
    blocks, kept = parts.layers(model.hf_model), {}
    if sender[0] == "embed":
        hooks = [(blocks[0], "pre", lambda m, a, k: kept.__setitem__("out", first_arg(a, k)))]
    elif sender[0] == "mlp":
        module = blocks[sender[1]].get_submodule(parts.mlp_out)
        hooks = [(module, "post", lambda m, a, out: kept.__setitem__("out", out))]
    else:
        _, layer, head = sender
        block = blocks[layer]
        cols = slice(head * model.cfg.d_head, (head + 1) * model.cfg.d_head)
        hooks = [(block.get_submodule(parts.o), "pre", lambda m, a, k: kept.__setitem__("z", a[0][..., cols]))]
        if parts.attn_post_norm:  # the post-norm's per-token scale of this run, its gain
            post = block.get_submodule(parts.attn_post_norm)
            hooks.append((post, "pre", lambda m, a, k: kept.__setitem__("attn", a[0])))
    run_hooked(model, ids, hooks)
    if sender[0] != "head":
        return kept["out"].detach().float()
    out = kept["z"].float() @ head_out_weight(model, parts, layer, head).float()
    if parts.attn_post_norm:  # Gemma-2 RMSNorm: x / rms(x) * (1 + w)
        attn = kept["attn"].float()
        scale = torch.rsqrt(attn.pow(2).mean(-1, keepdim=True) + post.eps)
        out = out * scale * (1 + post.weight.float())
    return out.detach()


def receiver_hooks(model, parts: Parts, receiver: tuple, rebuild: Callable[[Tensor], Tensor]) -> list:
    """Hooks that give ``receiver`` the input rebuild(resid), resid being what it reads in the run;
    nothing else changes."""
    blocks = parts.layers(model.hf_model)
    if receiver[0] == "logits":
        norm = parts.final_norm(model.hf_model)
        return [(norm, "pre", lambda m, a, k: ((rebuild(a[0]), *a[1:]), k))]
    if receiver[0] == "mlp":  # the MLP's norm: its output only feeds the MLP
        norm = blocks[receiver[1]].get_submodule(parts.ln2)
        return [(norm, "pre", lambda m, a, k: ((rebuild(a[0]), *a[1:]), k))]
    channel, layer, head = receiver
    block, kept = blocks[layer], {}
    module, cols, weight, bias = projection(model, parts, layer, channel, head)
    ln1 = block.get_submodule(parts.ln1)

    def splice(m: nn.Module, args: tuple, out: Tensor) -> Tensor:
        y = nn.functional.linear(ln1(rebuild(kept["resid"])), weight, bias)
        out = out.clone()
        out[..., cols] = y.to(out.dtype)
        return out

    return [
        (block, "pre", lambda m, a, k: kept.__setitem__("resid", first_arg(a, k))),
        (module, "post", splice),
    ]


def node_name(model, node: tuple) -> str:
    grouped = model.cfg.n_kv_heads < model.cfg.n_heads
    if node[0] in ("embed", "logits"):
        return node[0]
    if node[0] == "mlp":
        return f"MLP{node[1]}"
    if node[0] == "head":
        return f"L{node[1]}H{node[2]}"
    kind = "KV" if grouped and node[0] != "q" else "H"
    return f"L{node[1]}{kind}{node[2]} ({node[0].upper()})"


def edge_index(model, sender: tuple, receiver: tuple) -> int:
    name = f"{node_name(model, sender)} -> {node_name(model, receiver)}"
    return edge_graph(model.cfg).edge_names().index(name)


def embed_shift_hook(model, parts: Parts, shift: Tensor) -> tuple:
    block = parts.layers(model.hf_model)[0]
    return (block, "pre", lambda m, a, k: with_first_arg(a, k, first_arg(a, k) + shift.to(first_arg(a, k).dtype)))


def reference_patched(model, parts: Parts, rows: TaskRows, sender: tuple, receiver: tuple) -> float:
    """The mean metric with the one edge sender -> receiver patched, by hand: out^run = out^clean
    for a single edge (the sender writes before the receiver reads, upstream all is clean)."""
    delta = sender_output(model, parts, rows.corrupted, sender) - sender_output(model, parts, rows.clean, sender)
    hooks = receiver_hooks(model, parts, receiver, lambda resid: resid + delta.to(resid.dtype))
    logits = run_hooked(model, rows.clean, hooks)
    return float(metric(logits[torch.arange(rows.n), rows.dst], torch.arange(rows.n)).mean())


def reference_score(model, parts: Parts, rows: TaskRows, sender: tuple, receiver: tuple, alpha: float = 0.0) -> float:
    """-(sum over examples and positions of (out^corr - out^clean) . dm/dx_v) / n, the gradient
    at the receiver's input taken by autograd on a zero leaf, in the clean run with the input
    embeddings moved by alpha (e_corr - e_clean)."""
    delta = sender_output(model, parts, rows.corrupted, sender) - sender_output(model, parts, rows.clean, sender)
    leaf = torch.zeros(rows.n, rows.clean.shape[1], model.cfg.d_model, requires_grad=True)
    hooks = []
    if alpha:
        shift = alpha * (
            sender_output(model, parts, rows.corrupted, ("embed",))
            - sender_output(model, parts, rows.clean, ("embed",))
        )
        hooks.append(embed_shift_hook(model, parts, shift))
    hooks += receiver_hooks(model, parts, receiver, lambda resid: resid + leaf.to(resid.dtype))
    logits = run_hooked(model, rows.clean, hooks, grad=True)
    value = metric(logits[torch.arange(rows.n), rows.dst], torch.arange(rows.n)).sum()
    (grad,) = torch.autograd.grad(value, leaf)
    return float(-(delta * grad).sum() / rows.n)


def edges_of(variant: str, cfg) -> list[tuple[tuple, tuple]]:
    """(sender, receiver) pairs of every kind: head -> Q, K, V (a KV head under GQA), embed -> MLP,
    MLP -> logits, head -> logits, and a few more."""
    last_kv = cfg.n_kv_heads - 1
    edges = [
        (("head", 0, 1), ("q", 1, 2)),
        (("head", 0, 2), ("k", 1, last_kv)),
        (("head", 0, 3), ("v", 1, 0)),
        (("embed",), ("mlp", 0)),
        (("mlp", 1), ("logits",)),
        (("head", 1, 0), ("logits",)),
        (("embed",), ("q", 0, 3)),
        (("mlp", 0), ("k", 1, 0)),
        (("embed",), ("v", 1, last_kv)),
    ]
    if not cfg.parallel_residual:
        edges.append((("head", 1, 2), ("mlp", 1)))
    return edges


# -- 1. nothing patched: the clean run; everything patched: the corrupted run ----------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_no_edge_is_the_clean_run_every_edge_the_corrupted_run(variant: str) -> None:
    model = shared(variant)
    rows = task(model.cfg.d_vocab)
    runner = EdgeRunner(model, rows)
    clean = plain_metric(model, rows.clean, rows.dst).mean()
    corrupted = plain_metric(model, rows.corrupted, rows.dst).mean()
    assert abs(clean - corrupted) > 1e-3  # the two runs differ, so the comparison means something
    assert runner.clean_metric == pytest.approx(float(clean), abs=1e-4)
    assert runner.corrupted_metric == pytest.approx(float(corrupted), abs=1e-4)
    n = runner.graph.n_edges
    sets = torch.zeros(3, n, dtype=torch.bool)
    sets[1] = True
    got = runner.run(sets)
    torch.testing.assert_close(got, torch.stack([clean, corrupted, clean]).float(), atol=1e-4, rtol=0)
    assert no_hooks_left(model)


@pytest.mark.parametrize("variant", ["gpt2", "qwen2-mqa", "gemma2"])
def test_right_padded_batch_matches_each_prompt_alone(variant: str) -> None:
    model = shared(variant)
    lengths = [POS, POS - 3, POS - 1]
    clean = prompt(model.cfg.d_vocab - 1, N, POS, 3) + 1  # no token is 0 (a pad id)
    corrupted = prompt(model.cfg.d_vocab - 1, N, POS, 4) + 1
    mask = torch.zeros(N, POS, dtype=torch.long)
    for i, length in enumerate(lengths):
        mask[i, :length] = 1
    clean, corrupted = clean * mask, corrupted * mask  # right padding with token 0
    dst = torch.tensor(lengths) - 1
    runner = EdgeRunner(model, TaskRows(clean, corrupted, mask, dst, metric))
    want = {}
    for name, ids in (("clean", clean), ("corrupted", corrupted)):
        alone = [
            plain_metric(model, ids[i : i + 1, :length], dst[i : i + 1], examples=torch.tensor([i]))
            for i, length in enumerate(lengths)
        ]
        want[name] = float(torch.cat(alone).mean())
    assert abs(want["clean"] - want["corrupted"]) > 1e-3
    assert runner.clean_metric == pytest.approx(want["clean"], abs=1e-4)
    assert runner.corrupted_metric == pytest.approx(want["corrupted"], abs=1e-4)


def test_attention_to_mlp_edges_exist_only_in_sequential_families() -> None:
    for variant, within in (("gpt-neox", False), ("gpt-neox-sequential-nobias", True), ("llama", True)):
        cfg = shared(variant).cfg
        names = set(edge_graph(cfg).edge_names())
        assert ("L1H0 -> MLP1" in names) is within
        assert "L0H0 -> MLP1" in names and "MLP0 -> L1H0 (Q)" in names
        assert "L1H0 -> L1H1 (Q)" not in names and "MLP1 -> MLP1" not in names and "MLP1 -> L1H0 (Q)" not in names


# -- 2. one edge patched = plain hooks ------------------------------------------------------------


@pytest.mark.parametrize("variant", list(PARTS))
def test_one_edge_patched_matches_plain_hooks(variant: str) -> None:
    model = shared(variant)
    rows = task(model.cfg.d_vocab)
    parts = PARTS[variant]
    runner = EdgeRunner(model, rows)
    edges = edges_of(variant, model.cfg)
    sets = torch.zeros(len(edges), runner.graph.n_edges, dtype=torch.bool)
    for i, (sender, receiver) in enumerate(edges):
        sets[i, edge_index(model, sender, receiver)] = True
    got = runner.run(sets)
    for i, (sender, receiver) in enumerate(edges):
        want = reference_patched(model, parts, rows, sender, receiver)
        assert float(got[i]) == pytest.approx(want, abs=1e-4), (sender, receiver)
        assert abs(want - runner.clean_metric) > 5e-4, (sender, receiver)  # 5x the tolerance: the patch moves it


# -- 3. attribution scores = brute-force gradients -------------------------------------------------


@pytest.mark.parametrize("variant", list(PARTS))
def test_attribution_scores_match_autograd_at_each_receiver(variant: str) -> None:
    model = shared(variant)
    rows = task(model.cfg.d_vocab)
    scores = edge_scores(model, rows, method="attribution")
    assert scores.shape == (edge_graph(model.cfg).n_edges,)
    for sender, receiver in edges_of(variant, model.cfg):
        want = reference_score(model, PARTS[variant], rows, sender, receiver)
        got = float(scores[edge_index(model, sender, receiver)])
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6), (sender, receiver)
    assert scores.abs().max() > 1e-2
    assert no_hooks_left(model)
    assert all(p.requires_grad for p in model.hf_model.parameters())  # the flags are restored


@pytest.mark.parametrize("variant", ["llama", "gpt2", "gemma2"])
def test_attribution_approximates_the_exact_single_edge_drop(variant: str) -> None:
    # first order only, so loosely: one token corrupted (small differences), the scores of all
    # edges correlate with the exact drops and the largest drops have the scores' signs
    model = shared(variant)
    rows = task(model.cfg.d_vocab)
    corrupted = rows.clean.clone()
    corrupted[:, 2] = prompt(model.cfg.d_vocab, N, 1, 9)[:, 0]
    rows = TaskRows(rows.clean, corrupted, None, rows.dst, metric)
    runner = EdgeRunner(model, rows)
    n = runner.graph.n_edges
    exact = runner.clean_metric - runner.run(torch.eye(n, dtype=torch.bool))
    scores = edge_scores(model, rows)
    assert torch.corrcoef(torch.stack([scores, exact]))[0, 1] > 0.7
    top = exact.abs().argsort(descending=True)[:3]
    assert (scores[top].sign() == exact[top].sign()).all()


# -- 4. integrated scores ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["llama", "gpt2", "gemma2"])
def test_integrated_one_step_is_the_gradient_at_the_midpoint(variant: str) -> None:
    model = shared(variant)
    rows = task(model.cfg.d_vocab)
    attribution = edge_scores(model, rows)
    one = edge_scores(model, rows, method="integrated", steps=1)
    assert (one - attribution).abs().max() > 0.05  # not the gradient at alpha = 0
    for sender, receiver in edges_of(variant, model.cfg)[:5]:
        want = reference_score(model, PARTS[variant], rows, sender, receiver, alpha=0.5)
        got = float(one[edge_index(model, sender, receiver)])
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6), (sender, receiver)
    # two steps: Gauss-Legendre nodes 1/2 -+ 1/(2 sqrt 3), weights 1/2 each
    two = edge_scores(model, rows, method="integrated", steps=2)
    nodes = (0.5 - 0.5 / 3**0.5, 0.5 + 0.5 / 3**0.5)
    for sender, receiver in edges_of(variant, model.cfg)[:2]:
        want = sum(0.5 * reference_score(model, PARTS[variant], rows, sender, receiver, alpha=a) for a in nodes)
        assert float(two[edge_index(model, sender, receiver)]) == pytest.approx(want, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("variant", ["llama", "gpt-neox", "qwen2-mqa"])
def test_integrated_scores_converge_as_steps_grow(variant: str) -> None:
    model = shared(variant)
    rows = task(model.cfg.d_vocab)
    s4, s8, s16, s32 = (edge_scores(model, rows, method="integrated", steps=k) for k in (4, 8, 16, 32))
    scale = s32.abs().max()
    assert scale > 0.1
    gaps = [float((s - s32).abs().max() / scale) for s in (s4, s8, s16)]
    # Gauss-Legendre: the error shrinks fast (qwen2-mqa: 14%, 2.4%, 0.06% of the largest score)
    assert gaps[1] < 0.05 and gaps[2] < 0.005
    assert gaps[0] > gaps[1] > gaps[2]


# -- 5. bad input ------------------------------------------------------------------------------------


def test_bad_patched_sets_are_refused() -> None:
    model = shared("llama")
    runner = EdgeRunner(model, task(model.cfg.d_vocab))
    n = runner.graph.n_edges
    expected = rf"patched must be a bool tensor \[n_sets, {n}\]"
    for bad in (
        torch.zeros(2, n + 1, dtype=torch.bool),
        torch.zeros(n, dtype=torch.bool),
        torch.zeros(2, n),  # float
        torch.zeros(2, n, dtype=torch.long),
    ):
        with pytest.raises(ValueError, match=expected):
            runner.run(bad)
    assert no_hooks_left(model)


@pytest.mark.parametrize(("change", "message"), [({"method": "x"}, "method must be"), ({"steps": 0}, "steps must be")])
def test_bad_score_options_are_refused(change: dict, message: str) -> None:
    model = shared("llama")
    with pytest.raises(ValueError, match=message):
        edge_scores(model, task(model.cfg.d_vocab), **{"method": "integrated", **change})


def test_task_rows_of_different_shapes_are_refused() -> None:
    clean = prompt(512, N, POS)
    with pytest.raises(ValueError, match=r"differ in shape: \(3, 7\) vs \(3, 6\)"):
        TaskRows(clean, clean[:, :-1], None, torch.full((N,), POS - 1), metric)


def test_no_hooks_are_left_after_a_pass_fails() -> None:
    model = shared("gpt2")
    rows = task(model.cfg.d_vocab)
    runner = EdgeRunner(model, rows)
    bad_dst = TaskRows(rows.clean, rows.corrupted, None, torch.full((N,), POS + 5), metric)
    runner.rows = bad_dst  # fails inside the patched forward pass, where the hooks are
    with pytest.raises(IndexError):
        runner.run(torch.ones(1, runner.graph.n_edges, dtype=torch.bool))
    assert no_hooks_left(model)
    with pytest.raises(IndexError):
        edge_scores(model, bad_dst)
    assert no_hooks_left(model)
    assert all(p.requires_grad for p in model.hf_model.parameters())

    def boom(logits: Tensor, examples: Tensor) -> Tensor:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        edge_scores(model, TaskRows(rows.clean, rows.corrupted, None, rows.dst, boom), method="integrated", steps=2)
    assert no_hooks_left(model)
    assert all(p.requires_grad for p in model.hf_model.parameters())
