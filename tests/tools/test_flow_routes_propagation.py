"""The routes method (Information Flow Routes, docs/mathematics.md#information-flow) against a brute-force
implementation written here, over several layers: influence must propagate from src through
intermediate positions, layer after layer, not only along direct src -> dst edges.

The brute force (``brute_force_routes``) mirrors these conventions, all of them those of docs/mathematics.md:

- Parts of position i's residual stream after the attention of layer l (§8): the residual
  itself (``hook_resid_pre``), each head's ``A[h, i, j] v_j W_O[h]`` for every key j <= i
  (v_j is ``hook_v``, which includes b_V, so the value bias is counted once, inside each
  part, as the rows of A sum to 1), and b_O. The whole is y_i = resid_pre_i + attn_out_i.
  ``v_j W_O[h]`` and b_O are taken from Hugging Face's own output projection (o(z with only
  head h's slice set) - o(0), and o(0)), not from the library's stacked weights.
- Post-norms (§3): each attention part enters the residual as g * part / s_i, the norm's
  per-token scale s_i frozen at its clean value (RMS of ``ln1_post.hook_in``), so the parts
  still add up to ``hook_attn_out``. g * part is computed by Hugging Face's post-norm module
  itself (N(z) * rms(z) = g * z), never by the library's ``attn_post_norm``.
- Importance of a part z for the whole y (§8, after ALTI): max(||y||_1 - ||y - z||_1, 0),
  normalised over all parts of y (residual, every head x key, bias), so they sum to 1.
- Propagation (§8: "influence propagates from one-hot src"): f_{-1} = one-hot(src);
  f_l(i) = imp_res(i) f_{l-1}(i) + sum_h sum_j imp[h, i, j] f_{l-1}(j); b_O has no source.
  The MLP is position-local: in Ferrando & Voita's graph it is one more part of position i
  whose source is i itself, so with its importance and the residual's summing to 1 the
  influence of i passes through it unchanged; the brute force therefore applies nothing
  between layers (as ``arrakis.circuits.flow`` documents).
- What is reported per layer l (``LayerFlow``): flow = f_l(dst); residual_share =
  imp_res(dst); bias_share = imp_bias(dst); per head: attention A[h, dst, src], importance
  imp[h, dst, src], importance_total sum_j imp[h, dst, j], carried = score =
  sum_j imp[h, dst, j] f_{l-1}(j), contribution_norm ||A[h, dst, src] v_src W_O[h]||_2 (as
  it enters the residual). Routes: one hop per layer (a head hop j -> i or a residual hop
  i -> i), scored by the product of the hops' importances; the brute force scores every
  such path and keeps the best.
"""

from __future__ import annotations

import itertools
from operator import attrgetter

import pytest
import torch

from arrakis import HookedAutoConfig, HookedAutoModel
from arrakis.tools import WriteReadAnalyzer
from arrakis.tools.information_flow import RESIDUAL
from tests.conftest import VARIANTS, randomize_

TOL = 1e-5
ZERO = 1e-6  # what counts as no flow: float32 rounding of sums of exact zeros is ~1e-7
N_LAYERS = 4


def deep(variant: str, n_layers: int = N_LAYERS, seed: int = 0, **overrides) -> HookedAutoModel:
    """A randomised tiny model of a conftest variant, with ``n_layers`` layers."""
    family, base = VARIANTS[variant]
    base = {**base, "n_layers": n_layers}
    if "layer_types" in base:  # the variant's pattern of local and global layers, repeated
        base["layer_types"] = [base["layer_types"][i % len(base["layer_types"])] for i in range(n_layers)]
    torch.manual_seed(seed)
    model = HookedAutoModel(HookedAutoConfig(family, **{**base, **overrides}))
    return randomize_(model, seed)


