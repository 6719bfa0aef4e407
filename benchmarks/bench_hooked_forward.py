"""The price of hooks: a cached forward pass against Hugging Face's plain forward.

Baseline: the same Hugging Face module called directly (eager attention), in the same run.
Measured on a random model with the embedded model's shape (SmolLM2-135M: 30 layers, 9
query heads, 3 KV heads, d_model 576) and on the small default Llama. Also times stacking
the per-head weights, the first time and when reused.
"""

from __future__ import annotations

import os
import time

import torch

from arrakis import HookedAutoConfig, HookedAutoModel

SMOLLM_SHAPE = {
    "n_layers": 30,
    "n_heads": 9,
    "n_kv_heads": 3,
    "d_model": 576,
    "d_head": 64,
    "d_mlp": 1536,
    "d_vocab": 49152,
    "tie_word_embeddings": True,
}


def best_of(fn, repeats: int = 5) -> float:
    """The fastest of a few runs, in seconds (the least disturbed by the machine)."""
    fn()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench(label: str, model: HookedAutoModel, pos: int) -> None:
    ids = torch.randint(0, model.cfg.d_vocab, (1, pos), generator=torch.Generator().manual_seed(0))

    def plain() -> None:
        with torch.no_grad():
            model.hf_model(input_ids=ids, use_cache=False)

    t_plain = best_of(plain)
    t_all = best_of(lambda: model.run_with_cache(ids))
    t_pattern = best_of(lambda: model.run_with_cache(ids, names=lambda n: n.endswith("hook_pattern")))
    _, cache = model.run_with_cache(ids)
    cache_mib = sum(t.numel() * t.element_size() for t in cache.values()) / 2**20
    model._weights.clear()
    start = time.perf_counter()
    model.head_weights()
    t_stack = time.perf_counter() - start
    t_reuse = best_of(model.head_weights)
    print(f"{label}, {pos} tokens")
    print(f"  plain HF forward          {t_plain * 1e3:8.1f} ms   (baseline)")
    print(f"  run_with_cache, all hooks {t_all * 1e3:8.1f} ms   x{t_all / t_plain:.2f}   cache {cache_mib:.0f} MiB")
    print(f"  run_with_cache, patterns  {t_pattern * 1e3:8.1f} ms   x{t_pattern / t_plain:.2f}")
    print(f"  head_weights: first {t_stack * 1e3:.1f} ms, reused {t_reuse * 1e6:.0f} us")


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    bench("small default llama", HookedAutoModel(HookedAutoConfig("llama")), pos=50)
    bench("SmolLM2-135M shape (random)", HookedAutoModel(HookedAutoConfig("llama", **SMOLLM_SHAPE)), pos=128)


if __name__ == "__main__":
    main()
