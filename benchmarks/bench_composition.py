"""Composition scores of every head pair: arrakis against TransformerLens.

Baseline: TransformerLens's ``TransformerBridge.all_composition_scores`` booted on the same
Hugging Face model (raw, unfolded weights, K and V expanded to the query heads), in the same
run. The model is a random Llama with the embedded model's shape (SmolLM2-135M: 30 layers, 9
query heads, 3 KV heads, d_model 576, d_head 64).

Every measurement runs in a fresh child process (``python -m benchmarks.bench_composition
--child ...``), so one side's allocations never count against the other's. TransformerLens
runs under a wall-clock timeout and an address-space cap (RLIMIT_AS), so running out of
memory is an error in the child rather than the machine swapping or the OOM killer.

Memory is "peak extra resident memory": the child resets its high-water mark
(/proc/self/clear_refs) just before the call and reports VmHWM after it minus VmRSS before
it, i.e. the most physical memory the call itself held at once (temporaries and result),
not counting the weights or the model that were already loaded. Linux only; "n/a" elsewhere.

Environment:
    ARRAKIS_BENCH_TL_KV=1        also run TransformerLens's K and V modes at the full shape
    ARRAKIS_BENCH_TL_MEM_GIB=20  TransformerLens's address-space cap (lowered to MemAvailable)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.memory import measure_once, proc_status
from benchmarks.tl_checkpoint import save_for_transformer_lens

REPO = Path(__file__).resolve().parents[1]
MODES = ("Q", "K", "V")
TL_TIMEOUT_S = 240
GIB = 2**30


def mem_available() -> int | None:
    try:
        match = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def tl_estimate_bytes(n_layers: int, n_heads: int, d_model: int, d_head: int) -> int:
    """What TransformerLens 4.3 allocates for one mode of ``all_composition_scores``.

    utilities.composition_scores unsqueezes the writer's factored OV to [L, H, 1, 1] and the
    reader's to [1, 1, L, H], collapses them to [..., d_head, D] and [..., D, d_head] (an SVD
    per head: D x D is never formed) and multiplies them. torch.matmul broadcasts the batch
    dimensions by expanding *and copying* both operands to [L, H, L, H, d_head, D] before the
    batched product, then writes the [L, H, L, H, d_head, d_head] product; all fp32. The three
    modes differ only in which factors they use, so each needs the same. (Checked at 4, 8 and 15
    layers of this shape: measured peaks were 1.07-1.22 x this, the rest being SVD and norms.)
    """
    pairs = (n_layers * n_heads) ** 2
    return 4 * pairs * (2 * d_head * d_model + d_head * d_head)


# ----------------------------------------------------------------------------- child processes


def _child_arrakis(job: dict) -> dict:
    import torch

    from arrakis.circuits.composition import composition_scores

    work, n = Path(job["dir"]), job["n_layers"]
    weights = {k: v[:n].contiguous() for k, v in torch.load(work / "weights.pt").items()}
    args = (weights["W_Q"], weights["W_K"], weights["W_V"], weights["W_O"])
    scores, first_s, peak = measure_once(lambda: composition_scores(*args, MODES))
    torch.save(scores, work / f"arrakis_{n}.pt")

    def best_of_3(fn) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    return {
        "threads": torch.get_num_threads(),
        "first_s": first_s,
        "all_s": best_of_3(lambda: composition_scores(*args, MODES)),
        "q_s": best_of_3(lambda: composition_scores(*args, ("Q",))),
        "peak": peak,
        "result_bytes": sum(s.numel() * s.element_size() for s in scores.values()),
    }


def _child_tl(job: dict) -> dict:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (job["cap"], job["cap"]))  # before anything big is mapped
    try:
        import torch
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        return {"error": f"TransformerLens not importable: {e}"}
    work, n, mode = Path(job["dir"]), job["n_layers"], job["mode"]
    model_dir = work / "model"
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if n < hf_model.config.num_hidden_layers:  # the first n layers: their scores do not depend on later ones
        hf_model.model.layers = hf_model.model.layers[:n]
        hf_model.config.num_hidden_layers = n
        if isinstance(getattr(hf_model.config, "layer_types", None), list):
            hf_model.config.layer_types = hf_model.config.layer_types[:n]
    # The model's folder as its name: no alias lookup, nothing fetched from the Hub.
    bridge = TransformerBridge.boot_transformers(
        str(model_dir), hf_model=hf_model, tokenizer=AutoTokenizer.from_pretrained(model_dir)
    )
    address_space = proc_status("VmSize")
    try:
        scores, seconds, peak = measure_once(lambda: bridge.all_composition_scores(mode).scores)
    except (MemoryError, RuntimeError) as e:  # CPU allocation failures are RuntimeErrors in torch
        message = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        return {"error": f"{type(e).__name__}: {message[:200]}", "address_space": address_space}
    torch.save(scores, work / f"tl_{mode}_{n}.pt")
    return {"threads": torch.get_num_threads(), "s": seconds, "peak": peak, "address_space": address_space}


def _run_child(job: dict, timeout: float | None = None) -> dict:
    """Run one job in a fresh interpreter; its answer comes back as a JSON file."""
    out = Path(job["dir"]) / f"answer_{job['kind']}_{job.get('mode', '')}_{job['n_layers']}.json"
    job = {**job, "out": str(out)}
    command = [sys.executable, "-m", "benchmarks.bench_composition", "--child", json.dumps(job)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=REPO, env=env, timeout=timeout, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s (killed)"}
    if out.exists():
        return json.loads(out.read_text())
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"child exited {proc.returncode} after {time.perf_counter() - start:.0f} s: " + " | ".join(tail)}


def _child_main(job: dict) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    answer = _child_arrakis(job) if job["kind"] == "arrakis" else _child_tl(job)
    Path(job["out"]).write_text(json.dumps(answer))


# ----------------------------------------------------------------------------- the benchmark


def _mib(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / GIB:.1f} GiB"


def _compare_tl(work: Path, mode: str, n: int, ours: dict, cap: int, shape: tuple[int, int, int]) -> dict:
    """Run TransformerLens's ``mode`` on the first n layers and print time, memory, agreement."""
    import torch

    H, D, dh = shape
    tl = _run_child({"kind": "tl", "dir": str(work), "n_layers": n, "mode": mode, "cap": cap}, TL_TIMEOUT_S)
    label = f"  TransformerLens {mode}, {n} layers"
    estimate = _gib(tl_estimate_bytes(n, H, D, dh))
    if "error" in tl:
        print(f"{label}: FAILED ({tl['error']}); estimated need {estimate}")
        return tl
    theirs = torch.load(work / f"tl_{mode}_{n}.pt")
    diff = (theirs - ours[mode]).abs().max().item()
    print(
        f"{label}: {tl['s']:8.2f} s (one run)   peak extra {_gib(tl['peak'])} (estimate {estimate})   "
        f"max |TL - arrakis| {diff:.1e}"
    )
    tl["diff"] = diff
    return tl


