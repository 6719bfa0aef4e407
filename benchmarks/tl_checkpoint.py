"""Booting TransformerLens offline on one of our models, for benchmarks that compare."""

from __future__ import annotations

from pathlib import Path


def save_for_transformer_lens(model, folder: Path) -> None:
    """The HF model and a tiny offline tokenizer, so TransformerLens can boot from the folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model.hf_model.save_pretrained(folder)
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(512)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="t0", bos_token="t1", eos_token="t2", pad_token="t3"
    )
    hf_tok.save_pretrained(folder)
