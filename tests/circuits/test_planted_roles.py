"""Head roles (docs/mathematics.md#head-roles) on a model with planted heads: a duplicate-token head and a
previous-token head built by hand, found by ``head_roles`` with the scores that
TransformerLens's ``detect_head`` ("mul") formula gives on their cached patterns.

The model is a one-layer GPT-2 whose residual stream is two one-hot codes: the token in
dimensions 0..V-1 and the position in V..V+n_ctx-1. Every input then has the same mean and
variance, so ln_1 is one affine map for all of them, and the centring it does adds to each
logit q_i . k_j a term that depends on i only (the rows of a head's W_Q W_K^T sum to the same
value on every token and on every position), which softmax ignores. So for head 0, with
W_Q W_K^T = diag(c on token dims, -c on position dims), the logit is proportional to
c [token_i == token_j] - c [i == j]: an earlier copy of the current token wins, the token
itself does not (a duplicate-token head). Head 1 has W_Q W_K^T = K on (position i, position
i - 1) and attends to the previous position, whatever the tokens (a previous-token head).
The other heads keep Hugging Face's small random weights: nearly uniform attention.
"""

from __future__ import annotations

import pytest
import torch

from arrakis import HookedAutoConfig, HookedAutoModel
from arrakis.tools import WriteReadAnalyzer
from tests.circuits.test_composition import require_transformer_lens

D_VOCAB, N_CTX, SEQ_LEN = 12, 20, 10  # the probe: SEQ_LEN random tokens, then the same again
D_MODEL, N_HEADS = 128, 4
D_HEAD = D_MODEL // N_HEADS  # 32 >= D_VOCAB + N_CTX: the token and position codes fit one head
DUPLICATE, PREVIOUS = 0, 1  # the planted heads (layer 0)


def planted_model(strength: float = 2.0) -> HookedAutoModel:
    torch.manual_seed(0)
    model = HookedAutoModel(
        HookedAutoConfig("gpt2", n_layers=1, d_model=D_MODEL, n_heads=N_HEADS, d_vocab=D_VOCAB, n_ctx=N_CTX, d_mlp=64)
    )
    t = model.hf_model.transformer
    with torch.no_grad():
        t.wte.weight.zero_()
        t.wte.weight[:, :D_VOCAB] = torch.eye(D_VOCAB)
        t.wpe.weight.zero_()
        t.wpe.weight[:, D_VOCAB : D_VOCAB + N_CTX] = torch.eye(N_CTX)
        ln = t.h[0].ln_1
        ln.weight.fill_(1.0)
        ln.bias.zero_()
        W, b = t.h[0].attn.c_attn.weight, t.h[0].attn.c_attn.bias  # Conv1D [d_model, 3 d_model]: [q | k | v]
        q0, k0 = DUPLICATE * D_HEAD, D_MODEL + DUPLICATE * D_HEAD
        q1, k1 = PREVIOUS * D_HEAD, D_MODEL + PREVIOUS * D_HEAD
        for col in (q0, k0, q1, k1):
            W[:, col : col + D_HEAD] = 0.0
            b[col : col + D_HEAD] = 0.0
        codes = torch.arange(D_VOCAB + N_CTX)
        # duplicate-token head: q = diag(c, ..., c (tokens), -c, ..., -c (positions)) x, k = x
        W[codes, q0 + codes] = torch.cat([torch.full((D_VOCAB,), strength), torch.full((N_CTX,), -strength)])
        W[codes, k0 + codes] = 1.0
        # previous-token head: q_i = K e_i, k_j = e_{j + 1}
        positions = torch.arange(N_CTX)
        W[D_VOCAB + positions, q1 + positions] = strength
        W[D_VOCAB + positions[:-1], k1 + positions[:-1] + 1] = 1.0
    return model


def probe(n_sequences: int = 4, seed: int = 0) -> torch.Tensor:
    first = torch.randint(0, D_VOCAB, (n_sequences, SEQ_LEN), generator=torch.Generator().manual_seed(seed))
    return first.repeat(1, 2)


def masks(tokens: list[int]) -> dict[str, torch.Tensor]:
    """The detection patterns by their definitions, cell by cell."""
    T = len(tokens)
    out = {role: torch.zeros(T, T) for role in ("previous_token", "duplicate_token", "induction")}
    for i in range(T):
        for j in range(T):
            out["previous_token"][i, j] = float(j == i - 1)
            out["duplicate_token"][i, j] = float(j < i and tokens[j] == tokens[i])
            out["induction"][i, j] = float(1 <= j <= i and tokens[j - 1] == tokens[i])
    return out


