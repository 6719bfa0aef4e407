"""Data-based write scores on the embedded model: one pass for all layers, and datasets.

Baseline, in the same run: the per-layer loop the library used before (one forward pass
per layer, caching that layer's ``hook_z`` and forming z W_O as [batch, pos, head, d_model]),
on the same 82-token prompt. Goal: one pass for all layers at least 10x faster. Then a
dataset of 64 prompts of different lengths (8-40 tokens, padded), in batches of 8: tokens
per second, against the same prompts one at a time.
"""

from __future__ import annotations

import time

import torch

from arrakis import load_model
from arrakis.tools import WriteReadAnalyzer

N_TOKENS = 82


def per_layer_loop(model, ids) -> torch.Tensor:
    """The old way: a forward pass per layer."""
    W_O = model.head_weights().W_O
    rows = []
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_z"
        _, cache = model.run_with_cache(ids, names=[name])
        written = torch.einsum("bphk,hkd->bphd", cache[name].float(), W_O[layer].float())
        rows.append(written.norm(dim=-1).mean((0, 1)))
    return torch.stack(rows)


def timed(fn) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    model = load_model()
    tool = WriteReadAnalyzer(model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, model.cfg.d_vocab, (1, N_TOKENS), generator=g)
    model.head_weights()
    per_layer_loop(model, ids[:, :8])  # warm up
    old, t_old = min((timed(lambda: per_layer_loop(model, ids)) for _ in range(2)), key=lambda r: r[1])

    def fresh_write_scores(prompts, batch_size=None):
        tool.clear_cache()  # measure the computation, not the tool's memory of earlier results
        return tool.write_scores(prompts, batch_size=batch_size)

    new, t_new = min((timed(lambda: fresh_write_scores(ids)) for _ in range(3)), key=lambda r: r[1])
    print(f"data-based write scores, embedded model ({model.cfg.n_layers} layers), {N_TOKENS} tokens")
    print(f"  one pass per layer (before)   {t_old:6.2f} s   (baseline)")
    print(f"  one pass for all layers       {t_new:6.2f} s   x{t_old / t_new:.1f} faster (goal >= 10x)")
    print(f"  largest difference            {float((old - new).abs().max()):.2e}")

    lengths = torch.randint(8, 41, (64,), generator=g).tolist()
    dataset = [torch.randint(100, model.cfg.d_vocab, (n,), generator=g).tolist() for n in lengths]
    n_tokens = sum(lengths)
    _, t_batched = timed(lambda: fresh_write_scores(dataset, batch_size=8))
    _, t_single = timed(lambda: fresh_write_scores(dataset, batch_size=1))
    print(f"dataset of 64 prompts ({n_tokens} tokens, 8-40 each), write scores of all layers")
    print(f"  one prompt at a time          {t_single:6.2f} s   {n_tokens / t_single:7.0f} tokens/s   (baseline)")
    print(
        f"  batches of 8, padded          {t_batched:6.2f} s   {n_tokens / t_batched:7.0f} tokens/s   "
        f"x{t_single / t_batched:.1f}"
    )


if __name__ == "__main__":
    main()
