"""Composition scores: the fast Gram-matrix path against the definition and against TransformerLens."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

from arrakis.circuits.composition import (
    MODES,
    composition_baseline,
    composition_scores,
    composition_scores_brute_force,
)
from tests.conftest import VARIANTS, build


def require_transformer_lens() -> None:
    """TransformerLens is the external reference: under CI a broken import fails the test
    instead of silently removing the comparison; elsewhere it skips."""
    try:
        import transformer_lens  # noqa: F401
    except Exception as err:  # an ImportError, or one of its own dependencies failing
        if os.environ.get("CI"):
            pytest.fail(f"TransformerLens does not import ({err!r}); CI must compare against it")
        pytest.skip(f"TransformerLens does not import: {err!r}")


def random_weights(n_layers: int, n_heads: int, d_model: int, d_head: int, seed: int = 0, std: float = 1.0):
    """Gaussian W_Q, W_K, W_V [L, H, D, d_head] and W_O [L, H, d_head, D].

    Each head of each matrix gets its own log-normal scale (over two orders of magnitude), so a
    normalisation that mixed up heads or matrices would show.
    """
    g = torch.Generator().manual_seed(seed)

    def draw(*shape: int) -> torch.Tensor:
        scale = torch.randn(n_layers, n_heads, 1, 1, generator=g).exp()
        return torch.randn(n_layers, n_heads, *shape, generator=g) * scale * std

    return draw(d_model, d_head), draw(d_model, d_head), draw(d_model, d_head), draw(d_head, d_model)


def later_mask(n_layers: int, n_heads: int) -> torch.Tensor:
    """[L, H, L, H] bool: True where the writer's layer is before the reader's."""
    layer = torch.arange(n_layers)
    return (layer[:, None, None, None] < layer[None, None, :, None]).expand(n_layers, n_heads, n_layers, n_heads)


# (n_layers, n_heads, d_model, d_head, band, layer_block)
SHAPES = [
    pytest.param(3, 2, 40, 8, 16, 1, id="band16-D40-block1"),  # D not a multiple of the band
    pytest.param(5, 3, 40, 5, 16, 2, id="band16-D40-block2"),  # layer blocks that do not divide L
    pytest.param(4, 2, 24, 8, 64, 8, id="band>D-block>L"),
    pytest.param(3, 3, 33, 4, 7, 3, id="band7-block=L"),
    pytest.param(2, 4, 16, 16, 16, 1, id="d_head=D"),
    pytest.param(1, 3, 16, 4, 16, 8, id="one-layer"),  # no valid pair at all
]


@pytest.mark.parametrize(("n_layers", "n_heads", "d_model", "d_head", "band", "layer_block"), SHAPES)
def test_matches_brute_force(n_layers, n_heads, d_model, d_head, band, layer_block):
    weights = random_weights(n_layers, n_heads, d_model, d_head, seed=n_layers * 100 + d_model)
    fast = composition_scores(*weights, band=band, layer_block=layer_block)
    assert set(fast) == set(MODES)
    later = later_mask(n_layers, n_heads)
    for mode in MODES:
        expected = composition_scores_brute_force(*weights, mode)
        got = fast[mode]
        assert got.shape == (n_layers, n_heads, n_layers, n_heads)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=lambda m, mode=mode: f"{mode}: {m}")
        assert torch.equal(got[~later], torch.zeros((~later).sum().item())), f"{mode}: nonzero where l1 >= l2"
        assert (got[later] > 0).all(), f"{mode}: a valid pair scored 0"


def test_modes_subset_and_case():
    weights = random_weights(3, 2, 40, 8, seed=7)
    everything = composition_scores(*weights)
    only_k = composition_scores(*weights, modes="k")
    assert list(only_k) == ["K"]
    torch.testing.assert_close(only_k["K"], everything["K"], atol=0, rtol=0)
    v_and_q = composition_scores(*weights, modes=("v", "Q"))
    assert set(v_and_q) == {"Q", "V"}
    for mode in v_and_q:
        torch.testing.assert_close(v_and_q[mode], everything[mode], atol=0, rtol=0)
    with pytest.raises(ValueError, match="unknown composition mode"):
        composition_scores(*weights, modes=("O",))


def test_random_weights_score_the_baseline():
    """Random heads score about 1/sqrt(d_model).

    For a fixed A and a rotation-invariant random B, E||AB||_F^2 = ||A||_F^2 ||B||_F^2 / D, so the
    score's root mean square is exactly 1/sqrt(D); its mean sits a hair below. Measured (seeds 0-3,
    4 layers x 8 heads, D = 256, d_head = 16): mean / baseline 0.994-1.002 per mode, every pair in
    0.85-1.17 x baseline. Missing or wrong norms and a missing square root land far outside the
    bounds below. (Errors in the off-diagonal Gram entries barely move this mean: those products
    cancel on average for random heads. The brute-force comparison above catches them.)
    """
    n_layers, n_heads, d_model, d_head = 4, 8, 256, 16
    g = torch.Generator().manual_seed(0)
    W_Q, W_K, W_V = (torch.randn(n_layers, n_heads, d_model, d_head, generator=g) * 0.02 for _ in range(3))
    W_O = torch.randn(n_layers, n_heads, d_head, d_model, generator=g) * 0.02
    baseline = composition_baseline(d_model)
    assert baseline == pytest.approx(1 / 16)
    scores = composition_scores(W_Q, W_K, W_V, W_O)
    later = later_mask(n_layers, n_heads)
    for mode in MODES:
        valid = scores[mode][later]
        assert valid.numel() == 6 * n_heads**2
        assert valid.mean().item() / baseline == pytest.approx(1.0, abs=0.03), mode
        assert valid.min().item() > 0.75 * baseline, mode
        assert valid.max().item() < 1.3 * baseline, mode


# ---------------------------------------------------------------- TransformerLens


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny word-level tokenizer on disk, so TransformerLens can boot offline and reload it."""
    require_transformer_lens()
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tokenizer")
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(512)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="t0", bos_token="t1", eos_token="t2", pad_token="t3"
    )
    hf_tok.save_pretrained(path)
    return path