def rows(d_vocab: int, n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, d_vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def l1(x: torch.Tensor) -> torch.Tensor:
    return x.abs().sum(-1)


@torch.no_grad()
def brute_force_routes(model: HookedAutoModel, ids: torch.Tensor, src: int, dst: int) -> dict:
    """Information Flow Routes by the definition (module docstring), in float64, one
    position at a time. Returns per layer: flow, per-head detail, and everything the paths
    and edges need."""
    cfg, hf = model.cfg, model.hf_model
    _, cache = model.run_with_cache(ids)
    blocks = attrgetter(model.adapter.layers)(hf)
    n_heads, d_head = cfg.n_heads, cfg.d_head
    f = torch.zeros(dst + 1, dtype=torch.float64)
    f[src] = 1.0
    out = {"flow": [], "direct": [], "heads": [], "residual_share": [], "bias_share": [], "imp": [], "f_prev": []}
    for layer in range(cfg.n_layers):
        block = blocks[layer]
        o_proj = attrgetter(model.adapter.o)(block)
        A = cache["pattern", layer][0, :, : dst + 1, : dst + 1].double()  # [head, q, k]
        v = cache["v", layer][0, : dst + 1]  # [k, head, d_head], expanded to query heads
        # v_j W_O[h] from Hugging Face's own output projection: only head h's slice of z set
        z = torch.zeros(dst + 1, n_heads, n_heads * d_head)
        for h in range(n_heads):
            z[:, h, h * d_head : (h + 1) * d_head] = v[:, h]
        b_O = o_proj(torch.zeros(1, n_heads * d_head))[0]
        value_out = (o_proj(z) - b_O).double()  # [k, head, D]
        b_O = b_O.double().expand(dst + 1, -1)  # one per query row
        scale = torch.ones(dst + 1, dtype=torch.float64)  # the frozen post-norm scale s_i
        if cfg.attn_post_norm:
            norm = attrgetter(model.adapter.attn_post_norm)(block)
            eps = getattr(norm, "eps", None) or norm.variance_epsilon

            def gained(x: torch.Tensor, norm=norm, eps=eps) -> torch.Tensor:
                """g * x, by the post-norm module itself: N(x) = g * x / rms(x)."""
                x = x.float()
                return (norm(x) * (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()).double()

            into = cache[f"blocks.{layer}.ln1_post.hook_in"][0, : dst + 1].double()
            scale = (into.pow(2).mean(-1) + eps).sqrt()
            value_out, b_O = gained(value_out), gained(b_O)
        residual = cache["resid_pre", layer][0, : dst + 1].double()
        y = residual + cache["attn_out", layer][0, : dst + 1].double()
        imp_res = torch.zeros(dst + 1, dtype=torch.float64)
        imp_bias = torch.zeros(dst + 1, dtype=torch.float64)
        imp = torch.zeros(n_heads, dst + 1, dst + 1, dtype=torch.float64)  # [head, i, j]
        for i in range(dst + 1):
            heads = A[:, i, : i + 1, None] * value_out[: i + 1].transpose(0, 1) / scale[i]  # [head, j, D]
            bias = b_O[i] / scale[i]
            # the parts add up to the whole: the decomposition is the model's
            torch.testing.assert_close(residual[i] + heads.sum((0, 1)) + bias, y[i], atol=1e-4, rtol=1e-4)
            prox_res = (l1(y[i]) - l1(y[i] - residual[i])).clamp_min(0)
            prox_bias = (l1(y[i]) - l1(y[i] - bias)).clamp_min(0)
            prox_heads = (l1(y[i]) - l1(y[i] - heads)).clamp_min(0)  # [head, j]
            total = prox_res + prox_bias + prox_heads.sum()
            imp_res[i], imp_bias[i], imp[:, i, : i + 1] = prox_res / total, prox_bias / total, prox_heads / total
        f_new = imp_res * f + torch.einsum("hij,j->i", imp, f)
        carried = torch.einsum("hj,j->h", imp[:, dst], f)
        out["heads"].append(
            [
                {
                    "attention": float(A[h, dst, src]),
                    "importance": float(imp[h, dst, src]),
                    "importance_total": float(imp[h, dst].sum()),
                    "carried": float(carried[h]),
                    "contribution_norm": float((A[h, dst, src] * value_out[src, h] / scale[dst]).norm()),
                }
                for h in range(n_heads)
            ]
        )
        out["flow"].append(float(f_new[dst]))
        # what a propagation that only follows direct src -> dst edges would give
        out["direct"].append(float(imp_res[dst] * (src == dst) + imp[:, dst, src].sum()))
        out["residual_share"].append(float(imp_res[dst]))
        out["bias_share"].append(float(imp_bias[dst]))
        out["imp"].append((imp_res, imp))
        out["f_prev"].append(f)
        f = f_new
    return out


def brute_force_paths(brute: dict, src: int, dst: int, n_paths: int) -> list[tuple[float, list[tuple]]]:
    """Every route src -> dst with one hop per layer, scored by the product of its hops'
    importances: the ``n_paths`` best, as (score, [(layer, head or RESIDUAL, source, target)])."""
    positions = range(src, dst + 1)
    n_heads = brute["imp"][0][1].shape[0]
    # per layer: the hops into each target as (weight, head, source)
    hops = []
    for imp_res, imp in brute["imp"]:
        into = {i: [(float(imp_res[i]), RESIDUAL, i)] for i in positions}
        for i, h, j in itertools.product(positions, range(n_heads), positions):
            if j <= i:
                into[i].append((float(imp[h, i, j]), h, j))
        hops.append(into)
    # the paths ending at each position, layer by layer: every extension of every kept path
    ending = {i: [(1.0, [])] if i == src else [] for i in positions}
    for layer, into in enumerate(hops):
        ending = {
            i: [
                (score * weight, [*path, (layer, head, j, i)])
                for weight, head, j in into[i]
                for score, path in ending[j]
                if weight > 0
            ]
            for i in positions
        }
        # keep the best n_paths per position: no loss, as scores are products of non-negatives
        # (a top path's prefix is a top path ending where it ends)
        ending = {i: sorted(paths, key=lambda p: -p[0])[:n_paths] for i, paths in ending.items()}
    return ending[dst]


def assert_matches_brute_force(flow, brute: dict, n_layers: int) -> None:
    assert list(flow) == pytest.approx(brute["flow"], abs=TOL)
    assert [lf.layer for lf in flow.layers] == list(range(n_layers))
    for lf, heads, res, bias in zip(
        flow.layers, brute["heads"], brute["residual_share"], brute["bias_share"], strict=True
    ):
        assert lf.residual_share == pytest.approx(res, abs=TOL)
        assert lf.bias_share == pytest.approx(bias, abs=TOL)
        for got, want in zip(lf.heads, heads, strict=True):
            assert got.score == pytest.approx(want["carried"], abs=TOL)
            for key, value in want.items():
                assert getattr(got, key) == pytest.approx(value, abs=TOL, rel=TOL), (lf.layer, got.head, key)


# The families' variants that change the conventions: LayerNorm with biases and learned
# positions (gpt2), grouped-query attention with q/k/v biases (llama-mqa-bias), a parallel
# residual (gpt-neox), no score scaling and local layers (gpt-neo), post-norms with
# soft-capping and local layers (gemma2), post-norms with per-head q/k norms (gemma3),
# post-norms only, attention reading the residual itself (olmo2).
ROUTE_VARIANTS = ["gpt2", "llama-mqa-bias", "gpt-neox", "gpt-neo", "gemma2", "gemma3", "olmo2"]


@pytest.mark.parametrize("variant", ROUTE_VARIANTS)
def test_routes_equal_the_brute_force_over_every_layer(variant):
    model = deep(variant)
    ids = rows(model.cfg.d_vocab, 12, seed=3)
    src, dst = 2, 10
    brute = brute_force_routes(model, ids, src, dst)
    flow = WriteReadAnalyzer(model).trace_information_flow(ids, src_pos=src, dst_pos=dst, method="routes")
    assert len(flow) == N_LAYERS
    assert_matches_brute_force(flow, brute, N_LAYERS)
    # the numbers are not trivial: influence reached dst, and after the first layer it came
    # also through intermediate positions, so following direct src -> dst edges alone (a
    # one-layer propagation) gives other values, by far more than the tolerance
    assert min(brute["flow"][1:]) > 1e-3  # (gemma2's and gpt-neo's local layers: dst - src > window)
    for layer in range(1, N_LAYERS):
        assert abs(brute["flow"][layer] - brute["direct"][layer]) > 100 * TOL, layer
        assert abs(flow[layer] - brute["direct"][layer]) > 100 * TOL, layer
    assert flow[0] == pytest.approx(brute["direct"][0], abs=TOL)  # layer 0: only direct edges exist


@pytest.mark.parametrize("variant", ["gpt2", "gemma2"])
def test_routes_paths_are_the_best_one_hop_per_layer_routes(variant):
    model = deep(variant)
    ids = rows(model.cfg.d_vocab, 9, seed=5)
    src, dst, n_paths = 1, 7, 4
    brute = brute_force_routes(model, ids, src, dst)
    best = brute_force_paths(brute, src, dst, n_paths)
    flow = WriteReadAnalyzer(model).trace_information_flow(
        ids, src_pos=src, dst_pos=dst, method="routes", n_paths=n_paths
    )
    assert [p.score for p in flow.paths] == pytest.approx([score for score, _ in best], abs=TOL, rel=TOL)
    scores = [score for score, _ in best]
    for k, (path, (score, hops)) in enumerate(zip(flow.paths, best, strict=True)):
        separated = all(abs(score - other) > 1e-6 for i, other in enumerate(scores) if i != k)
        if separated:  # ties may come in either order
            assert [(hop.layer, hop.head, hop.source, hop.target) for hop in path.hops] == hops
    # the best route goes through a position other than src and dst, or stays in the
    # residual: either way it has one hop per layer, chained
    assert all(len(p.hops) == N_LAYERS for p in flow.paths)


@pytest.mark.parametrize("variant", ["gpt2", "gemma2"])
def test_routes_edges_are_every_flow_above_the_threshold(variant):
    model = deep(variant)
    ids = rows(model.cfg.d_vocab, 10, seed=6)
    src, dst, min_flow = 2, 8, 0.01
    brute = brute_force_routes(model, ids, src, dst)
    expected = {}
    for layer, ((imp_res, imp), f_prev) in enumerate(zip(brute["imp"], brute["f_prev"], strict=True)):
        for i in range(src, dst + 1):
            if imp_res[i] * f_prev[i] >= min_flow:
                expected[(layer, RESIDUAL, i, i)] = float(imp_res[i] * f_prev[i])
            for h, j in itertools.product(range(imp.shape[0]), range(i + 1)):
                if imp[h, i, j] * f_prev[j] >= min_flow:
                    expected[(layer, h, j, i)] = float(imp[h, i, j] * f_prev[j])
    flow = WriteReadAnalyzer(model).trace_information_flow(
        ids, src_pos=src, dst_pos=dst, method="routes", min_edge_flow=min_flow
    )
    got = {(e.layer, e.head, e.source[1], e.target[1]): e.flow for e in flow.edges}
    borderline = {k for k, v in {**expected, **got}.items() if abs(v - min_flow) < TOL}
    assert set(got) - borderline == set(expected) - borderline
    for key in set(got) & set(expected):
        assert got[key] == pytest.approx(expected[key], abs=TOL)
    assert any(key[0] >= 1 and key[2] not in (src,) and key[1] != RESIDUAL for key in expected)  # multi-hop edges


def test_influence_reaches_dst_only_through_intermediate_positions_beyond_the_window():
    """Mistral with a window of 3 (each hop moves at most 2 positions) and dst - src = 5:
    no head has a direct dst <- src edge in any layer, so a one-layer (direct-edge)
    propagation gives 0 everywhere; influence needs three hops through intermediate
    positions, so it reaches dst after layer 2 and not before. The library agrees with the
    brute force on every layer, zeros included."""
    model = deep("mistral", sliding_window=3)
    ids = rows(model.cfg.d_vocab, 10, seed=7)
    src, dst = 3, 8
    brute = brute_force_routes(model, ids, src, dst)
    flow = WriteReadAnalyzer(model).trace_information_flow(ids, src_pos=src, dst_pos=dst, method="routes")
    assert_matches_brute_force(flow, brute, N_LAYERS)
    # "zero" up to float32 rounding: masked keys leave ~1e-7 on some CPUs (7.5e-8 seen), four
    # orders of magnitude below what three hops carry
    assert all(abs(direct) < ZERO for direct in brute["direct"])  # no direct edge: outside every window
    assert all(abs(h.attention) < ZERO for lf in flow.layers for h in lf.heads)
    assert abs(flow[0]) < ZERO and abs(flow[1]) < ZERO  # one and two hops cannot reach dst
    assert flow[2] > 1e-3 and flow[3] > 1e-3  # three can
    # and the best route indeed uses heads at three different layers, hopping forward
    best = flow.paths[0]
    assert best.hops[0].source == src and best.hops[-1].target == dst
    assert len({hop.layer for hop in best.hops if hop.head != RESIDUAL}) >= 3
    assert all(hop.target - hop.source <= 2 for hop in best.hops)
