"""Path patching of composition edges (circuits(verify=True)) against brute force: the
patched reader input is the residual stream recomputed with the writer's output swapped
for its mean, and the reader's patched attention is that input's attention computed by
hand; an edge that cannot matter has no effect."""

from __future__ import annotations

import math

import pytest
import torch

from arrakis.models.path_patching import patched_readers, writer_outputs
from arrakis.tools import WriteReadAnalyzer
from arrakis.tools.circuit_verify import verify_circuit
from tests.conftest import shared


def _gpt2():
    from arrakis import HookedAutoConfig, HookedAutoModel
    from tests.conftest import randomize_

    torch.manual_seed(0)
    model = HookedAutoModel(HookedAutoConfig("gpt2", n_layers=3, d_model=64, n_heads=4, d_vocab=512, d_mlp=128))
    return randomize_(model, 0, scale=0.3)


def test_the_patched_reader_input_is_the_residual_recomputed_without_the_writer():
    """x' = resid_pre[l2] - out[h1] + mean(out[h1]) equals the sum of every component of the
    residual stream (embeddings, each head's z W_O, each b_O, each MLP) with the writer's
    output swapped for its mean; and the patched Q-channel attention of the reader equals
    softmax((ln1(x') W_Q + b_Q) k^T / sqrt(d_head)) with the clean keys (GPT-2: no rotary)."""
    model = _gpt2()
    ids = torch.randint(0, 512, (2, 10), generator=torch.Generator().manual_seed(1))
    _, cache = model.run_with_cache(ids)
    (l1, h1), (l2, h2) = (0, 1), (2, 3)
    out = writer_outputs(model, cache, l1)[:, :, h1]
    mean = out.mean((0, 1))
    fast = cache["resid_pre", l2] - out + mean
    w = model.head_weights(folded=False)
    brute = cache["hook_embed"] + cache["hook_pos_embed"]
    for layer in range(l2):
        parts = torch.einsum("bphk,hkd->bphd", cache["z", layer], w.W_O[layer])  # every head's output
        if layer == l1:
            parts[:, :, h1] = mean
        brute = brute + parts.sum(2) + w.b_O[layer] + cache["mlp_out", layer]
    torch.testing.assert_close(fast, brute, atol=1e-4, rtol=1e-4)

    pattern = patched_reader(model, ids, cache, (l2, h2), "q", fast)
    ln1 = model.hf_model.transformer.h[l2].ln_1
    q = ln1(fast) @ w.W_Q[l2, h2] + w.b_Q[l2, h2]  # [batch, pos, d_head]
    k = cache["k", l2][:, :, h2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(model.cfg.d_head)
    causal = torch.ones(10, 10, dtype=torch.bool).tril()
    expected = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    torch.testing.assert_close(pattern, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(pattern, cache["pattern", l2][:, h2], atol=1e-3)  # the patch did something


def test_a_writer_with_no_output_has_no_effect_and_verify_fills_every_edge():
    model = _gpt2()
    with torch.no_grad():  # head 2 of layer 0 writes nothing: its W_O rows are zero
        model.hf_model.transformer.h[0].attn.c_proj.weight[2 * 16 : 3 * 16] = 0
    tool = WriteReadAnalyzer(model)
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(2))
    circuit = tool.circuits("K", min_ratio=0.01, top_k=None, verify=True, probe=ids, n_null=4)
    assert circuit.verification["n_tokens"] == 24 and circuit.verification["channel"] == "k"
    assert all(e.causal_effect is not None and e.causal_effect >= 0 for e in circuit)
    assert all(e.writer != (0, 2) for e in circuit)  # no OV: no composition score either
    results, _ = verify_circuit(model, ids, None, [((0, 2), (1, 1)), ((0, 2), (2, 3))], "K", n_null=4)
    assert all(effect < 1e-9 for effect, _ in results)  # and no effect when patched
    loud = max(circuit, key=lambda e: e.causal_effect)
    assert loud.causal_effect > 1e-4 and loud.ratio_to_null > 1
    assert "path patching on 24 probe tokens" in circuit.summary()
    back = type(circuit).from_dict(circuit.to_dict())
    assert back[0].ratio_to_null == circuit[0].ratio_to_null and back.verification == circuit.verification


def patched_reader(model, ids, cache, reader, channel, new_resid):
    """One path-patching run: the reader's channel input computed from ``new_resid``."""
    layer, head = reader
    inputs = model.forward_inputs(ids)
    return patched_readers(model, inputs, layer, channel, [(head, new_resid)], cache["resid_pre", layer])[0]


@pytest.mark.parametrize("variant", ["llama", "gemma2", "olmo2", "gpt-neox", "phi3"])
@pytest.mark.parametrize("mode", ["Q", "K", "V"])
def test_path_patching_runs_on_every_layout(variant, mode):
    """Fused, interleaved and separate projections, GQA, post-norms, no input norm: a patch
    in the reader's input changes the reader, and the clean input changes nothing."""
    model = shared(variant)
    ids = torch.randint(0, model.cfg.d_vocab, (2, 9), generator=torch.Generator().manual_seed(3))
    _, cache = model.run_with_cache(ids)
    channel, reader = mode.lower(), (1, 1)
    clean_input = cache["resid_pre", 1]
    same = patched_reader(model, ids, cache, reader, channel, clean_input)
    clean = cache["z", 1][:, :, 1] if channel == "v" else cache["pattern", 1][:, 1]
    torch.testing.assert_close(same, clean, atol=1e-5, rtol=1e-4)
    noise = 3 * torch.randn(clean_input.shape, generator=torch.Generator().manual_seed(4))
    moved = patched_reader(model, ids, cache, reader, channel, clean_input + noise)
    assert not torch.allclose(moved, clean, atol=1e-4)
    # batched: runs of other reader heads as copies in the same pass change nothing of this one's
    runs = [(0, clean_input - noise), (1, clean_input + noise), (1, clean_input)]
    batched = patched_readers(model, model.forward_inputs(ids), 1, channel, runs, cache["resid_pre", 1])
    torch.testing.assert_close(batched[1], moved, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batched[2], clean, atol=1e-5, rtol=1e-4)
