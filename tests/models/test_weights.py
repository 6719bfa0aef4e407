"""Stacked per-head weights: shapes, grouped-query expansion, reuse and invalidation."""

from __future__ import annotations

import torch

from arrakis.models.weights import kv_groups
from tests.conftest import build, shared


def test_shapes_follow_the_stacking_convention():
    model = shared("llama-mqa-bias")
    c, w = model.cfg, model.head_weights()
    assert w.W_Q.shape == w.W_K.shape == w.W_V.shape == (c.n_layers, c.n_heads, c.d_model, c.d_head)
    assert w.W_O.shape == (c.n_layers, c.n_heads, c.d_head, c.d_model)
    assert w.b_Q.shape == w.b_K.shape == w.b_V.shape == (c.n_layers, c.n_heads, c.d_head)
    assert w.b_O.shape == (c.n_layers, c.d_model)
    assert w.W_Q.dtype == torch.float32
    assert set(w.tensors()) == {"W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "kv_group"}


def test_kv_groups_follow_hugging_face_repeat_kv():
    assert kv_groups(8, 2).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert kv_groups(4, 1).tolist() == [0, 0, 0, 0]
    assert kv_groups(4, 4).tolist() == [0, 1, 2, 3]
    # HF: hidden[:, :, None].expand(b, n_kv, n_rep, ...).reshape(b, n_kv * n_rep, ...)
    kv = torch.arange(2)[:, None].expand(2, 4).reshape(8)
    assert torch.equal(kv, kv_groups(8, 2))


def test_heads_of_one_kv_group_share_k_and_v_weights():
    model = shared("qwen2")
    w = model.head_weights(folded=False)
    assert torch.equal(w.W_K[:, 0], w.W_K[:, 1]) and torch.equal(w.b_V[:, 0], w.b_V[:, 1])
    assert not torch.equal(w.W_K[:, 0], w.W_K[:, 2])
    assert not torch.equal(w.W_Q[:, 0], w.W_Q[:, 1])


def test_weights_are_built_once_and_rebuilt_after_a_change():
    model = build("gpt2")
    first = model.head_weights()
    assert model.head_weights() is first
    with torch.no_grad():
        model.hf_model.transformer.h[1].attn.c_proj.weight.mul_(3.0)  # W_O of every head in layer 1
    second = model.head_weights()
    assert second is not first
    torch.testing.assert_close(second.W_O[1], 3.0 * first.W_O[1])
    torch.testing.assert_close(second.W_O[0], first.W_O[0])


def test_gemma_folds_one_plus_its_norm_weight():
    model = shared("gemma")
    raw, folded = model.head_weights(folded=False), model.head_weights(folded=True)
    gain = model.hf_model.model.layers[0].input_layernorm.weight.detach() + 1.0
    torch.testing.assert_close(folded.W_Q[0], gain[None, :, None] * raw.W_Q[0])
    torch.testing.assert_close(folded.b_Q, raw.b_Q)  # RMSNorm has no bias to fold
