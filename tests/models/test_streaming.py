"""Weights-only models: a sharded safetensors checkpoint, read lazily, gives the same
per-head weights and scores as the model in memory."""

from __future__ import annotations

import pytest
import torch

from arrakis import HookedAutoModel
from arrakis.tools import WriteReadAnalyzer
from tests.conftest import VARIANTS, shared


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_streamed_weights_equal_the_in_memory_ones(variant, tmp_path):
    original = shared(variant)
    original.hf_model.save_pretrained(tmp_path, max_shard_size="100KB")  # many shards and an index
    assert len(list(tmp_path.glob("*.safetensors"))) > 2 and (tmp_path / "model.safetensors.index.json").exists()
    streamed = HookedAutoModel.from_pretrained(tmp_path, weights_only=True)
    assert streamed.hf_model is None and streamed.cfg == original.cfg
    for folded in (True, False):
        for name, tensor in original.head_weights(folded=folded).tensors().items():
            torch.testing.assert_close(getattr(streamed.head_weights(folded=folded), name), tensor, msg=name)


def test_weight_based_analyses_run_on_a_streamed_checkpoint(tmp_path):
    original = shared("llama")
    original.hf_model.save_pretrained(tmp_path, max_shard_size="100KB")
    streamed = WriteReadAnalyzer(HookedAutoModel.from_pretrained(tmp_path, weights_only=True))
    memory = WriteReadAnalyzer(original)
    assert streamed.identify_write_heads(1) == memory.identify_write_heads(1)
    assert streamed.identify_read_heads(1, dim_idx=(0, 2)).scores == pytest.approx(
        memory.identify_read_heads(1, dim_idx=(0, 2)).scores
    )
    for mode in "QKV":
        torch.testing.assert_close(streamed.composition_scores(mode).tensor, memory.composition_scores(mode).tensor)
    with pytest.raises(RuntimeError, match="weights_only=True: weight-based analyses work, but it has no forward"):
        streamed.identify_write_heads(0, input_ids=torch.tensor([[1, 2, 3]]))


def test_bfloat16_stacks_halve_the_memory_and_stay_close(tmp_path):
    original = shared("qwen2")
    original.hf_model.save_pretrained(tmp_path)
    streamed = HookedAutoModel.from_pretrained(tmp_path, weights_only=True, dtype=torch.bfloat16)
    weights = streamed.head_weights()
    assert weights.W_Q.dtype == torch.bfloat16
    torch.testing.assert_close(weights.W_Q.float(), original.head_weights().W_Q, atol=1e-2, rtol=1e-2)
    tool, reference = WriteReadAnalyzer(streamed), WriteReadAnalyzer(original)
    scores = tool.composition_scores("K").tensor
    torch.testing.assert_close(scores, reference.composition_scores("K").tensor, atol=5e-3, rtol=0)
    for layer in range(streamed.cfg.n_layers):  # per-layer tools read bfloat16 stacks too
        assert tool.identify_write_heads(layer).scores == pytest.approx(
            reference.identify_write_heads(layer).scores, rel=2e-2
        )
        assert tool.identify_read_heads(layer, dim_idx=3).scores == pytest.approx(
            reference.identify_read_heads(layer, dim_idx=3).scores, rel=2e-2
        )