def add_zero_qkv_bias_for_tl(hf_model: torch.nn.Module) -> None:
    """TransformerLens 4.3's GPT-NeoX adapter asserts that query_key_value has a bias
    (its neox architecture module, split_qkv_matrix) and cannot boot a bias-free model.
    Composition scores never read a bias, so a zero one changes nothing that is compared here."""
    for module in hf_model.modules():
        qkv = getattr(module, "query_key_value", None)
        if isinstance(qkv, torch.nn.Linear) and qkv.bias is None:
            qkv.bias = torch.nn.Parameter(torch.zeros(qkv.out_features))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_transformer_lens(variant: str, tokenizer_dir):
    require_transformer_lens()
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    model = build(variant)  # fresh: booting TransformerLens changes the HF model (eager attention)
    raw = model.head_weights(folded=False)
    ours = composition_scores(raw.W_Q, raw.W_K, raw.W_V, raw.W_O)  # before TransformerLens touches the model
    add_zero_qkv_bias_for_tl(model.hf_model)
    # TransformerLens picks its adapter by the config's architectures (a config built here has none)
    model.hf_model.config.architectures = [type(model.hf_model).__name__]
    # The tokenizer's folder as the model name: no alias lookup, no Hub, and nothing to log.
    bridge = TransformerBridge.boot_transformers(
        str(tokenizer_dir), hf_model=model.hf_model, tokenizer=AutoTokenizer.from_pretrained(tokenizer_dir)
    )
    later = later_mask(model.cfg.n_layers, model.cfg.n_heads)
    for mode in MODES:
        theirs = bridge.all_composition_scores(mode).scores
        assert theirs.shape == ours[mode].shape, mode
        assert (ours[mode][later] > 0).all(), mode
        torch.testing.assert_close(ours[mode], theirs, atol=1e-4, rtol=0, msg=lambda m, mode=mode: f"{mode}: {m}")


def test_a_broken_transformer_lens_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformer_lens", None)  # import raises ImportError
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must compare against it"):
        require_transformer_lens()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require_transformer_lens()
