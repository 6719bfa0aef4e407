"""The command line prints what the library computes."""

import pytest

from arrakis.cli import main


def test_summary_prints_shapes_and_hook_names(capsys):
    assert main(["summary", "gpt-neox", "llama"]) == 0
    out = capsys.readouterr().out
    assert "gpt-neox (gpt_neox): 4 layers, 8 heads, 8 KV heads, d_model 256, d_head 32" in out
    assert "parallel residual" in out
    assert "blocks.0.attn.hook_pattern       [1, 8, 16, 16]" in out
    assert "llama (llama): 4 layers, 8 heads, 2 KV heads" in out
    assert "logits                           [1, 16, 50257]" in out


def test_summary_refuses_an_unknown_family(capsys):
    with pytest.raises(SystemExit):
        main(["summary", "bert"])
    assert "unknown family 'bert'" in capsys.readouterr().err
