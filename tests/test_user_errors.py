"""User errors found in review (issue #14): each gets one clear message naming the problem
and what is valid, and leaves nothing changed."""

from __future__ import annotations

import pytest
import torch

from arrakis import HookedAutoConfig
from arrakis.tools import WriteReadAnalyzer
from tests.conftest import shared


@pytest.mark.parametrize(("field", "value"), [("n_layers", 0), ("n_heads", -2), ("d_model", 1.5), ("d_vocab", True)])
def test_a_shape_that_is_not_a_positive_int_is_refused(field, value):
    with pytest.raises(ValueError, match=f"{field} must be a positive int, got {value!r}"):
        HookedAutoConfig("llama", **{field: value})


def test_empty_input_ids_say_they_are_empty():
    with pytest.raises(ValueError, match="input_ids is empty; pass at least one token id"):
        shared("llama").run_with_cache([])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": -1}, "top_k must be a positive int, got -1"),
        ({"top_k": 0}, "top_k must be a positive int, got 0"),
        ({"writer_role": "induction", "role_threshold": 5}, r"role_threshold must be in \(0, 1\]"),
    ],
)
def test_circuits_refuse_what_would_silently_drop_edges(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WriteReadAnalyzer(shared("llama")).circuits("K", **kwargs)


def test_head_roles_read_as_a_summary_not_three_tensors():
    roles = WriteReadAnalyzer(shared("llama")).head_roles(seq_len=8, n_sequences=2)
    text = repr(roles)
    assert text.startswith("HeadRoles(2 layers x 4 heads") and "tensor(" not in text and len(text.splitlines()) == 4
    best = roles.top("induction", 1)[0][0]
    assert f"L{best[0]}H{best[1]}" in text.splitlines()[3]
    assert torch.equal(roles.induction, roles.scores("induction"))
