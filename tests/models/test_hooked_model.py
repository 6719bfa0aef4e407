"""The hooked forward pass: activations obey the Framework's identities for every family,
the forward pass is Hugging Face's own, and hooks never outlive a call."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from arrakis import HookedAutoConfig, HookedAutoModel, HookNameError
from tests.conftest import VARIANTS, build, prompt, shared

ATOL = 1e-5
RTOL = 1e-5  # float32 rounding of real models' larger activations (Gemma's reach ~30)


def run(model: HookedAutoModel, **kwargs):
    return model.run_with_cache(prompt(model.cfg.d_vocab), **kwargs)


def standardise(x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """The norm without its gain and bias, computed independently of the model."""
    if norm == "layernorm":
        x = x - x.mean(-1, keepdim=True)
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def all_hooks(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_raw_weights_reproduce_q_k_v_and_attn_out(tiny):
    _, cache = run(tiny)
    w = tiny.head_weights(folded=False)
    for layer in range(tiny.cfg.n_layers):
        x = cache[f"blocks.{layer}.ln1.hook_normalized"]  # [batch, pos, d_model]
        for c in "QKV":
            W, b = getattr(w, f"W_{c}")[layer], getattr(w, f"b_{c}")[layer]
            # [batch, pos, d_model] x [head, d_model, d_head] -> [batch, pos, head, d_head]
            expected = torch.einsum("bpd,hdk->bphk", x, W) + b
            got = cache[f"blocks.{layer}.attn.hook_{c.lower()}"]
            torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
        z = cache[f"blocks.{layer}.attn.hook_z"]
        # [batch, pos, head, d_head] x [head, d_head, d_model] -> [batch, pos, d_model]
        attn_out = torch.einsum("bphk,hkd->bpd", z, w.W_O[layer]) + w.b_O[layer]
        # with a post-norm, the heads add up to what enters it; hook_attn_out is what leaves it
        into = "ln1_post.hook_in" if tiny.cfg.attn_post_norm else "hook_attn_out"
        torch.testing.assert_close(cache[f"blocks.{layer}.{into}"], attn_out, atol=ATOL, rtol=RTOL)


def test_z_is_the_pattern_weighted_sum_of_values(tiny):
    _, cache = run(tiny)
    for layer in range(tiny.cfg.n_layers):
        pattern, v = cache["pattern", layer], cache["v", layer]
        # [batch, head, query_pos, key_pos] x [batch, key_pos, head, d_head] -> [batch, query_pos, head, d_head]
        z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
        torch.testing.assert_close(cache["z", layer], z, atol=ATOL, rtol=RTOL)


def test_folded_weights_give_the_same_q_k_v_from_the_standardised_input(tiny):
    _, cache = run(tiny)
    w = tiny.head_weights(folded=True)
    assert w.folded
    for layer in range(tiny.cfg.n_layers):
        x_hat = cache[f"blocks.{layer}.hook_resid_pre"]
        if tiny.cfg.ln1:  # OLMo-2's attention reads the residual itself: nothing to fold
            x_hat = standardise(x_hat, tiny.cfg.norm, tiny.cfg.norm_eps)
        for c in "QKV":
            expected = torch.einsum("bpd,hdk->bphk", x_hat, getattr(w, f"W_{c}")[layer]) + getattr(w, f"b_{c}")[layer]
            torch.testing.assert_close(cache[f"blocks.{layer}.attn.hook_{c.lower()}"], expected, atol=ATOL, rtol=RTOL)
    if tiny.cfg.norm == "layernorm":  # folding centres the rows over d_model
        assert w.W_Q.mean(dim=-2).abs().max() < 1e-6
    raw = tiny.head_weights(folded=False)
    assert torch.allclose(w.W_Q, raw.W_Q) != tiny.cfg.ln1  # the gains were really folded in


def test_residual_stream_adds_up(tiny):
    _, cache = run(tiny)
    embed = cache["hook_embed"] + (cache["hook_pos_embed"] if "hook_pos_embed" in cache else 0)
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], embed, atol=ATOL, rtol=RTOL)
    for layer in range(tiny.cfg.n_layers):
        pre, attn, mlp = (cache[f"blocks.{layer}.{n}"] for n in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out"))
        post = cache[f"blocks.{layer}.hook_resid_post"]
        if tiny.cfg.parallel_residual:
            assert f"blocks.{layer}.hook_resid_mid" not in cache
        else:
            mid = cache[f"blocks.{layer}.hook_resid_mid"]
            torch.testing.assert_close(mid, pre + attn, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(post, pre + attn + mlp, atol=ATOL, rtol=RTOL)
        if layer + 1 < tiny.cfg.n_layers:
            assert torch.equal(cache[f"blocks.{layer + 1}.hook_resid_pre"], post)


def test_logits_equal_an_independent_hugging_face_forward(tiny):
    ids = prompt(tiny.cfg.d_vocab)
    output, cache = tiny(ids)
    plain = AutoModelForCausalLM.from_config(tiny.hf_model.config, attn_implementation="eager").eval()
    plain.load_state_dict(tiny.hf_model.state_dict())
    with torch.no_grad():
        expected = plain(input_ids=ids).logits
    assert torch.equal(output.logits, expected)
    assert torch.equal(cache["logits"], expected)
    # and the final norm feeds the unembedding
    lm_head = tiny.hf_model.get_output_embeddings()
    logits = lm_head(cache["ln_final.hook_normalized"])
    cap = getattr(tiny.hf_model.config, "final_logit_softcapping", None)
    if cap:  # Gemma 2 soft-caps its logits: cap * tanh(logits / cap)
        logits = cap * torch.tanh(logits / cap)
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=RTOL)


def test_patterns_are_causal_and_rows_sum_to_one(tiny):
    _, cache = run(tiny)
    pos = cache["logits"].shape[1]
    future = torch.triu(torch.ones(pos, pos, dtype=torch.bool), diagonal=1)
    for layer in range(tiny.cfg.n_layers):
        pattern = cache["pattern", layer]
        assert pattern.shape == (2, tiny.cfg.n_heads, pos, pos)
        assert pattern[..., future].abs().max() == 0
        torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]), atol=1e-6, rtol=0)
        assert (pattern >= 0).all()


def test_cache_shapes_follow_the_hook_vocabulary(tiny):
    _, cache = run(tiny)
    c = tiny.cfg
    assert list(cache) == tiny.hook_names()
    assert cache["hook_embed"].shape == (2, 12, c.d_model)
    assert cache["blocks.1.attn.hook_k"].shape == (2, 12, c.n_heads, c.d_head)
    assert cache["logits"].shape == (2, 12, c.d_vocab)
    expected = 11 - c.parallel_residual + 2 * bool(c.qk_norm) + c.attn_post_norm
    assert sum(n.startswith("blocks.0.") for n in cache) == expected


def test_grouped_query_heads_share_keys_and_values(variant):
    model = shared(variant)
    if model.cfg.n_kv_heads == model.cfg.n_heads:
        pytest.skip("no grouped-query attention")
    _, cache = run(model, names=["blocks.0.attn.hook_k", "blocks.0.attn.hook_q"])
    k, group = cache["blocks.0.attn.hook_k"], model.head_weights().kv_group
    for h in range(model.cfg.n_heads):
        assert torch.equal(k[:, :, h], k[:, :, (group == group[h]).nonzero()[0, 0]])
    assert not torch.equal(k[:, :, 0], k[:, :, -1]) or model.cfg.n_kv_heads == 1
    q = cache["blocks.0.attn.hook_q"]
    assert not torch.equal(q[:, :, 0], q[:, :, 1])


def test_names_select_what_is_kept():
    model = shared("llama")
    _, cache = run(model, names=["blocks.1.attn.hook_pattern", "hook_embed"])
    assert list(cache) == ["hook_embed", "blocks.1.attn.hook_pattern"]
    _, cache = run(model, names=lambda n: n.endswith("hook_z"))
    assert list(cache) == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    _, cache = run(model, names=[])
    assert len(cache) == 0


def test_unknown_and_uncached_names_are_explained():
    model = shared("llama")
    with pytest.raises(HookNameError, match=r"did you mean 'blocks.0.attn.hook_pattern'"):
        run(model, names=["blocks.0.attn.hook_patern"])
    with pytest.raises(KeyError, match=r"layer 7 is out of range: this model has 2 layers \(0-1\)"):
        run(model, names=["blocks.7.hook_resid_pre"])
    _, cache = run(model, names=["hook_embed"])
    with pytest.raises(KeyError, match="was not kept by this run"):
        cache["blocks.0.hook_resid_pre"]
    with pytest.raises(KeyError, match=r"did you mean 'blocks\.0\.hook_resid_pre'"):
        cache["blocks.0.hook_resid_pr"]
    parallel = shared("gpt-neox")
    with pytest.raises(KeyError, match="parallel residual"):
        run(parallel, names=["blocks.0.hook_resid_mid"])


def test_no_hook_survives_a_call_or_a_thousand():
    model = HookedAutoModel(HookedAutoConfig("gpt2", n_layers=1, d_model=16, n_heads=2, d_vocab=32, n_ctx=8))
    assert all_hooks(model) == 0
    ids = torch.tensor([[1, 2, 3]])
    for _ in range(1000):
        model(ids)
    assert all_hooks(model) == 0


def test_no_hook_survives_a_forward_pass_that_raises(monkeypatch):
    model = build("llama")
    ids = prompt(model.cfg.d_vocab)
    before = model(ids)[0].logits

    def broken(*args, **kwargs):
        raise RuntimeError("boom in the MLP")

    monkeypatch.setattr(model.hf_model.model.layers[1].mlp, "forward", broken)
    with pytest.raises(RuntimeError, match="boom"):
        model(ids)
    assert all_hooks(model) == 0
    monkeypatch.undo()
    assert torch.equal(model(ids)[0].logits, before)


@pytest.mark.parametrize(
    ("ids", "error", "message"),
    [
        (torch.rand(1, 5), TypeError, "integer token ids, got dtype torch.float32"),
        (torch.ones(1, 2, 3, dtype=torch.long), ValueError, r"shape \[batch, pos\] with pos >= 1, got \(1, 2, 3\)"),
        (torch.ones(1, 0, dtype=torch.long), ValueError, r"got \(1, 0\)"),
        (torch.tensor([[1, 2, 512]]), ValueError, r"token id 512 at \[0, 2\] is out of range: .* 512 tokens \(0-511\)"),
        (torch.tensor([[-1, 2]]), ValueError, "token id -1"),
        ("hello", TypeError, "tensor of token ids"),
    ],
)
def test_bad_input_ids_are_refused_and_leave_no_trace(ids, error, message):
    model = shared("gpt2")
    with pytest.raises(error, match=message):
        model(ids)
    assert all_hooks(model) == 0


def test_prompts_longer_than_learned_positions_are_refused():
    model = HookedAutoModel(HookedAutoConfig("gpt2", n_layers=1, d_model=16, n_heads=2, d_vocab=32, n_ctx=8))
    with pytest.raises(ValueError, match="9 tokens is longer than this model's context of 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_one_dimensional_ids_are_a_batch_of_one():
    model = shared("qwen2")
    ids = prompt(model.cfg.d_vocab, batch=1)
    assert torch.equal(model(ids[0])[0].logits, model(ids)[0].logits)


def test_from_hf_wraps_a_loaded_model_and_switches_it_to_eager():
    config = HookedAutoConfig("mistral", **VARIANTS["mistral"][1]).hf_config
    hf = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    model = HookedAutoModel.from_hf(hf)
    assert hf.config._attn_implementation == "eager"
    _, cache = run(model, names=["blocks.0.attn.hook_pattern"])
    assert cache["pattern", 0].shape[-1] == 12


def test_activations_can_be_moved_as_they_are_captured():
    model = shared("llama")
    ids = prompt(model.cfg.d_vocab)
    _, cache = model.run_with_cache(ids, names=["hook_embed", "blocks.1.attn.hook_z"], device="meta")
    assert all(t.device.type == "meta" for t in cache.values())
    _, plain = model.run_with_cache(ids, names=["blocks.1.attn.hook_z"])
    assert plain["z", 1].device.type == "cpu" and cache["z", 1].shape == plain["z", 1].shape


def test_w_e_and_w_u_are_what_enters_and_leaves_the_residual_stream(tiny):
    """W_E rows are hook_embed (Gemma: scaled); standardised(final residual) @ W_U + b_U are
    the logits before any final soft-capping."""
    ids = prompt(tiny.cfg.d_vocab)
    _, cache = tiny.run_with_cache(ids)
    torch.testing.assert_close(tiny.W_E[ids], cache["hook_embed"], atol=ATOL, rtol=RTOL)
    last = cache[f"blocks.{tiny.cfg.n_layers - 1}.hook_resid_post"]
    standardised = standardise(last, tiny.cfg.norm, tiny.cfg.norm_eps)
    logits = tiny.hf_model.get_output_embeddings()(cache["ln_final.hook_normalized"])
    torch.testing.assert_close(standardised @ tiny.W_U + tiny.b_U, logits, atol=1e-4, rtol=1e-4)
