"""Direct logit attribution: every component adds up to the logit (difference) on every
family, signs are right on planted heads, and the write heads toward a token are the
writers while suppressors stand beside them."""

from __future__ import annotations

import json

import pytest
import torch

from arrakis.tools import WriteReadAnalyzer
from arrakis.tools.results import LogitAttribution
from tests.conftest import VARIANTS, build, shared


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_contributions_add_up_to_the_logit(variant):
    model = shared(variant)
    tool = WriteReadAnalyzer(model)
    ids = torch.randint(0, model.cfg.d_vocab, (1, 9), generator=torch.Generator().manual_seed(0))
    logits = model(ids)[0].logits[0]
    cap = getattr(model.hf_model.config, "final_logit_softcapping", None)
    if cap:  # Gemma 2: what is attributed is the logit before cap * tanh(x / cap)
        _, cache = model.run_with_cache(ids, names=["ln_final.hook_normalized"])
        with torch.no_grad():
            logits = model.hf_model.get_output_embeddings()(cache["ln_final.hook_normalized"])[0]
    for pos, token, foil in ((-1, 5, None), (4, 17, 3)):
        result = tool.logit_attribution(ids, token, pos=pos, foil=foil)
        expected = logits[pos, token] - (logits[pos, foil] if foil is not None else 0)
        assert result.logit == pytest.approx(float(expected), abs=1e-4)
        assert result.total == pytest.approx(float(expected), abs=1e-4, rel=1e-4)
        assert result.heads.shape == (model.cfg.n_layers, model.cfg.n_heads)


def planted_writer_model():
    """A one-layer GPT-2 whose head 0 writes +u and head 1 writes -u at every position,
    u = W_U[:, 7] (the unembedding column of token 7), and whose other heads write nothing."""
    model = build("gpt2")
    cfg = model.cfg
    with torch.no_grad():
        attn = model.hf_model.transformer.h[0].attn
        attn.c_proj.weight.zero_()  # Conv1D [head * d_head, d_model]: rows are z features
        attn.c_proj.bias.zero_()
        u = model.hf_model.lm_head.weight[7].clone()
        v_bias = attn.c_attn.bias[2 * cfg.d_model :]  # every value has feature 0 of its head = 1
        attn.c_attn.weight[:, 2 * cfg.d_model :] = 0
        v_bias.zero_()
        v_bias[0] = v_bias[cfg.d_head] = 1.0  # head 0's and head 1's first value features
        attn.c_proj.weight[0] = 3 * u  # head 0: z[0] = 1 -> writes +3u
        attn.c_proj.weight[cfg.d_head] = -2 * u  # head 1: writes -2u
    return model


def test_a_head_planted_to_write_a_token_is_a_writer_and_its_opposite_a_suppressor():
    model = planted_writer_model()
    tool = WriteReadAnalyzer(model)
    ids = torch.randint(0, 512, (1, 6), generator=torch.Generator().manual_seed(1))
    result = tool.logit_attribution(ids, 7)
    assert result.writers[0] == (0, 0) and result.suppressors[0] == (0, 1)
    assert result.heads[0, 0] > 0 > result.heads[0, 1]
    assert float(result.heads[0, 0] / result.heads[0, 1]) == pytest.approx(-1.5, rel=1e-4)  # 3u against -2u
    assert result.heads[0, 2:].abs().max() < 1e-6  # heads without OV write nothing
    selection = tool.identify_write_heads(0, input_ids=ids, token=7, threshold=0.5)
    assert list(selection) == [(0, 0)] and selection.extra["suppressors"] == [(0, 1)]
    assert selection.scores[1] < 0 and selection.method == "logit-attribution"
    assert selection.shares[1] == pytest.approx(0.0, abs=1e-9)  # a suppressor has no share of the writing


def test_the_result_round_trips_and_reads_well():
    tool = WriteReadAnalyzer(shared("llama"))
    ids = torch.randint(0, 512, (1, 9), generator=torch.Generator().manual_seed(0))
    result = tool.logit_attribution(ids, 5, foil=6)
    back = LogitAttribution.from_dict(json.loads(json.dumps(result.to_dict())))
    assert torch.equal(back.heads, result.heads) and back.components == result.components
    assert back.total == pytest.approx(result.total) and back.writers == result.writers
    assert "LogitAttribution(logit 5 - 6 at position 8" in repr(result)
    assert "<table" in result._repr_html_()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"token": 512}, r"token 512 is out of range: .* \(0-511\)"),
        ({"token": 5, "foil": 5}, "foil 5 is the same token as 5"),
        ({"token": 5, "pos": 9}, r"pos 9 is out of range: the prompt has 9 positions \(-9 to 8\)"),
        ({"token": "a"}, "no tokenizer"),
    ],
)
def test_bad_questions_get_clear_errors(kwargs, message):
    tool = WriteReadAnalyzer(shared("llama"))
    with pytest.raises(ValueError, match=message):
        tool.logit_attribution(torch.randint(0, 512, (1, 9)), **kwargs)


def test_the_plot_shows_every_head_and_component():
    from matplotlib.figure import Figure

    from tests.viz.conftest import rendered

    tool = WriteReadAnalyzer(planted_writer_model())
    result = tool.logit_attribution(torch.randint(0, 512, (1, 6), generator=torch.Generator().manual_seed(1)), 7)
    fig = result.plot()
    assert isinstance(fig, Figure)
    heads_ax, bars_ax = fig.axes[0], next(a for a in fig.axes if a.get_title().startswith("other components"))
    image = heads_ax.get_images()[0]
    assert image.get_array().shape == tuple(result.heads.shape)
    low, high = image.get_clim()
    assert low == -high == -float(result.heads.abs().max())  # symmetric around 0: the sign shows
    assert {p.get_gid() for p in heads_ax.patches} == {"writer", "suppressor"}
    widths = [bar.get_width() for bar in bars_ax.patches]
    shown = [v for name, v in result.components.items() if v != 0 or name == "bias"]
    assert widths == pytest.approx(shown)
    rendered(fig)
