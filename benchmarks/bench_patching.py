"""Activation patching of every head on a task: cost on the embedded model.

Baseline, in the same run: one plain forward pass over the whole task (its 32 clean prompts in
one batch, ``hf_model(...)`` without gradients, the best of a few repeats). Measured as
multiples of it, with the peak extra resident memory of each call:

- exact patching of heads (z, all positions, noising): a patched copy of the task per head,
  many copies per forward pass, each pass starting at its first patched layer from the clean
  run's residual stream. All 270 heads take minutes on 2 cores, so the heads of three layers
  spread over the model (their mean depth that of all layers) run, one layer per pass, and
  the time is scaled to every head; the per-head cost is the honest number (the goal of
  x3 for all heads is not reachable with one patched run per head);
- the attribution estimate of every head (one base forward and backward pass, one source pass);
- the integrated estimate of every head, 5 steps (a forward and backward pass per step):
  each step is a forward and a backward pass, and the backward pass (gradients of the
  activations only) costs about as much as the forward, so 5 steps cannot go below about x10
  plus the two passes that capture the base and source activations.

Then how well the estimates rank heads: on 16-example IOI and induction tasks, attribution and
integrated estimates against exact patching of all 270 heads (Spearman, and overlap of the
top 10 by size). This part takes about 7 minutes on 2 cores.
"""

from __future__ import annotations

import torch

from arrakis import load_model, tasks
from arrakis.circuits.attribution import spearman
from arrakis.models.activation_patching import patch_heads_exact
from arrakis.models.patching_gradients import patch_heads_estimate
from benchmarks.bench_hooked_forward import best_of
from benchmarks.memory import measure_once

N_EXAMPLES = 32
SAMPLE_LAYERS = (4, 14, 24)  # mean depth 14, as all 30 layers' 14.5


def mib(n_bytes: int | None) -> str:
    return "n/a" if n_bytes is None else f"{n_bytes / 2**20:.0f} MiB"


def main() -> None:
    model = load_model()
    cfg = model.cfg
    task = tasks.ioi(model, N_EXAMPLES)
    args = (model, task.clean_ids, task.corrupted_ids, task.attention_mask, task.dst, task.metric)
    inputs = model.forward_inputs(task.clean_ids, task.attention_mask)

    def forward():
        with torch.no_grad():
            return model.hf_model(**inputs, use_cache=False)

    t_forward = best_of(forward, repeats=3)
    n_heads = cfg.n_layers * cfg.n_heads
    layers = [layer for layer in SAMPLE_LAYERS if layer < cfg.n_layers] or [cfg.n_layers - 1]
    heads = [(layer, head) for layer in layers for head in range(cfg.n_heads)]
    exact, t_sample, m_exact = measure_once(
        lambda: patch_heads_exact(*args, heads=heads, batch_size=N_EXAMPLES * cfg.n_heads)
    )
    assert not exact[:, layers[0]].isnan().any()
    t_exact = t_sample * n_heads / len(heads)
    _, t_attr, m_attr = measure_once(lambda: patch_heads_estimate(*args, method="attribution"))
    _, t_ig, m_ig = measure_once(lambda: patch_heads_estimate(*args, method="integrated", steps=5))

    shape = f"{task.n} x {task.clean_ids.shape[1]} tokens"
    print(f"activation patching on an IOI task, embedded model ({shape}, {n_heads} heads)")
    print(f"  plain forward pass over the task   {t_forward:7.2f} s   (baseline)")
    print(
        f"  exact, every head (z, all pos.)    {t_exact:7.1f} s   x{t_exact / t_forward:.1f} the forward pass, "
        f"x{t_exact / t_forward / n_heads:.3f} per head (goal x3 for all heads: not reachable, one patched run "
        f"per head); measured on the {len(heads)} heads of layers {', '.join(map(str, layers))} "
        f"({t_sample:.1f} s, one layer per pass) and scaled x{n_heads / len(heads):.0f}; peak {mib(m_exact)}"
    )
    print(f"  attribution, every head            {t_attr:7.1f} s   x{t_attr / t_forward:.1f}; peak {mib(m_attr)}")
    print(f"  integrated, every head, 5 steps    {t_ig:7.1f} s   x{t_ig / t_forward:.1f} (goal x8); peak {mib(m_ig)}")

    ranks(model)


def ranks(model) -> None:
    """Attribution and integrated estimates against exact patching of every head, per task."""
    print("  estimates against exact patching of every head (16 examples; Spearman, top-10 overlap):")
    for name in ("ioi", "induction"):
        task = tasks.ioi(model, 16) if name == "ioi" else tasks.induction(model, 16, seq_len=30)
        args = (model, task.clean_ids, task.corrupted_ids, task.attention_mask, task.dst, task.metric)
        clean = task.values(model, "clean")
        exact = (patch_heads_exact(*args) - clean[:, None, None]).mean(0).flatten()
        top = set(exact.abs().topk(10).indices.tolist())
        row = []
        for method in ("attribution", "integrated"):
            estimate = patch_heads_estimate(*args, method=method, steps=5).mean(0).flatten()
            overlap = len(top & set(estimate.abs().topk(10).indices.tolist()))
            row.append(f"{method} {spearman(estimate, exact):.2f}, {overlap}/10")
        print(f"    {name:<10} {'; '.join(row)}")


if __name__ == "__main__":
    main()
