"""The embedded real model, SmolLM2-135M-Instruct: Hugging Face's numbers, the hooked
identities, sensible completions, and the induction circuit known to be there.

Slow (a first load dequantises the GGUF file, ~20 s; later loads read the cache), but run in
CI. Every threshold below was measured on this model and would fail on a random one: the
last test shows it on a random model of the same shape.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from arrakis import HookedAutoConfig, HookedAutoModel, load_model
from arrakis.models.loading import embedded_model_path
from arrakis.tools import WriteReadAnalyzer
from tests.models import test_hooked_model as identities

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm() -> HookedAutoModel:
    return load_model()


@pytest.fixture(scope="module")
def tool(smollm) -> WriteReadAnalyzer:
    return WriteReadAnalyzer(smollm)


def induction_prompt(model: HookedAutoModel, half: int = 40, seed: int = 0) -> torch.Tensor:
    """BOS, then random tokens, then the same tokens again: [1, 1 + 2 * half]."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(100, model.cfg.d_vocab, (1, half), generator=generator)
    bos = torch.tensor([[model.tokenizer.bos_token_id]])
    return torch.cat([bos, tokens, tokens], dim=1)


def test_it_is_the_documented_shape(smollm):
    c = smollm.cfg
    assert (c.family, c.n_layers, c.n_heads, c.n_kv_heads, c.d_model, c.d_head) == ("llama", 30, 9, 3, 576, 64)
    assert smollm.tokenizer is not None


def test_logits_equal_a_plain_transformers_model_loaded_from_the_same_file(smollm):
    path = embedded_model_path()
    plain = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager", local_files_only=True
    ).eval()
    ids = smollm.to_tokens("The quick brown fox jumps over the lazy dog")
    with torch.no_grad():
        expected = plain(input_ids=ids).logits
    assert torch.equal(smollm(ids)[0].logits, expected)


@pytest.mark.parametrize(
    "check",
    [
        identities.test_raw_weights_reproduce_q_k_v_and_attn_out,
        identities.test_z_is_the_pattern_weighted_sum_of_values,
        identities.test_folded_weights_give_the_same_q_k_v_from_the_standardised_input,
        identities.test_residual_stream_adds_up,
        identities.test_patterns_are_causal_and_rows_sum_to_one,
    ],
    ids=lambda f: f.__name__.removeprefix("test_"),
)
def test_the_hooked_identities_hold(smollm, check):
    check(smollm)


def test_greedy_completion_is_sensible(smollm):
    ids = smollm.to_tokens("The capital of France is")
    with torch.no_grad():
        out = smollm.hf_model.generate(ids, max_new_tokens=3, do_sample=False)
    assert smollm.tokenizer.decode(out[0, ids.shape[1] :]).startswith(" Paris")


def test_repeated_random_tokens_are_predicted_far_better_the_second_time(smollm):
    ids = induction_prompt(smollm)
    logits = smollm(ids)[0].logits[0, :-1].log_softmax(-1)
    loss = -logits.gather(-1, ids[0, 1:, None])[:, 0]  # [pos - 1]
    first, second = loss[:40].mean().item(), loss[41:].mean().item()
    # measured: 14.5 nats on the first half, 3.6 on the repeat
    assert first > 10 and second < 0.4 * first


def test_it_has_previous_token_and_induction_heads(tool):
    roles = tool.head_roles()
    (prev_head, prev), *_ = roles.top("previous_token", 1)
    (ind_head, ind), *_ = roles.top("induction", 1)
    # measured: L16H0 0.86 previous-token; L18H6 0.41 induction (1/2 is the ceiling here)
    assert prev > 0.7 and ind > 0.3
    assert prev_head[0] < ind_head[0]


def test_top_previous_token_heads_feed_induction_heads_through_k_composition(tool):
    roles = tool.head_roles()
    comp = tool.composition_scores("K")
    (writer, _), *_ = roles.top("previous_token", 1)
    readers = comp.tensor[writer].flatten().topk(10).indices  # the 10 strongest K-readers
    n_heads = tool.cfg.n_heads
    induction = [float(roles.induction[i // n_heads, i % n_heads]) for i in readers.tolist()]
    # measured for L16H0: 5 of its 10 strongest readers score >= 0.25 on induction
    assert sum(score >= 0.25 for score in induction) >= 3
    circuit = tool.circuits("K", writer_role="previous_token", reader_role="induction", roles=roles)
    assert len(circuit) >= 2 and circuit[0].ratio > 3.0
    assert any(edge.writer == writer for edge in circuit)


def test_the_same_checks_fail_on_a_random_model_of_the_same_shape():
    torch.manual_seed(0)
    shape = dict(n_layers=30, n_heads=9, n_kv_heads=3, d_model=576, d_head=64, d_mlp=1536, d_vocab=49152)
    random_tool = WriteReadAnalyzer(HookedAutoModel(HookedAutoConfig("llama", **shape)))
    roles = random_tool.head_roles()
    assert roles.top("previous_token", 1)[0][1] < 0.3
    assert roles.top("induction", 1)[0][1] < 0.1


def test_read_heads_of_a_token_read_its_embedding_direction(tool, smollm):
    selection = tool.identify_read_heads(3, " Paris", channel="k")
    token = smollm.to_tokens(" Paris")[0, 0]
    u = smollm.hf_model.get_input_embeddings().weight[token].detach()
    assert selection.extra["dim"] == "token ' Paris'"
    assert selection.scores == tool.identify_read_heads(3, u, channel="k").scores
    with pytest.raises(ValueError, match=r"is 3 tokens \(\[7042, 1506, 284\]\); pass a string that is one token"):
        tool.identify_read_heads(3, " Parisians and")


def test_induction_flow_is_carried_by_induction_heads_and_knockout_hurts(tool, smollm):
    """src: the token after the first occurrence of A; dst: the second A. An induction head
    at dst attends to src and copies it, so the model predicts src's token next."""
    roles = tool.head_roles()
    ids = induction_prompt(smollm, half=30)
    shares, drops = [], []
    for k in (10, 15, 20, 25):
        src, dst = 1 + k + 1, 1 + 30 + k
        flow = tool.trace_information_flow(ids, src_pos=src, dst_pos=dst, n_layers=None, verify=k == 25)
        layer, head = flow.top_heads[0]
        assert roles.induction[layer, head] > 0.25  # measured: L18H6 or L18H7, 0.27-0.41
        carried = [(lf.layer, h.head, h.carried) for lf in flow.layers for h in lf.heads]
        by_induction = sum(c for layer, head, c in carried if roles.induction[layer, head] >= 0.2)
        shares.append(by_induction / sum(c for *_, c in carried))
        if flow.knockout:
            knock = flow.knockout
            assert knock["next_token"] == ids[0, src]  # the correct continuation is src's token
            drops.append(knock["all_layers"]["delta_p_next"] / knock["p_next"])
            # heads are redundant, but blocking one top head's edge alone already hurts
            # (measured: L18H6 -33% of p(next), L17H3 -28%)
            assert min(h["delta_p_next"] for h in knock["heads"]) / knock["p_next"] < -0.15
    # measured: induction heads carry 0.41-0.68 of the flow heads bring to dst
    assert sum(shares) / len(shares) > 0.4
    # measured: blocking dst -> src in every layer removes ~100% of p(next token)
    assert drops[0] < -0.5