def mul_scores(pattern: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """TransformerLens's detect_head, error_measure="mul", for a list of sequences: per
    sequence sum(A * M) / sum(A) over all its query rows (no exclusions), then the mean over
    sequences. pattern [batch, head, q, k] -> {role: [head]}."""
    per_sequence = {role: [] for role in ("previous_token", "duplicate_token", "induction")}
    for b in range(ids.shape[0]):
        for role, mask in masks(ids[b].tolist()).items():
            A = pattern[b].double()
            per_sequence[role].append((A * mask).sum((-1, -2)) / A.sum((-1, -2)))
    return {role: torch.stack(scores).mean(0) for role, scores in per_sequence.items()}


def test_the_planted_heads_attend_as_built():
    model = planted_model()
    ids = probe()
    _, cache = model.run_with_cache(ids)
    A = cache["pattern", 0]
    dup, prev = masks(ids[0].tolist())["duplicate_token"], masks(ids[0].tolist())["previous_token"]
    second_half = slice(SEQ_LEN, 2 * SEQ_LEN)  # every row there has an earlier copy of its token
    assert (A[0, DUPLICATE, second_half] * dup[second_half]).sum(-1).min() > 0.99
    assert (A[0, PREVIOUS, 1:] * prev[1:]).sum(-1).min() > 0.99


def test_head_roles_score_the_planted_heads_as_detect_head_does():
    model = planted_model()
    ids = probe()
    roles = WriteReadAnalyzer(model).head_roles(ids)
    _, cache = model.run_with_cache(ids)
    expected = mul_scores(cache["pattern", 0], ids)
    for role in ("previous_token", "duplicate_token", "induction"):
        torch.testing.assert_close(roles.scores(role)[0].double(), expected[role], atol=1e-5, rtol=0)

    # what a perfect head would score on this probe: the share of rows with an earlier copy
    # of their token (all of the second half, and repeats inside the first), resp. the share
    # of rows with a previous position
    has_copy = [float(masks(row.tolist())["duplicate_token"].sum(-1).gt(0).float().mean()) for row in ids]
    ideal_duplicate, ideal_previous = sum(has_copy) / len(has_copy), (2 * SEQ_LEN - 1) / (2 * SEQ_LEN)
    duplicate, previous = roles.duplicate_token[0], roles.previous_token[0]
    assert duplicate[DUPLICATE] == pytest.approx(ideal_duplicate, abs=0.02)
    assert previous[PREVIOUS] == pytest.approx(ideal_previous, abs=0.02)
    # each planted head is found for its role, far above every other head
    assert roles.top("duplicate_token", 1)[0][0] == (0, DUPLICATE)
    assert roles.top("previous_token", 1)[0][0] == (0, PREVIOUS)
    others = [h for h in range(N_HEADS) if h != DUPLICATE]
    assert duplicate[DUPLICATE] > 0.5 and duplicate[others].max() < 0.25
    others = [h for h in range(N_HEADS) if h != PREVIOUS]
    assert previous[PREVIOUS] > 0.9 and previous[others].max() < 0.25
    # and not for the other roles: the duplicate head does not look at the previous token or
    # the token after the copy, the previous-token head not at copies, no more than a head
    # attending uniformly to every earlier position does (what rows without a copy do)
    T = 2 * SEQ_LEN
    uniform = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
    chance = mul_scores(uniform.expand(ids.shape[0], 1, T, T), ids)
    for own, role, other in (
        (DUPLICATE, "duplicate_token", "previous_token"),
        (DUPLICATE, "duplicate_token", "induction"),
        (PREVIOUS, "previous_token", "duplicate_token"),
        (PREVIOUS, "previous_token", "induction"),
    ):
        score = roles.scores(other)[0, own]
        assert score < chance[other][0] + 0.01 and score < 0.25 * roles.scores(role)[0, own], (own, other)
    assert roles.heads("duplicate_token", 0.5) == [(0, DUPLICATE)]
    assert roles.heads("previous_token", 0.5) == [(0, PREVIOUS)]


def test_the_default_probe_finds_the_planted_heads():
    roles = WriteReadAnalyzer(planted_model()).head_roles(seq_len=SEQ_LEN, n_repeats=2)
    assert roles.top("duplicate_token", 1)[0][0] == (0, DUPLICATE)
    assert roles.top("previous_token", 1)[0][0] == (0, PREVIOUS)
    assert roles.duplicate_token[0, DUPLICATE] > 0.5 and roles.previous_token[0, PREVIOUS] > 0.9


def test_scores_equal_transformer_lens_detect_head_on_the_same_patterns():
    """TransformerLens's own detection patterns and "mul" score, one sequence at a time,
    averaged over the sequences as ``detect_head`` does for a list of them."""
    require_transformer_lens()
    from transformer_lens import head_detector as tl

    model = planted_model()
    ids = probe()
    roles = WriteReadAnalyzer(model).head_roles(ids)
    _, cache = model.run_with_cache(ids)
    detectors = {
        "previous_token": tl.get_previous_token_head_detection_pattern,
        "duplicate_token": tl.get_duplicate_token_head_detection_pattern,
        "induction": tl.get_induction_head_detection_pattern,
    }
    for role, detector in detectors.items():
        expected = torch.tensor(
            [
                [
                    tl.compute_head_attention_similarity_score(
                        cache["pattern", 0][b, h],
                        detector(ids[b]),
                        exclude_bos=False,
                        exclude_current_token=False,
                        error_measure="mul",
                    )
                    for h in range(N_HEADS)
                ]
                for b in range(ids.shape[0])
            ]
        ).mean(0)
        torch.testing.assert_close(roles.scores(role)[0], expected.float(), atol=1e-5, rtol=0)
