"""The WriteReadAnalyzer: which heads write to the residual stream, which read what was
written, how heads compose, and which roles they play.

The mathematics lives in ``arrakis.circuits`` (docs/mathematics.md); this module checks input,
gathers weights and activations from the model, and wraps numbers in result objects.

>>> import torch
>>> from arrakis import HookedAutoConfig, HookedAutoModel
>>> from arrakis.tools import WriteReadAnalyzer
>>> torch.manual_seed(0) and None
>>> write_read = WriteReadAnalyzer(HookedAutoModel(HookedAutoConfig("llama")))
>>> heads = write_read.identify_write_heads(0)
>>> heads.covered() >= 0.8 and all(layer == 0 for layer, _ in heads)
True
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from torch import Tensor

from arrakis.circuits.composition import MODES, check_mode, composition_baseline, composition_scores
from arrakis.models import HookedAutoModel
from arrakis.tools import data_stats, patching, task_circuits
from arrakis.tools.base import (
    BaseInterpretabilityTool,
    check_choice,
    check_direction,
    check_layer,
    check_positive_int,
    check_threshold,
)
from arrakis.tools.circuit_filter import check_filters, circuit_edges
from arrakis.tools.circuit_verify import verify_edges
from arrakis.tools.data_stats import fingerprint
from arrakis.tools.flow_question import check_trace_options
from arrakis.tools.information_flow import InformationFlow, resolve_layers, resolve_metric, resolve_positions, trace
from arrakis.tools.read_heads import CHANNELS, qk_notes, read_scores
from arrakis.tools.result_cache import ResultCache
from arrakis.tools.results import Circuit, CompositionScores, HeadRoles, HeadSelection, LogitAttribution
from arrakis.tools.task_means import attribute
from arrakis.tools.write_heads import answer_writers, weight_write_scores

logger = logging.getLogger(__name__)


class WriteReadAnalyzer(BaseInterpretabilityTool):
    """Write heads, read heads, composition scores, head roles and circuits of one model."""

    name = "write_read"
    patch_heads = patching.patch_heads  # activation patching of every head on a task (arrakis.tools.patching)
    task_circuit = task_circuits.task_circuit  # every edge of a task scored, circuits run exactly

    def __init__(self, model: HookedAutoModel) -> None:
        super().__init__(model)
        self.cache = ResultCache()  # composition scores, and data-based results by the prompts' fingerprint

    def clear_cache(self) -> None:
        """Forget every remembered result (composition scores, write scores, head roles)."""
        self.cache.clear()

    # -- write heads -------------------------------------------------------------------------

    def identify_write_heads(
        self,
        layer_idx: int,
        threshold: float = 0.8,
        *,
        input_ids: Any = None,
        attention_mask: Tensor | None = None,
        direction: Tensor | None = None,
        batch_size: int | None = None,
        token: int | str | None = None,
        pos: int | None = None,
        foil: int | str | None = None,
    ) -> HeadSelection:
        """The heads of a layer that make up ``threshold`` of its writing (docs/mathematics.md#write-heads).

        With ``token`` (and ``input_ids``: one prompt): the heads that write that token's logit
        at ``pos`` by signed direct logit attribution (``logit_attribution``); shares are over
        the writers (positive heads), and the suppressors stand beside them in
        ``extra["suppressors"]``, with every head's signed score in ``scores``. ``pos``
        (default: the last position) and ``foil`` go with ``token`` only. With a task
        (``input_ids=task``, no ``token``): the writers of each example's answer, by the mean attribution.

        Scores: ||OV[h]||_F from the folded weights; with ``input_ids`` (ids with an optional
        ``attention_mask``, or a dataset of prompts; see ``write_scores``), the mean size of
        what each head actually writes, ||z[h] W_O[h]||, over real tokens; with
        ``direction`` u, only the part along u (||OV[h] u^|| from weights, mean
        |<z[h] W_O[h], u^>| from data). Data-based scores of all layers come from one pass
        and are reused for the other layers of the same prompts.
        """
        layer = check_layer(layer_idx, self.cfg.n_layers)
        threshold = check_threshold(threshold)
        selection = answer_writers(
            self.model, layer, threshold, input_ids, attention_mask, direction, batch_size, token, pos, foil
        )
        if selection is not None:
            return selection
        u = None if direction is None else check_direction(direction, self.cfg.d_model)
        if input_ids is None:
            if attention_mask is not None:
                raise ValueError("attention_mask goes with input_ids; without them, scores come from the weights")
            scores, method = weight_write_scores(self.model, layer, u), "weights"
        else:
            scores = self.write_scores(input_ids, attention_mask, direction=u, batch_size=batch_size)[layer]
            method = "data"
        return HeadSelection.from_scores(layer, scores, threshold, method + ("-direction" if u is not None else ""))

    def write_scores(
        self,
        input_ids: Any,
        attention_mask: Tensor | None = None,
        *,
        direction: Tensor | None = None,
        batch_size: int | None = None,
    ) -> Tensor:
        """What every head writes on real prompts: [n_layers, n_heads], the mean over real
        (unpadded) tokens of ||z[h] W_O[h]||_2, or of |<z[h] W_O[h], u^>| along ``direction``.

        ``input_ids``: token ids [batch, pos] with an optional ``attention_mask`` (padding
        left or right), or a dataset: a list of strings or id rows, or any iterable of them,
        run ``batch_size`` prompts at a time (progress shown). One forward pass per batch
        serves all layers; the result is kept for the same prompts.
        """
        u = None if direction is None else check_direction(direction, self.cfg.d_model)
        batches = data_stats.prompt_batches(self.model, input_ids, attention_mask, batch_size)
        key = fingerprint(batches, None if u is None else u.tolist())
        return self._remembered("write", key, lambda: data_stats.write_scores(self.model, batches, u)).clone()

    def _remembered(self, kind: str, key: str, compute: Callable[[], Any]) -> Any:
        """A data-based result for the same prompts, computed once while the weights stay the same."""
        return self.cache.get(kind, key, self.model.head_weights(folded=True), compute)

    def logit_attribution(
        self,
        input_ids: Any,
        token: int | str | None = None,
        pos: int | None = None,
        foil: int | str | None = None,
        attention_mask: Tensor | None = None,
        *,
        batch_index: int | None = None,
    ) -> LogitAttribution:
        """Which heads write ``token``'s logit at ``pos`` (default: the last position), signed:
        direct logit attribution of every head, every layer's b_O and MLP, the embeddings and
        the biases, with the final norm's per-token scale frozen at its clean value
        (docs/mathematics.md#direct-logit-attribution). With ``foil``, the logit difference token -
        foil. The contributions
        add up to the logit (difference). Positive heads write the token (``writers``),
        negative ones suppress it (``suppressors``). A padded batch: pick a prompt with
        ``batch_index`` and pass its ``attention_mask``; ``pos`` counts its real tokens. A task
        (``arrakis.tasks.Task``, no token/pos/foil): the mean over its examples, each example's
        answer (- foil) at its own dst.
        """
        return attribute(self.model, input_ids, token, pos, foil, attention_mask, batch_index)

    # -- read heads --------------------------------------------------------------------------

    def identify_read_heads(
        self, layer_idx: int, dim_idx: Any, threshold: float = 0.8, *, channel: str = "qkv"
    ) -> HeadSelection:
        """The heads of a layer that make up ``threshold`` of its reading of ``dim_idx``.

        ``dim_idx``: an int i (the residual basis direction e_i), a direction tensor [d_model],
        a ``(layer, head)`` writer in an earlier layer (its output subspace, scored by
        composition), or a string token (its embedding direction; needs a tokenizer).
        ``channel``: "q", "k", "v", or "qkv" (root mean square of the three).
        """
        layer = check_layer(layer_idx, self.cfg.n_layers)
        threshold = check_threshold(threshold)
        channel = check_choice(channel, CHANNELS, "channel")
        scores, method, baseline, notes, extra = read_scores(self.model, layer, dim_idx, channel)
        return HeadSelection.from_scores(layer, scores, threshold, method, baseline=baseline, notes=notes, extra=extra)

    # -- composition -------------------------------------------------------------------------

    def composition_scores(self, mode: str = "K", *, folded: bool = True) -> CompositionScores:
        """Q-, K- or V-composition scores of every writer -> reader pair (docs/mathematics.md#composition).

        [n_layers, n_heads, n_layers, n_heads], zero where the writer's layer is not
        earlier; ``.baseline`` is 1/sqrt(d_model). Computed once per mode and weights.
        """
        mode, folded = check_mode(mode), bool(folded)
        weights = self.model.head_weights(folded=folded)

        def compute() -> CompositionScores:
            logger.info("computing %s-composition scores", mode)
            W_Q, W_K = weights.qk_circuit()  # per-head q/k norm gains folded in, where there are any
            scores = composition_scores(W_Q, W_K, weights.W_V, weights.W_O, (mode,))[mode]
            return CompositionScores(
                scores.cpu(),
                mode=mode,
                folded=folded,
                baseline=composition_baseline(self.cfg.d_model),
                notes=qk_notes(self.model) if mode in ("Q", "K") else [],
            )

        return self.cache.get("composition", (mode, folded), weights, compute)

    # -- information flow -----------------------------------------------------------------

    def trace_information_flow(
        self,
        input_ids: Any,
        src_token: int | str | None = None,
        dst_token: int | str | None = None,
        n_layers: int | None = None,
        *,
        src_pos: int | None = None,
        dst_pos: int | None = None,
        layers: list[int] | None = None,
        method: str = "attribution",
        target: int | str | None = None,
        foil: int | str | None = None,
        metric: Callable[[Tensor], Tensor] | None = None,
        top_k: int = 5,
        n_paths: int = 5,
        min_edge_flow: float = 0.01,
        verify: bool | str = False,
        batch_index: int | None = None,
        attention_mask: Tensor | None = None,
        steps: int = 5,
    ) -> InformationFlow:
        """Which heads carry information from position src to position dst, in which layers,
        along which routes, and how much it matters to what the model predicts at dst
        (docs/mathematics.md#information-flow).

        dst is the last occurrence of ``dst_token``, src the last occurrence of ``src_token``
        before it (token ids, or strings where the model has a tokenizer); or give
        ``src_pos``/``dst_pos``. Layers: all by default; the first ``n_layers``, or ``layers``.

        The metric m is dst's prediction: log p(target | dst), target the clean top
        prediction unless ``target`` names a token; with ``foil``, logit(target) -
        logit(foil); or ``metric(logits at dst [d_vocab]) -> scalar tensor``.

        ``method="attribution"`` (default): for every head, the estimated drop in m when its
        dst <- src edge is knocked out (the row renormalised; Geva et al. 2023), to first
        order from one forward and one backward pass (attribution patching); the result is
        the list of per-layer sums f_l, with ``head_scores``, ``top_heads`` (positive: the
        head carries what m needs), ``suppressors`` and routes src -> ... -> dst ranked by
        their weakest edge. ``method="integrated"``: the gradient integrated along each scaled
        knockout A + alpha dA (``steps`` Gauss-Legendre nodes), one path per head, per layer and for
        all layers, so each number estimates its own knockout, also where log p is saturated;
        ``HeadFlow.joint_share`` is the head's share of the all-layers drop. ``method="routes"``:
        Information Flow Routes (Ferrando & Voita 2024), for comparison.

        ``verify=True``: exact knockouts (batched) of the top heads', each layer's and all layers'
        edges (the per-layer values are then exact, estimates beside); ``verify="all"``: every head's.

        A padded batch: pick the prompt with ``batch_index`` and pass its ``attention_mask``;
        the prompt is traced without its padding, so the result's positions count its real
        tokens and its numbers are those of the prompt run alone.

        A task (``arrakis.tasks.Task`` with src, in place of ``input_ids``; no positions or
        metric): each example traced at its own src and dst with the task's metric, and the
        head scores and per-layer values (exact ones too) averaged; ``n_examples`` says over
        how many. Routes are per example: ``method="routes"`` is refused.
        """
        ids, src, dst = resolve_positions(
            self.model, input_ids, src_token, dst_token, src_pos, dst_pos, batch_index, attention_mask
        )
        chosen = resolve_layers(n_layers, layers, self.cfg.n_layers)
        method, top_k, n_paths, steps = check_trace_options(method, top_k, n_paths, min_edge_flow, verify, steps)
        chosen_metric = resolve_metric(self.model, target, foil, metric, ids)
        return trace(
            self.model,
            ids,
            src,
            dst,
            chosen,
            chosen_metric,
            method=method,
            top_k=top_k,
            n_paths=n_paths,
            min_edge_flow=min_edge_flow,
            verify=verify,
            steps=steps,
        )

    # -- head roles --------------------------------------------------------------------------

    def head_roles(
        self,
        input_ids: Any = None,
        *,
        attention_mask: Tensor | None = None,
        batch_size: int | None = None,
        seq_len: int = 32,
        n_repeats: int = 2,
        n_sequences: int = 4,
        seed: int = 0,
    ) -> HeadRoles:
        """Previous-token, duplicate-token and induction scores of every head (docs/mathematics.md#head-roles).

        By default on ``n_sequences`` sequences of ``seq_len`` random tokens repeated
        ``n_repeats`` times (after a BOS token where the tokenizer has one); or on
        ``input_ids`` (with an optional ``attention_mask``), or a dataset of prompts run
        ``batch_size`` at a time. Padded positions count for nothing; "previous" means the
        previous real token. Scores are kept for the same probe, so ``circuits`` reuses them.
        """
        if input_ids is None:
            if attention_mask is not None:
                raise ValueError("attention_mask goes with input_ids; the default probe has no padding")
            input_ids, source = data_stats.random_probe(self.model, seq_len, n_repeats, n_sequences, seed)
        else:
            source = "input_ids"
        batches = data_stats.prompt_batches(self.model, input_ids, attention_mask, batch_size)
        computed = self._remembered("roles", fingerprint(batches), lambda: data_stats.role_scores(self.model, batches))
        scores = {role: value.clone() for role, value in computed.items()}
        n_tokens = max(ids.shape[1] for ids, _ in batches)
        n_sequences = sum(ids.shape[0] for ids, _ in batches)
        return HeadRoles(**scores, n_tokens=n_tokens, n_sequences=n_sequences, source=source)

    # -- circuits ----------------------------------------------------------------------------

    def circuits(
        self,
        mode: str = "K",
        *,
        writer_role: str | None = None,
        reader_role: str | None = None,
        role_threshold: float = 0.3,
        min_ratio: float = 2.0,
        top_k: int | None = 20,
        roles: HeadRoles | None = None,
        folded: bool = True,
        verify: bool = False,
        probe: Any = None,
        attention_mask: Tensor | None = None,
        n_null: int = 8,
    ) -> Circuit:
        """Writer -> reader edges scoring at least ``min_ratio`` x the baseline, with roles.

        ``circuits("K", writer_role="previous_token", reader_role="induction")`` is the
        induction circuit: previous-token heads whose output induction heads read as keys.
        A role filter keeps heads scoring at least ``role_threshold`` for that role.

        ``verify=True`` tests each edge by path patching (docs/mathematics.md#composition): the writer's output is
        replaced by its mean over the probe (``probe``: ids with an optional ``attention_mask``,
        or a dataset; by default the repeated random tokens of ``head_roles``) in the reader's
        Q, K or V input only, and what the reader does differently is measured (Q/K: mean KL
        of its attention rows; V: relative change of its output). Each edge gets
        ``causal_effect`` and ``ratio_to_null``, against ``n_null`` random writer -> reader
        pairs of the same layers; ``circuit.summary()`` says how many held.
        """
        mode = check_mode(mode)
        top_k = check_filters(writer_role, reader_role, role_threshold, min_ratio, top_k)
        if not isinstance(verify, bool):
            raise TypeError(f"verify must be True or False, got {type(verify).__name__} {verify!r}")
        runs = self.model.hf_model is not None  # weights-only models have no forward pass
        batches = None
        if verify:
            n_null = check_positive_int(n_null, "n_null")
            if not runs:
                self.model.require_forward()
            if probe is not None:  # checked before anything runs (None: head_roles' default probe)
                batches = data_stats.prompt_batches(self.model, probe, attention_mask, None, "probe")
            elif attention_mask is not None:
                raise ValueError("attention_mask goes with probe; the default probe has no padding")
        if roles is None and (writer_role or reader_role or runs):
            roles = self.head_roles()  # weights-only: only when a role filter asks for them (and fails clearly)
        comp = self.composition_scores(mode, folded=folded)
        edges, notes = circuit_edges(
            comp,
            roles,
            writer_role=writer_role,
            reader_role=reader_role,
            role_threshold=role_threshold,
            min_ratio=min_ratio,
            top_k=top_k,
        )
        verification = None
        if verify and edges:
            if batches is None:  # head_roles' default probe
                batches = data_stats.prompt_batches(self.model, data_stats.random_probe(self.model)[0], None, None)
            ids, mask = batches[0]
            verification = verify_edges(self.model, ids, mask, edges, mode, n_null=n_null)
        return Circuit(
            edges,
            notes=notes,
            mode=mode,
            baseline=comp.baseline,
            min_ratio=min_ratio,
            writer_role=writer_role,
            reader_role=reader_role,
            role_threshold=role_threshold if (writer_role or reader_role) else None,
            verification=verification,
        )


__all__ = ["CHANNELS", "MODES", "WriteReadAnalyzer"]
