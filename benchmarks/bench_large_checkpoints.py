"""Weight-based analyses of checkpoints far larger than the embedded model, streamed.

The benchmark writes synthetic checkpoints itself (random weights, attention and norm
tensors only, bfloat16, sharded safetensors with an index, as Hugging Face saves them):

- the attention shapes of Llama-3.2-1B: 16 layers, 32 heads, 8 KV heads, d_model 2048, d_head 64;
- (with ARRAKIS_BENCH_7B=1, as it is long) a 7B Llama: 32 layers, 32 heads, d_model 4096, d_head 128.

Each is analysed end to end from a weights-only model: write scores of every layer, read
scores of every layer for one direction, and all three composition modes. It prints the
time and the peak memory of the analysis (resident memory beyond what the process held
before it, benchmarks/memory.py). Targets on a 24 GiB, 2-core machine: the 1B shape in
under 30 s; the 7B shape in under 15 minutes and 8 GiB. The baseline, in the same run,
is the time to read the stacked weights alone. For the 1B shape it then prints composition
against the GEMM bound of its flops, per mode and for Q+K+V (benchmarks/bench_gemm_bound.py:
seconds, flops, the rate of a plain D x D matmul measured in the same run, bound and ratio).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from benchmarks.memory import measure_once

SHAPES = {
    "Llama-3.2-1B attention": dict(n_layers=16, n_heads=32, n_kv_heads=8, d_model=2048, d_head=64),
    "7B Llama attention": dict(n_layers=32, n_heads=32, n_kv_heads=32, d_model=4096, d_head=128),
}
GIB = 2**30


def write_checkpoint(folder: Path, n_layers: int, n_heads: int, n_kv_heads: int, d_model: int, d_head: int) -> None:
    """config.json, and per layer the q/k/v/o projections and both norms, one shard per
    four layers, with model.safetensors.index.json."""
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "hidden_size": d_model,
        "head_dim": d_head,
        "intermediate_size": 4 * d_model,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "torch_dtype": "bfloat16",
    }
    (folder / "config.json").write_text(json.dumps(config))
    generator = torch.Generator().manual_seed(0)
    std = d_model**-0.5
    weight_map, shard, tensors = {}, 0, {}

    def flush() -> None:
        nonlocal shard, tensors
        name = f"model-{shard:05d}.safetensors"
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        shard, tensors = shard + 1, {}

    for layer in range(n_layers):
        p = f"model.layers.{layer}."
        shapes = {
            "self_attn.q_proj.weight": (n_heads * d_head, d_model),
            "self_attn.k_proj.weight": (n_kv_heads * d_head, d_model),
            "self_attn.v_proj.weight": (n_kv_heads * d_head, d_model),
            "self_attn.o_proj.weight": (d_model, n_heads * d_head),
        }
        for name, shape in shapes.items():
            tensors[p + name] = (std * torch.randn(shape, generator=generator)).to(torch.bfloat16)
        for norm in ("input_layernorm.weight", "post_attention_layernorm.weight"):
            tensors[p + norm] = (1 + 0.1 * torch.randn(d_model, generator=generator)).to(torch.bfloat16)
        if layer % 4 == 3:
            flush()
    if tensors:
        flush()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def analyse(folder: Path) -> dict:
    from arrakis import HookedAutoModel
    from arrakis.tools import WriteReadAnalyzer

    model = HookedAutoModel.from_pretrained(folder, weights_only=True, dtype=torch.bfloat16)
    tool = WriteReadAnalyzer(model)
    times = {}
    start = time.perf_counter()
    model.head_weights()
    times["read weights"] = time.perf_counter() - start
    start = time.perf_counter()
    for layer in range(model.cfg.n_layers):
        tool.identify_write_heads(layer)
        tool.identify_read_heads(layer, dim_idx=0)
    times["write + read scores"] = time.perf_counter() - start
    start = time.perf_counter()
    from arrakis.circuits.composition import composition_scores

    w = model.head_weights()
    scores = composition_scores(w.W_Q, w.W_K, w.W_V, w.W_O, progress=True)
    times["composition Q+K+V"] = time.perf_counter() - start
    times["max K score"] = float(scores["K"].max())
    return times


def gemm_bound(folder: Path, n_kv_heads: int) -> None:
    from arrakis import HookedAutoModel
    from benchmarks.bench_gemm_bound import report

    model = HookedAutoModel.from_pretrained(folder, weights_only=True, dtype=torch.bfloat16)
    w = model.head_weights()
    report(w.W_Q, w.W_K, w.W_V, w.W_O, n_kv_heads)


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    names = list(SHAPES)[: 2 if os.environ.get("ARRAKIS_BENCH_7B") == "1" else 1]
    for name in names:
        shape = SHAPES[name]
        with tempfile.TemporaryDirectory(prefix="arrakis-bench-") as tmp:
            folder = Path(tmp)
            start = time.perf_counter()
            write_checkpoint(folder, **shape)
            size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
            print(f"{name}: {shape}; wrote {size / GIB:.2f} GiB in {time.perf_counter() - start:.0f} s")
            times, total, peak = measure_once(lambda folder=folder: analyse(folder))
            for what, value in times.items():
                print(f"  {what:<22} {value:8.2f}" + ("" if what.startswith("max") else " s"))
            peak_text = "n/a" if peak is None else f"{peak / GIB:.2f} GiB"
            print(f"  end to end             {total:8.2f} s   peak extra memory {peak_text}")
            if name == "Llama-3.2-1B attention":
                gemm_bound(folder, shape["n_kv_heads"])
    if len(names) == 1:
        print("  (the 7B shape runs with ARRAKIS_BENCH_7B=1)")


if __name__ == "__main__":
    main()
