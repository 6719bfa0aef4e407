"""The generated tasks on the embedded model (SmolLM2-135M-Instruct): it does them, and the
corrupted twins take the behaviour away. Thresholds sit below the values measured here
(n=16, seed 0): ioi accuracy 1.00, logit difference 4.79 clean against 0.14 corrupted;
induction (seq_len 10) log p -4.54 clean against -14.06 corrupted, accuracy 0.19, and with
seq_len 30 accuracy 0.75: a model this small copies short random sequences poorly."""

from __future__ import annotations

import pytest

from arrakis import HookedAutoModel, load_model
from arrakis.tasks import induction, ioi

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm() -> HookedAutoModel:
    return load_model()


def test_the_model_does_ioi_and_the_abc_twins_remove_it(smollm):
    task = ioi(smollm, n=16, seed=0)
    assert task.accuracy() >= 0.9
    assert task.clean_metric > 3.0  # the indirect object beats the subject by e^3 and more
    assert abs(task.corrupted_metric) < 1.0  # neither name is favoured once none is repeated
    words = smollm.to_str_tokens(task.clean_ids[0][task.attention_mask[0].bool()])
    assert words[int(task.src[0])] == smollm.to_str_tokens([int(task.answer[0])])[0]


def test_the_model_copies_repeated_tokens_and_the_changed_first_half_removes_it(smollm):
    task = induction(smollm, n=16, seq_len=10, seed=0)
    assert task.clean_metric - task.corrupted_metric > 5.0  # log p: e^5 times likelier with the pattern
    default = induction(smollm, n=16, seed=0)  # 30 tokens a half: the model gets most of them right
    assert default.clean_ids.shape[1] >= 1 + 30 + 16 and default.accuracy() >= 0.6
