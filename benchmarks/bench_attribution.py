"""Which heads write the answer, and do the circuits hold: cost on the embedded model.

Baseline, in the same run: one plain forward pass of the same model on the same prompt
(``hf_model(input_ids, use_cache=False)`` without gradients, the best of a few repeats).
Measured as multiples of it:

- ``logit_attribution`` of " Paris" after "The capital of France is" (one cached forward
  pass at one position, then a [layer, head] product through the folded unembedding);
- ``circuits("K", writer_role="previous_token", reader_role="induction", verify=True)``:
  path patching of each edge plus 8 random pairs per layer pair on the default probe
  (4 x 65 tokens); the runs of one reader layer go as copies of the probe in one pass that
  starts at that layer and stops after it (goal: at most 10 forward passes on the probe in
  all); the baseline here is one plain forward pass on the probe.
"""

from __future__ import annotations

import time

import torch

from arrakis import load_model
from arrakis.circuits.roles import repeated_random_tokens
from arrakis.tools import WriteReadAnalyzer
from benchmarks.bench_hooked_forward import best_of


def main() -> None:
    model = load_model()
    tool = WriteReadAnalyzer(model)
    ids = model.to_tokens("The capital of France is")
    model.head_weights(), model.head_weights(folded=False)  # stacked once, as any analysis would have

    def forward(x):
        with torch.no_grad():
            return model.hf_model(input_ids=x, use_cache=False)

    t_forward = best_of(lambda: forward(ids), repeats=5)
    t_attr = best_of(lambda: tool.logit_attribution(ids, " Paris"), repeats=5)
    print(f"logit attribution, embedded model, {ids.shape[1]} tokens")
    print(f"  plain forward pass          {t_forward * 1e3:7.1f} ms   (baseline)")
    print(f"  logit_attribution           {t_attr * 1e3:7.1f} ms   x{t_attr / t_forward:.1f} the forward pass")

    probe = repeated_random_tokens(model.cfg.d_vocab, 32, 2, 4, 0, model.tokenizer.bos_token_id)
    t_probe = best_of(lambda: forward(probe), repeats=3)
    roles = tool.head_roles()
    circuit = tool.circuits("K", writer_role="previous_token", reader_role="induction", roles=roles, top_k=6)
    start = time.perf_counter()
    verified = tool.circuits(
        "K", writer_role="previous_token", reader_role="induction", roles=roles, top_k=6, verify=True
    )
    t_verify = time.perf_counter() - start
    n_passes = len(verified) + sum(len(v) for v in verified.verification["null_effects"].values())
    print(f"induction circuit, path patching on the default probe ({probe.shape[0]} x {probe.shape[1]} tokens)")
    print(f"  plain forward pass on it    {t_probe:7.2f} s   (baseline)")
    print(
        f"  verify {len(circuit)} edges + null    {t_verify:7.2f} s   x{t_verify / t_probe:.1f} the forward pass "
        f"(goal <= x10; {n_passes} patched runs, batched by reader layer: x{t_verify / t_probe / n_passes:.2f} a run)"
    )
    print("  " + verified.summary())


if __name__ == "__main__":
    main()