def main() -> None:
    import torch

    from arrakis import HookedAutoConfig, HookedAutoModel
    from benchmarks.bench_hooked_forward import SMOLLM_SHAPE

    torch.manual_seed(0)
    model = HookedAutoModel(HookedAutoConfig("llama", **SMOLLM_SHAPE))
    raw = model.head_weights(folded=False)
    L, H, D, dh = raw.W_Q.shape
    print(f"composition scores, SmolLM2-135M shape (random): {L} layers x {H} heads, d_model {D}, d_head {dh}")
    with tempfile.TemporaryDirectory(prefix="bench_composition_") as tmp:
        work = Path(tmp)
        torch.save({k: getattr(raw, k).contiguous() for k in ("W_Q", "W_K", "W_V", "W_O")}, work / "weights.pt")

        def run_arrakis(n: int) -> tuple[dict, dict]:
            a = _run_child({"kind": "arrakis", "dir": str(work), "n_layers": n})
            if "error" in a:
                raise RuntimeError(f"arrakis child failed: {a['error']}")
            print(
                f"  arrakis, {n} layers ({a['threads']} threads): Q {a['q_s']:.3f} s, Q+K+V {a['all_s']:.3f} s "
                f"(best of 3; first call {a['first_s']:.3f} s)   peak extra {_mib(a['peak'])} "
                f"(the three results: {_mib(a['result_bytes'])})"
            )
            return a, torch.load(work / f"arrakis_{n}.pt")

        ours_stats, ours = run_arrakis(L)

        import importlib.util

        if importlib.util.find_spec("transformer_lens") is None:
            print("  TransformerLens is not installed: skipped the comparison")
            return
        requested = int(float(os.environ.get("ARRAKIS_BENCH_TL_MEM_GIB", "20")) * GIB)
        available = mem_available()
        cap = min(requested, available) if available else requested
        estimate = tl_estimate_bytes(L, H, D, dh)
        print(
            f"  TransformerLens: address-space cap {_gib(cap)}"
            + (f" (MemAvailable {_gib(available)})" if available else "")
            + f", timeout {TL_TIMEOUT_S} s. Its estimated need per mode at this shape: {_gib(estimate)} "
            f"= 4 B x (L*H)^2 x (2 x d_head x D + d_head^2): both broadcast operands copied to "
            f"[L,H,L,H,d_head,D], and the [L,H,L,H,d_head,d_head] product"
        )
        save_for_transformer_lens(model, work / "model")
        del model, raw

        tl_q = _compare_tl(work, "Q", L, ours, cap, (H, D, dh))
        if "error" in tl_q and "not importable" in tl_q["error"]:
            print("  TransformerLens is not importable: skipped the comparison")
            return
        if "error" not in tl_q:
            print(f"  ratio TL / arrakis for Q: x{tl_q['s'] / ours_stats['q_s']:.0f}")
        else:  # compare on the first layers of the same model, where TransformerLens fits
            n = L // 2
            while n > 2 and tl_estimate_bytes(n, H, D, dh) > cap / 2:
                n //= 2
            print(f"  falling back to the first {n} layers of the same model:")
            small_stats, _ = run_arrakis(n)
            sliced = {m: s[:n, :, :n, :] for m, s in ours.items()}  # the full run's scores between those layers
            tl_small = _compare_tl(work, "Q", n, sliced, cap, (H, D, dh))
            if "error" not in tl_small:
                print(f"  ratio TL / arrakis for Q, {n} layers: x{tl_small['s'] / small_stats['q_s']:.0f}")

        if os.environ.get("ARRAKIS_BENCH_TL_KV") == "1":
            for mode in ("K", "V"):
                _compare_tl(work, mode, L, ours, cap, (H, D, dh))
        else:
            print(
                f"  TransformerLens K and V: skipped (set ARRAKIS_BENCH_TL_KV=1 to run them); each needs about "
                f"{_gib(estimate)} at this shape, like Q"
            )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child_main(json.loads(sys.argv[2]))
    else:
        main()
