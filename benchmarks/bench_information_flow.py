"""Information-flow routes on a 512-token prompt of the embedded model: time and memory.

Baseline, in the same run: one plain forward pass of the same model on the same prompt
(what any route computation must at least do), and the memory the dense alternative would
need, T^2 x H x D float32 values (every head's contribution from every key to every query).
The routes keep only rows src..dst; with src at 0 and dst at the end, that is all of them,
the worst case. "Peak extra" is resident memory beyond the loaded model (benchmarks/_memory.py).
"""

from __future__ import annotations

import torch

from arrakis import load_model
from arrakis.tools import WriteReadAnalyzer
from benchmarks._memory import measure_once

N_TOKENS = 512
MIB = 2**20


def main() -> None:
    model = load_model()
    tool = WriteReadAnalyzer(model)
    c = model.cfg
    ids = torch.randint(100, c.d_vocab, (1, N_TOKENS), generator=torch.Generator().manual_seed(0))
    model.head_weights()  # stacked once, as any analysis would have
    with torch.no_grad():
        model.hf_model(input_ids=ids, use_cache=False)  # warm up
    _, t_forward, m_forward = measure_once(lambda: model.hf_model(input_ids=ids, use_cache=False))
    flow, t_flow, m_flow = measure_once(
        lambda: tool.trace_information_flow(ids, src_pos=0, dst_pos=N_TOKENS - 1, n_layers=None)
    )
    dense = N_TOKENS**2 * c.n_heads * c.d_model * 4 * c.n_layers
    shape = f"{c.n_layers} layers x {c.n_heads} heads"
    print(f"information flow, embedded model ({shape}), {N_TOKENS} tokens, src 0 -> dst {N_TOKENS - 1}")
    print(f"  plain forward pass          {t_forward:7.2f} s   peak extra {_mib(m_forward)}   (baseline)")
    ratio = t_flow / t_forward
    print(f"  trace_information_flow      {t_flow:7.2f} s   peak extra {_mib(m_flow)}   x{ratio:.0f} the forward pass")
    print(f"  dense parts (T^2 x H x D x layers, float32) would be {dense / 2**30:.0f} GiB")
    print(f"  final flow {flow[-1]:.4f}, top heads {flow.top_heads[:3]}")


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / MIB:6.0f} MiB"


if __name__ == "__main__":
    main()
