"""Composition scores against the GEMM bound of their own flops.

For each mode (Q, K, V) and for Q+K+V together: the seconds ``composition_scores`` takes, the
flops its method must do at those shapes (counted from the shapes below, nothing wasted), the
bound and the ratio seconds / bound. The bound is the time plain D x D float32 matmuls take to
do the same flops, timed right after each call (so the slow stretches of a shared machine hit
both). A single matmul's best tenth of a second runs 10-30% faster than matmuls sustain over
seconds on a 2-core machine, so the ratio to that burst rate is printed beside it. Run alone
(``python -m benchmarks.bench_gemm_bound``) it uses random bfloat16 weights with
Llama-3.2-1B's attention shapes; bench_large_checkpoints runs it on the weights it streams
from its checkpoint.

The flops, per head n = n_layers * n_heads, pair count P = n_heads^2 n_layers (n_layers - 1) / 2:

- d_head x d_head Grams of W_V, W_O (and W_Q, W_K for Q, K): 2 D d_head^2 per distinct head;
- Gram modes (Q; K and V without grouped heads): the factors R W^T of the writer and each
  reader, 2 d_head^2 D per head; the upper triangles of their D x D Grams, D (D + 1) d_head
  per head; the pair products of the upper triangles, D (D + 1) per pair;
- shared-head modes (K, V when 2 d_head^2 <= 1.25 D G, G query heads per KV head): the
  writer factor once, 2 d_head^2 D per head; X = (R W_O) W_r, 2 D d_head^2 per (writer, later
  KV head); X^T X, 2 d_head^3 per the same; the inner products, 2 d_head^2 per pair.

The load average is printed at the start and the end: above the number of CPUs, other work
competes and the ratios mean little.
"""

from __future__ import annotations

import os
import time

import torch

from benchmarks.memory import measure_once

SHAPE_1B = dict(n_layers=16, n_heads=32, n_kv_heads=8, d_model=2048, d_head=64)
GIB = 2**30


def shared_path(mode: str, n_heads: int, n_kv_heads: int, d_model: int, d_head: int) -> bool:
    """Whether composition_scores takes the shared-head path for a mode (its rule)."""
    return mode in ("K", "V") and 2 * d_head**2 <= 1.25 * d_model * (n_heads // n_kv_heads)


def composition_flops(
    modes: tuple[str, ...], n_layers: int, n_heads: int, n_kv_heads: int, d_model: int, d_head: int
) -> float:
    """The flops composition_scores must do for ``modes`` at these shapes (module docstring)."""
    L, H, D, dh = n_layers, n_heads, d_model, d_head
    n, n_kv, pairs = L * H, L * n_kv_heads, H * H * L * (L - 1) / 2
    kv_pairs = H * n_kv_heads * L * (L - 1) / 2  # (writer, later KV head)
    flops = 2 * D * dh**2 * (n + n_kv)  # S_O, S_V
    if "Q" in modes or "K" in modes:
        flops += 2 * D * dh**2 * (n + n_kv)  # S_Q, S_K
    gram = [m for m in modes if not shared_path(m, H, n_kv_heads, D, dh)]
    shared = [m for m in modes if shared_path(m, H, n_kv_heads, D, dh)]
    if gram:
        flops += (1 + len(gram)) * n * (2 * dh**2 * D + D * (D + 1) * dh)  # factors, Gram triangles
        flops += len(gram) * pairs * D * (D + 1)
    if shared:
        flops += 2 * dh**2 * D * n  # R W_O
        flops += len(shared) * (kv_pairs * (2 * D * dh**2 + 2 * dh**3) + pairs * 2 * dh**2)
    return flops


def gemm_rate(d_model: int, repeats: int = 3) -> float:
    """flop/s of a plain d_model x d_model float32 matmul, the best of ``repeats``."""
    a, b = torch.randn(d_model, d_model), torch.randn(d_model, d_model)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * d_model**3 / best


def gemm_seconds(flops: float, d_model: int) -> float:
    """Seconds plain d_model x d_model float32 matmuls take to do ``flops``, back to back: the
    rate a GEMM sustains over as much work as the timed call, not its best tenth of a second."""
    a, b = torch.randn(d_model, d_model), torch.randn(d_model, d_model)
    start = time.perf_counter()
    for _ in range(max(1, round(flops / (2 * d_model**3)))):
        a @ b
    return time.perf_counter() - start


def load() -> str:
    try:
        return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "load average n/a"


def report(W_Q, W_K, W_V, W_O, n_kv_heads: int, repeats: int = 2) -> None:
    """Print a line per mode and one for Q+K+V: seconds (best of ``repeats``), flops, GEMM rate,
    bound and ratio; and the peak extra memory of Q+K+V."""
    from arrakis.circuits.composition import composition_scores

    n_layers, n_heads, d_model, d_head = W_Q.shape
    shape = dict(n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads, d_model=d_model, d_head=d_head)
    print(f"  composition vs the GEMM bound ({load()} at the start)")
    runs = [("Q",), ("K",), ("V",), ("Q", "K", "V")]
    seconds, peak, rate = dict.fromkeys(runs, float("inf")), None, gemm_rate(d_model)
    sustained = dict.fromkeys(runs, float("inf"))
    for repeat in range(repeats):
        for modes in runs:
            _, s, p = measure_once(lambda modes=modes: composition_scores(W_Q, W_K, W_V, W_O, modes))
            seconds[modes] = min(seconds[modes], s)
            sustained[modes] = min(sustained[modes], gemm_seconds(composition_flops(modes, **shape), d_model))
            if len(modes) == 3 and repeat == 0:
                peak = p
            rate = max(rate, gemm_rate(d_model))
    print(
        f"  bound: plain {d_model} x {d_model} float32 matmuls doing the same flops, timed after each call "
        f"(best of {repeats}); burst: the best single matmul of the run, {rate / 1e9:.1f} GFLOP/s"
    )
    for modes in runs:
        flops = composition_flops(modes, **shape)
        bound, burst = sustained[modes], flops / rate
        name = "+".join(modes)
        print(
            f"  {name:<6} {seconds[modes]:7.2f} s  {flops / 1e12:6.3f} TFLOP  bound {bound:6.2f} s "
            f"({flops / bound / 1e9:.0f} GFLOP/s)  ratio {seconds[modes] / bound:5.2f}  "
            f"(to the burst rate {seconds[modes] / burst:5.2f})"
        )
    peak_text = "n/a" if peak is None else f"{peak / GIB:.2f} GiB"
    print(f"  Q+K+V peak extra memory {peak_text}; {load()} at the end")


def main() -> None:
    s = SHAPE_1B
    L, H, KV, D, dh = s["n_layers"], s["n_heads"], s["n_kv_heads"], s["d_model"], s["d_head"]
    print(f"Composition vs the GEMM bound, random bfloat16 weights, Llama-3.2-1B attention: {s}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    g = torch.Generator().manual_seed(0)

    def draw(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * D**-0.5).to(torch.bfloat16)

    group = torch.arange(H) // (H // KV)
    W_K, W_V = (draw(L, KV, D, dh)[:, group].contiguous() for _ in range(2))
    report(draw(L, H, D, dh), W_K, W_V, draw(L, H, dh, D), KV)


if __name__ == "__main__":
    main()
