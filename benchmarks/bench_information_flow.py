"""Information flow on the embedded model (SmolLM2-135M, 30 layers x 9 heads): time and memory.

Baseline, in the same run: one plain forward pass of the same model on the same prompt,
``hf_model(input_ids, use_cache=False)`` without gradients (warmed up, the best of a few
repeats): what any trace must at least do. Prompts are random token ids (a fixed
generator), src at position 5, dst the last position. Measured, as multiples of it:

- ``trace_information_flow`` (attribution, the default: one forward and one backward pass
  estimate every head's dst <- src knockout effect); goal: at most 4 forward passes;
- exact knockouts of the 10 top heads' dst <- src edges (by ``head_scores``), batched by
  ``knockout_logits`` (the clean prefix once, then one token per knocked-out copy); goal:
  at most 3 forward passes; and what ``verify=True`` adds to the trace (its knockouts: top
  heads, suppressors, every layer, all layers);
- the integrated trace (``method="integrated"``, 5 steps), once;
- every head's edge (270 knockouts), batched two ways: a batch row per copy (each with its
  own copy of the prefix's key/value cache; the baseline), and copies as query tokens of one
  sequence over one prefix cache, each masked from the others (what ``knockout_logits`` does
  when every edge is in dst's row); on the short prompt also against 270 one-at-a-time
  ``run_with_attention_knockout`` calls; and how far their logits at dst differ;
- Information Flow Routes (``method="routes"``) on 512 tokens, src 0 (every row: the worst
  case), beside the memory the dense alternative would need, T^2 x H x D float32 values
  (every head's contribution from every key to every query).

Short timings are the best of a few repeats (the least disturbed by the machine); "peak
extra" is resident memory beyond what was held before the call (benchmarks/memory.py, after
glibc's malloc_trim so that memory freed earlier does not hide it), the largest over the
repeats. What ``verify=True`` adds is the verified trace's time minus the plain trace's, the
two run in turn so that the machine's slow stretches hit both alike. The load average is
printed at the start and the end: when it exceeds the number of CPUs, other processes
compete for them, and with torch's threads spinning at every barrier, timings can grow
tenfold and even the ratios mean little.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time

import torch

from arrakis import load_model
from arrakis.models import interventions
from arrakis.tools import WriteReadAnalyzer
from benchmarks.memory import measure_once

PROMPTS = (60, 500)
SRC = 5
N_VERIFY = 10
ROUTES_TOKENS = 512
ATTRIBUTION_GOAL = 4.0
VERIFY_GOAL = 3.0
REPEATS = 3
MIB = 2**20
try:
    _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None)
except (OSError, TypeError):  # no C library to load: peaks are measured without trimming
    _LIBC = None


def measure(fn):
    """measure_once after handing freed memory back to the system (glibc's malloc_trim), so
    that memory a previous call freed but the allocator kept does not hide this call's peak."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)
    return measure_once(fn)


def best_of(fn, repeats: int = REPEATS, warm_up: bool = True):
    """(result of the last run, fastest seconds, largest peak extra bytes or None)."""
    if warm_up:
        fn()
    result, times, peaks = None, [], []
    for _ in range(repeats):
        result, seconds, peak = measure(fn)
        times.append(seconds)
        peaks.append(peak)
    return result, min(times), None if None in peaks else max(peaks)


def interleaved(fns, repeats: int = REPEATS):
    """best_of for several calls, run in turn (a, b, c, a, b, c, ...), so that a slow
    stretch of the machine weighs on all of them alike: one (result, seconds, peak) per call."""
    for fn in fns:
        fn()  # warm up
    runs = [[measure(fn) for fn in fns] for _ in range(repeats)]
    out = []
    for column in zip(*runs, strict=True):
        peaks = [peak for _, _, peak in column]
        out.append((column[-1][0], min(s for _, s, _ in column), None if None in peaks else max(peaks)))
    return out


def random_ids(model, n_tokens: int) -> torch.Tensor:
    return torch.randint(100, model.cfg.d_vocab, (1, n_tokens), generator=torch.Generator().manual_seed(0))


def forward_baseline(model, ids: torch.Tensor) -> tuple[float, int | None]:
    def forward() -> None:
        with torch.no_grad():
            model.hf_model(input_ids=ids, use_cache=False)

    _, seconds, peak = best_of(forward, repeats=5)
    return seconds, peak


def bench_attribution(model, tool: WriteReadAnalyzer, n_tokens: int) -> None:
    ids = random_ids(model, n_tokens)
    dst = n_tokens - 1

    def forward() -> None:
        with torch.no_grad():
            model.hf_model(input_ids=ids, use_cache=False)

    scores = tool.trace_information_flow(ids, src_pos=SRC, dst_pos=dst).head_scores  # rows: all layers
    heads = [divmod(i, scores.shape[1]) for i in scores.flatten().topk(N_VERIFY).indices.tolist()]
    knockouts = [{layer: [(head, dst, SRC)]} for layer, head in heads]
    # all four in turn, a few rounds: a slow stretch of the machine weighs on each alike
    (_, t_fwd, m_fwd), (flow, t_attr, m_attr), (_, t_ko, m_ko), (verified, t_ver, m_ver) = interleaved(
        [
            forward,
            lambda: tool.trace_information_flow(ids, src_pos=SRC, dst_pos=dst),
            lambda: model.knockout_logits(ids, knockouts, dst, progress=False),
            lambda: tool.trace_information_flow(ids, src_pos=SRC, dst_pos=dst, verify=True),
        ]
    )
    n_verified = len(verified.verification["heads"]) + len(verified.verification["layers"]) + 1
    print(f"{n_tokens} tokens, src {SRC} -> dst {dst}")
    print(f"  plain forward pass             {_ms(t_fwd)}   peak extra {_mib(m_fwd)}   (baseline)")
    print(
        f"  attribution trace              {_ms(t_attr)}   peak extra {_mib(m_attr)}   "
        f"x{t_attr / t_fwd:.2f} the forward pass (goal <= x{ATTRIBUTION_GOAL:.0f})"
    )
    print(
        f"  knockout_logits, top {N_VERIFY} heads    {_ms(t_ko)}   peak extra {_mib(m_ko)}   "
        f"x{t_ko / t_fwd:.2f} the forward pass (goal <= x{VERIFY_GOAL:.0f})"
    )
    extra = t_ver - t_attr
    print(
        f"  verify=True adds               {_ms(extra)}   peak extra {_mib(m_ver)}   "
        f"x{extra / t_fwd:.2f} the forward pass ({n_verified} knockouts + clean; whole trace {_ms(t_ver).strip()})"
    )
    rho = verified.verification["spearman_heads"]
    print(f"  top heads {flow.top_heads[:3]}, Spearman (estimate vs exact, verified heads) {_num(rho)}")
    _, t_ig, m_ig = measure(lambda: tool.trace_information_flow(ids, src_pos=SRC, dst_pos=dst, method="integrated"))
    print(
        f"  integrated trace, 5 steps      {_ms(t_ig)}   peak extra {_mib(m_ig)}   x{t_ig / t_fwd:.2f} the forward "
        "pass (a path per head, per layer and for all layers: 5 forward and backward passes over their copies)"
    )


def bench_every_head(model, n_tokens: int, one_at_a_time: bool) -> None:
    ids = random_ids(model, n_tokens)
    dst, c = n_tokens - 1, model.cfg
    knockouts = [{layer: [(head, dst, SRC)]} for layer in range(c.n_layers) for head in range(c.n_heads)]
    rows, t_rows, m_rows = best_of(
        lambda: interventions.knockout_logits(model, ids, knockouts, dst, progress=False, one_sequence=False)
    )
    batched, t_batched, m_batched = best_of(lambda: model.knockout_logits(ids, knockouts, dst, progress=False))
    print(f"{n_tokens} tokens, every head's dst <- src edge ({len(knockouts)} knockouts)")
    scale = float(rows.abs().max())
    if one_at_a_time:

        def single_runs() -> torch.Tensor:
            rows = [model.run_with_attention_knockout(ids, k).logits[0, dst].float().clone() for k in knockouts]
            return torch.stack(rows)

        single, t_single, m_single = best_of(single_runs, repeats=1, warm_up=False)
        print(f"  one at a time (run_with_attention_knockout) {_ms(t_single)}   peak extra {_mib(m_single)}")
        print(f"  max |logit difference| at dst, batched vs one at a time {float((batched - single).abs().max()):.2e}")
    print(f"  batched, a batch row per copy               {_ms(t_rows)}   peak extra {_mib(m_rows)}   (baseline)")
    print(
        f"  batched, copies as tokens of one sequence   {_ms(t_batched)}   peak extra {_mib(m_batched)}   "
        f"x{t_rows / t_batched:.1f} faster"
    )
    diff = float((batched - rows).abs().max())
    print(f"  max |logit difference| at dst between the two {diff:.2e} (largest |logit| {scale:.1f})")


def bench_routes(model, tool: WriteReadAnalyzer, n_tokens: int) -> None:
    c = model.cfg
    ids = random_ids(model, n_tokens)
    t_forward, m_forward = forward_baseline(model, ids)
    flow, t_flow, m_flow = measure(
        lambda: tool.trace_information_flow(ids, src_pos=0, dst_pos=n_tokens - 1, method="routes")
    )
    dense = n_tokens**2 * c.n_heads * c.d_model * 4 * c.n_layers
    print(f"routes (method='routes'), {n_tokens} tokens, src 0 -> dst {n_tokens - 1}")
    print(f"  plain forward pass          {_ms(t_forward)}   peak extra {_mib(m_forward)}   (baseline)")
    ratio = t_flow / t_forward
    print(f"  trace_information_flow      {_ms(t_flow)}   peak extra {_mib(m_flow)}   x{ratio:.0f} the forward pass")
    print(f"  dense parts (T^2 x H x D x layers, float32) would be {dense / 2**30:.0f} GiB")
    print(f"  final flow {flow[-1]:.4f}, top heads {flow.top_heads[:3]}")


def main() -> None:
    torch.manual_seed(0)
    model = load_model()
    tool = WriteReadAnalyzer(model)
    c = model.cfg
    model.head_weights()  # stacked once, as any analysis would have
    shape = f"{c.n_layers} layers x {c.n_heads} heads"
    print(f"information flow, embedded model ({shape})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {_load()}")
    for n_tokens in PROMPTS:
        bench_attribution(model, tool, n_tokens)
    bench_every_head(model, PROMPTS[0], one_at_a_time=True)
    bench_every_head(model, PROMPTS[-1], one_at_a_time=False)
    bench_routes(model, tool, ROUTES_TOKENS)
    print(f"at the end: {_load()}")


def _load() -> str:
    """The machine's load average: above the number of CPUs, other work competes and the
    timings (ratios included) are not to be trusted."""
    try:
        return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "load average n/a"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.1f} ms"


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / MIB:6.0f} MiB"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f} s)")
