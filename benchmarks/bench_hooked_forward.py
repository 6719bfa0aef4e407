"""The price of hooks: a cached forward pass against Hugging Face's plain forward.

Baseline: the same Hugging Face module called directly (eager attention), in the same run.
Measured on a random model with the embedded model's shape (SmolLM2-135M: 30 layers, 9
query heads, 3 KV heads, d_model 576) and on the small default Llama. Targets: a targeted
cache (the patterns only) within 5% of the plain forward, every hook within 20%.
TransformerLens's ``run_with_cache`` on the same Hugging Face model (its bridge, booted
offline) is printed beside ours as a reference. Also times stacking the per-head weights,
the first time and when reused.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

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


def best_of(fn, repeats: int = 15) -> float:
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
    model.clear_weight_cache()
    start = time.perf_counter()
    model.head_weights()
    t_stack = time.perf_counter() - start
    t_reuse = best_of(model.head_weights)
    print(f"{label}, {pos} tokens")
    print(f"  plain HF forward          {t_plain * 1e3:8.1f} ms   (baseline)")
    print(f"  run_with_cache, all hooks {t_all * 1e3:8.1f} ms   x{t_all / t_plain:.2f}   cache {cache_mib:.0f} MiB")
    print(f"  run_with_cache, patterns  {t_pattern * 1e3:8.1f} ms   x{t_pattern / t_plain:.2f}")
    print(f"  head_weights: first {t_stack * 1e3:.1f} ms, reused {t_reuse * 1e6:.0f} us")
    t_tl = transformer_lens_run_with_cache(model, ids)
    if t_tl is not None:
        print(f"  TransformerLens run_with_cache (all hooks) {t_tl * 1e3:8.1f} ms   x{t_tl / t_plain:.2f}  (reference)")


def transformer_lens_run_with_cache(model: HookedAutoModel, ids: torch.Tensor) -> float | None:
    """TransformerLens's bridge over the same Hugging Face model, or None without it."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import AutoTokenizer
    except ImportError:
        print("  TransformerLens is not installed: no reference")
        return None
    from benchmarks.tl_checkpoint import save_for_transformer_lens

    with tempfile.TemporaryDirectory() as folder:
        save_for_transformer_lens(model, Path(folder))
        bridge = TransformerBridge.boot_transformers(
            folder, hf_model=model.hf_model, tokenizer=AutoTokenizer.from_pretrained(folder)
        )
        with torch.no_grad():
            return best_of(lambda: bridge.run_with_cache(ids))


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    bench("small default llama", HookedAutoModel(HookedAutoConfig("llama")), pos=50)
    bench("SmolLM2-135M shape (random)", HookedAutoModel(HookedAutoConfig("llama", **SMOLLM_SHAPE)), pos=128)


if __name__ == "__main__":
    main()
