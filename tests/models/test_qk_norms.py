"""The later families' maths: per-head q/k norms (over d_head, over all heads, LayerNorm per
head), the gain-folded QK circuit they imply, and the whole tool on a tiny model of each."""

from __future__ import annotations

import pytest
import torch

from arrakis.report import Report
from arrakis.tools import WriteReadAnalyzer
from tests.conftest import VARIANTS, build, prompt, shared

# read from the variant table, so that collecting the tests builds no model
QK_NORM = [
    v
    for v, (family, fields) in VARIANTS.items()
    if family in ("gemma3", "qwen3", "olmo2") or fields.get("qk_layernorm")
]
LATER = [v for v in VARIANTS if VARIANTS[v][0] in ("gemma2", "gemma3", "qwen3", "olmo2") or v == "stable-lm-qk-norm"]


def norm_scale(x: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
    """Per-vector scale over the last axis: RMS (RMSNorm) or standard deviation (LayerNorm)."""
    if kind == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    return torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def gains_from_modules(model, layer: int, channel: str) -> torch.Tensor:
    """The q (k) norm gain per head [heads_c, d_head], read straight off Hugging Face's module."""
    a, c = model.adapter, model.cfg
    module = model.hf_model.get_submodule(a.layers)[layer].get_submodule(a.q_norm if channel == "q" else a.k_norm)
    n = c.n_heads if channel == "q" else c.n_kv_heads
    if a.qk_norm_layout == "per_head_modules":
        return torch.stack([m.weight for m in module.norms]).detach()
    weight = module.weight.detach() + a.qk_norm_gain_offset
    return weight.view(n, c.d_head) if weight.numel() == n * c.d_head else weight.expand(n, c.d_head)


def independently_normed(model, raw: torch.Tensor, layer: int, channel: str) -> torch.Tensor:
    """hook_q (or hook_k, [batch, pos, head_c, d_head]) normalised by the formula, from scratch."""
    a, c = model.adapter, model.cfg
    eps = c.norm_eps
    if a.qk_norm_layout == "flat":  # one RMS over all heads of the token
        scale = norm_scale(raw.flatten(-2), "rmsnorm", eps)[..., None]
    else:
        scale = norm_scale(raw, a.qk_norm_kind, eps)
    centred = raw - raw.mean(-1, keepdim=True) if a.qk_norm_kind == "layernorm" else raw
    return centred / scale * gains_from_modules(model, layer, channel)


@pytest.mark.parametrize("variant", QK_NORM)
def test_the_q_k_norm_hooks_hold_the_normalised_q_and_k(variant):
    q_k_norm_hooks_hold(shared(variant))


def q_k_norm_hooks_hold(model) -> None:
    c = model.cfg
    _, cache = model.run_with_cache(prompt(c.d_vocab))
    for layer in range(c.n_layers):
        q = cache[f"blocks.{layer}.attn.hook_q"]
        torch.testing.assert_close(
            cache[f"blocks.{layer}.attn.hook_q_normed"],
            independently_normed(model, q, layer, "q"),
            atol=1e-5,
            rtol=1e-4,
        )
        k = cache[f"blocks.{layer}.attn.hook_k"][:, :, :: c.group_size]  # one slice per KV head
        expected = independently_normed(model, k, layer, "k")[:, :, model.head_weights().kv_group]
        torch.testing.assert_close(cache[f"blocks.{layer}.attn.hook_k_normed"], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", [v for v in QK_NORM if "bias" not in v])
def test_the_gain_folded_qk_circuit_is_the_attention_logit_up_to_the_per_token_scales(variant):
    """q^_i . k^_j (what the dot product sees, before rotary) times the two norms' per-token
    scales equals x~_i QK[h] x~_j^T with QK = W_Q diag(g_q g_k) W_K^T (centred for LayerNorm)."""
    gain_folded_qk_is_the_logit(shared(variant))


def gain_folded_qk_is_the_logit(model, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    c, a = model.cfg, model.adapter
    _, cache = model.run_with_cache(prompt(c.d_vocab))
    W_Q, W_K = model.head_weights(folded=False).qk_circuit()
    for layer in range(c.n_layers):
        x = cache[f"blocks.{layer}.ln1.hook_normalized"]  # [batch, pos, d_model]
        # [batch, i, d_model] x [head, d_model, d_head] x [batch, j, d_model] -> [batch, head, i, j]
        bilinear = torch.einsum("bid,hdk,hek,bje->bhij", x, W_Q[layer], W_K[layer], x)
        q_n, k_n = cache[f"blocks.{layer}.attn.hook_q_normed"], cache[f"blocks.{layer}.attn.hook_k_normed"]
        q, k = cache[f"blocks.{layer}.attn.hook_q"], cache[f"blocks.{layer}.attn.hook_k"]
        if a.qk_norm_layout == "flat":
            s_q, s_k = (
                norm_scale(q.flatten(-2), "rmsnorm", c.norm_eps),
                norm_scale(k[:, :, :: c.group_size].flatten(-2), "rmsnorm", c.norm_eps),
            )
            s_q, s_k = s_q.expand(-1, -1, c.n_heads), s_k.expand(-1, -1, c.n_heads)  # [batch, pos, head]
        else:
            s_q, s_k = (
                norm_scale(q, a.qk_norm_kind, c.norm_eps)[..., 0],
                norm_scale(k, a.qk_norm_kind, c.norm_eps)[..., 0],
            )
        logits = torch.einsum("bihk,bjhk->bhij", q_n, k_n)  # [batch, head, i, j]
        rescaled = logits * s_q.transpose(1, 2)[..., :, None] * s_k.transpose(1, 2)[..., None, :]
        torch.testing.assert_close(rescaled, bilinear, atol=atol, rtol=rtol)


@pytest.mark.parametrize("variant", ["olmo2", "stable-lm-qk-norm"])
def test_zeroing_one_heads_q_norm_gain_zeroes_its_q_and_k_composition(variant):
    """The head then attends uniformly whatever it reads: no Q- or K-composition into it.
    (TransformerLens's scores, which ignore the gains, would not change at all.)"""
    model = build(variant)
    tool = WriteReadAnalyzer(model)
    before = {mode: tool.composition_scores(mode).tensor.clone() for mode in "QKV"}
    attn = model.hf_model.get_submodule(model.adapter.layers)[1].get_submodule(model.adapter.q_norm)
    with torch.no_grad():
        if model.adapter.qk_norm_layout == "per_head_modules":
            attn.norms[2].weight.zero_()
        else:
            attn.weight.view(model.cfg.n_heads, model.cfg.d_head)[2].zero_()
    after = {mode: tool.composition_scores(mode).tensor for mode in "QKV"}
    for mode in "QK":
        assert after[mode][0, :, 1, 2].abs().max() == 0 and before[mode][0, :, 1, 2].min() > 0
        others = torch.ones_like(after[mode], dtype=torch.bool)
        others[:, :, 1, 2] = False
        torch.testing.assert_close(after[mode][others], before[mode][others])
    torch.testing.assert_close(after["V"], before["V"])
    assert any("q/k norms" in note for note in tool.composition_scores("K").notes)
    _, cache = model.run_with_cache(prompt(model.cfg.d_vocab))  # the head really does attend uniformly now
    pattern = cache["pattern", 1][:, 2]  # [batch, query_pos, key_pos]
    uniform = torch.tril(torch.ones_like(pattern[0])) / torch.arange(1, pattern.shape[-1] + 1)[:, None]
    torch.testing.assert_close(pattern, uniform.expand_as(pattern), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", LATER)
def test_the_whole_tool_runs_on_a_tiny_model_of_each_later_family(variant):
    model = shared(variant)
    tool = WriteReadAnalyzer(model)
    ids = prompt(model.cfg.d_vocab, batch=1)
    assert len(tool.identify_write_heads(1)) >= 1 and len(tool.identify_write_heads(1, input_ids=ids)) >= 1
    assert len(tool.identify_read_heads(1, dim_idx=3)) >= 1
    assert len(tool.identify_read_heads(1, dim_idx=(0, 1), channel="k")) >= 1
    for mode in "QKV":
        assert torch.isfinite(tool.composition_scores(mode).tensor).all()
    roles = tool.head_roles(seq_len=8, n_sequences=2)
    tool.circuits("K", roles=roles, min_ratio=0.5)
    for method in ("attribution", "routes"):
        flow = tool.trace_information_flow(ids, src_pos=2, dst_pos=10, method=method, verify=True)
        assert torch.isfinite(flow.head_scores).all() and len(flow) == model.cfg.n_layers
        exact = flow.verification["all_layers"]["exact"]
        logits = model(ids[:, :11])[0].logits[0, 10]
        knocked = model.run_with_attention_knockout(ids[:, :11], {0: [(None, 10, 2)], 1: [(None, 10, 2)]})
        log_p, log_p_knocked = logits.log_softmax(-1), knocked.logits[0, 10].log_softmax(-1)
        target = flow.metric["target"]
        assert exact == pytest.approx(float(log_p[target] - log_p_knocked[target]), abs=1e-4)
    html = Report(model, prompt=ids, src=int(ids[0, 2]), dst=int(ids[0, 10])).to_html()
    assert "Information flow" in html and "Composition" in html


def test_a_multimodal_gemma3_checkpoint_is_analysed_through_its_text_model(tmp_path):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    from arrakis import HookedAutoModel

    torch.manual_seed(0)
    text = Gemma3TextConfig(
        num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, vocab_size=512, sliding_window=6,
    )  # fmt: skip
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=500)
    wrapper = Gemma3ForConditionalGeneration(config).eval()
    ids = prompt(512)
    with torch.no_grad():
        expected = wrapper(input_ids=ids).logits
    model = HookedAutoModel.from_hf(wrapper)
    assert model.cfg.family == "gemma3" and model.cfg.qk_norm == "head"
    # (the wrapper ran with its default attention kernel, the hooked model with eager attention)
    torch.testing.assert_close(model(ids)[0].logits, expected, atol=1e-5, rtol=1e-5)
    wrapper.save_pretrained(tmp_path)  # and from a folder, as a real checkpoint comes
    torch.testing.assert_close(HookedAutoModel.from_pretrained(tmp_path)(ids)[0].logits, expected, atol=1e-5, rtol=1e-5)


def test_a_q_k_norm_with_a_bias_is_refused_by_name():
    """A bias in a q/k norm adds logit terms a gain-folded QK cannot hold: refused, not ignored."""
    model = build("stable-lm-qk-norm")
    norm = model.hf_model.get_submodule(model.adapter.layers)[0].get_submodule(model.adapter.k_norm).norms[0]
    norm.bias = torch.nn.Parameter(torch.full((model.cfg.d_head,), 0.1))
    with pytest.raises(ValueError, match="the k norm of this stable-lm model has a bias"):
        model.head_weights()
