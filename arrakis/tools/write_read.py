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
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from arrakis.circuits import heads as head_math
from arrakis.circuits.composition import MODES, check_mode, composition_baseline, composition_scores
from arrakis.circuits.roles import ROLES, repeated_random_tokens
from arrakis.models import HookedAutoModel
from arrakis.models.batching import iter_batches
from arrakis.tools import data_stats
from arrakis.tools.base import (
    BaseInterpretabilityTool,
    check_choice,
    check_direction,
    check_index,
    check_layer,
    check_positive_int,
    check_threshold,
)
from arrakis.tools.circuit_verify import verify_circuit
from arrakis.tools.data_stats import fingerprint
from arrakis.tools.flow_question import one_prompt, token_id
from arrakis.tools.information_flow import (
    METHODS,
    InformationFlow,
    resolve_layers,
    resolve_metric,
    resolve_positions,
    trace,
)
from arrakis.tools.logit_attribution import logit_attribution, resolve_pos
from arrakis.tools.results import Circuit, CircuitEdge, CompositionScores, HeadRoles, HeadSelection
from arrakis.tools.results.attribution import LogitAttribution

logger = logging.getLogger(__name__)

CHANNELS = ("q", "k", "v", "qkv")


class WriteReadAnalyzer(BaseInterpretabilityTool):
    """Write heads, read heads, composition scores, head roles and circuits of one model."""

    name = "write_read"

    def __init__(self, model: HookedAutoModel) -> None:
        super().__init__(model)
        self._composition: dict[tuple[str, bool], tuple[object, CompositionScores]] = {}
        self._data: dict[tuple, Any] = {}  # data-based results by prompts' fingerprint

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
        pos: int = -1,
        foil: int | str | None = None,
    ) -> HeadSelection:
        """The heads of a layer that make up ``threshold`` of its writing (docs/mathematics.md#write-heads).

        With ``token`` (and ``input_ids``: one prompt): the heads that write that token's logit
        at ``pos`` by signed direct logit attribution (``logit_attribution``); shares are over
        the writers (positive heads), and the suppressors stand beside them in
        ``extra["suppressors"]``, with every head's signed score in ``scores``.

        Scores: ||OV[h]||_F from the folded weights; with ``input_ids`` (ids with an optional
        ``attention_mask``, or a dataset of prompts; see ``write_scores``), the mean size of
        what each head actually writes, ||z[h] W_O[h]||, over real tokens; with
        ``direction`` u, only the part along u (||OV[h] u^|| from weights, mean
        |<z[h] W_O[h], u^>| from data). Data-based scores of all layers come from one pass
        and are reused for the other layers of the same prompts.
        """
        layer = check_layer(layer_idx, self.cfg.n_layers)
        threshold = check_threshold(threshold)
        if token is not None:
            if input_ids is None:
                raise ValueError("token= attributes a logit on a prompt: pass input_ids too")
            if direction is not None:
                raise ValueError("give token= or direction=, not both")
            return self._token_writers(layer, threshold, input_ids, attention_mask, token, pos, foil)
        u = None if direction is None else check_direction(direction, self.cfg.d_model)
        if input_ids is None:
            if attention_mask is not None:
                raise ValueError("attention_mask goes with input_ids; without them, scores come from the weights")
            weights = self.model.head_weights(folded=True)
            W_V, W_O = weights.W_V[layer].float(), weights.W_O[layer].float()  # stacks may be bfloat16
            scores = head_math.ov_norms(W_V, W_O) if u is None else head_math.ov_along(W_V, W_O, u)
            method = "weights"
        else:
            scores = self.write_scores(input_ids, attention_mask, direction=u, batch_size=batch_size)[layer]
            method = "data"
        return self._select(layer, scores, threshold, method + ("-direction" if u is not None else ""))

    def _token_writers(self, layer, threshold, input_ids, attention_mask, token, pos, foil) -> HeadSelection:
        attribution = self.logit_attribution(input_ids, token, pos, foil, attention_mask)
        signed = attribution.heads[layer]
        selection = self._select(layer, signed.clamp_min(0), threshold, "logit-attribution")
        selection.scores = signed.tolist()  # signed: the suppressors keep their sign
        selection.extra = {
            **(selection.extra or {}),
            "token": attribution.token,
            "foil": attribution.foil,
            "pos": attribution.pos,
            "suppressors": [h for h in attribution.suppressors if h[0] == layer],
        }
        selection.notes.append("scores are signed direct logit attributions; shares are over the positive ones")
        return selection

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
        batches = self._batches(input_ids, attention_mask, batch_size)
        key = ("write", fingerprint(batches, None if u is None else u.tolist()))
        return self._remembered(key, lambda: data_stats.write_scores(self.model, batches, u)).clone()

    def _batches(self, input_ids: Any, attention_mask: Any, batch_size: int | None) -> list:
        if batch_size is not None:
            batch_size = check_positive_int(batch_size, "batch_size")
        return list(iter_batches(self.model, input_ids, attention_mask, batch_size))

    def _remembered(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """A data-based result for the same prompts, computed once while the weights stay the
        same (the last few results are kept)."""
        weights = self.model.head_weights(folded=True)  # a new object whenever a parameter changes
        entry = self._data.get(key)
        if entry is None or entry[0] is not weights:
            entry = (weights, compute())
            self._data[key] = entry
            while len(self._data) > 8:
                self._data.pop(next(iter(self._data)))
        return entry[1]

    def logit_attribution(
        self,
        input_ids: Any,
        token: int | str,
        pos: int = -1,
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
        ``batch_index`` and pass its ``attention_mask``; ``pos`` counts its real tokens.
        """
        ids = one_prompt(self.model, input_ids, attention_mask, batch_index)
        target = token_id(self.model, token, "token")
        other = None if foil is None else token_id(self.model, foil, "foil")
        if other == target:
            raise ValueError(f"foil {foil!r} is the same token as {token!r} (id {target}); pick another foil")
        position = resolve_pos(pos, ids.shape[1])
        return logit_attribution(self.model, ids, target, position, other)

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
        channels = ("q", "k", "v") if channel == "qkv" else (channel,)
        if isinstance(dim_idx, tuple):
            per_channel, baseline, what = self._read_writer(layer, dim_idx, channels)
            method = f"composition-{channel}"
        else:
            u, what = self._read_direction(dim_idx)
            weights = self.model.head_weights(folded=True)
            W_Q, W_K = weights.qk_circuit()  # q/k norm gains folded in, where there are any
            by_channel = {"q": W_Q, "k": W_K, "v": weights.W_V}
            per_channel = {c: head_math.read_scores(by_channel[c][layer].float(), u) for c in channels}
            baseline, method = 1.0, f"direction-{channel}"
        stacked = torch.stack([per_channel[c] for c in channels])  # [channel, head]
        scores = stacked.pow(2).mean(0).sqrt()  # root mean square over channels
        notes = self._qk_notes() if set(channels) & {"q", "k"} else []
        if self.cfg.n_kv_heads < self.cfg.n_heads and set(channels) & {"k", "v"} and method.startswith("direction"):
            notes.append(
                f"grouped-query attention: {self.cfg.group_size} query heads share each K/V head, "
                "so their K and V scores are equal"
            )
        extra = {"dim": what, "channel": channel, "per_channel": {c: per_channel[c].tolist() for c in channels}}
        return self._select(layer, scores, threshold, method, baseline=baseline, notes=notes, extra=extra)

    def _read_direction(self, dim_idx: Any) -> tuple[Tensor, str]:
        d_model = self.cfg.d_model
        if isinstance(dim_idx, str):
            return self._token_direction(dim_idx), f"token {dim_idx!r}"
        if isinstance(dim_idx, Tensor) and dim_idx.dim() == 0 and not dim_idx.dtype.is_floating_point:
            dim_idx = int(dim_idx)
        if isinstance(dim_idx, Tensor):
            return check_direction(dim_idx, d_model, "dim_idx"), "direction"
        if not isinstance(dim_idx, numbers.Integral) or isinstance(dim_idx, bool):
            hint = ""
            if isinstance(dim_idx, (list, range)) and len(dim_idx) == 2:
                hint = f"; for the output of head L{dim_idx[0]}H{dim_idx[1]} pass the tuple {tuple(dim_idx)!r}"
            raise TypeError(
                f"dim_idx must be an int 0-{d_model - 1} (a residual dimension), a (layer, head) tuple "
                f"(a writer head's output), a direction tensor of size {d_model} or a one-token string; "
                f"got {type(dim_idx).__name__} {dim_idx!r}{hint}"
            )
        i = check_index(dim_idx, d_model, "dim_idx", "residual dimensions (d_model)")
        basis = torch.zeros(d_model)
        basis[i] = 1.0
        return basis, f"e_{i}"

    def _token_direction(self, token: str) -> Tensor:
        tokenizer = self.model.tokenizer
        if tokenizer is None:
            raise ValueError(
                f"dim_idx {token!r} is a token, but this model has no tokenizer; pass an int "
                "(a residual dimension), a direction tensor or a (layer, head) writer"
            )
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"dim_idx {token!r} is {len(ids)} tokens ({ids}); pass a string that is one token")
        return self.model.input_embeddings()[ids[0]].float()

    def _read_writer(
        self, layer: int, writer: tuple, channels: tuple[str, ...]
    ) -> tuple[dict[str, Tensor], float, str]:
        if len(writer) != 2:
            raise ValueError(f"a writer head is a (layer, head) pair, got {writer!r}")
        if layer == 0:
            raise ValueError("layer 0 has no earlier layer to read a writer head from; use a direction instead")
        w_layer = check_index(writer[0], layer, "writer layer", f"layers before layer {layer}")
        w_head = check_index(writer[1], self.cfg.n_heads, "writer head", "heads per layer")
        w = self.model.head_weights(folded=True)
        W_Q, W_K = w.qk_circuit()
        pick = [w_layer, layer]  # a two-layer stack: the writer's layer, then the reader's
        scores = composition_scores(W_Q[pick], W_K[pick], w.W_V[pick], w.W_O[pick], tuple(c.upper() for c in channels))
        per_channel = {c: scores[c.upper()][0, w_head, 1] for c in channels}
        return per_channel, composition_baseline(self.cfg.d_model), f"writer L{w_layer}H{w_head}"

    def _qk_notes(self) -> list[str]:
        """What a weight-based Q/K score leaves out (docs/mathematics.md#conventions)."""
        notes = []
        if self.cfg.positional == "rotary":
            notes.append("Q/K scores use the bilinear QK circuit: rotary's position-dependent rotation is left out")
        if self.cfg.qk_norm:
            notes.append(
                "per-head q/k norms: their gains are folded into QK = W_Q diag(g_q g_k) W_K^T (TransformerLens "
                "ignores them); their per-token scales are positive and cancel in these normalised scores"
            )
        config = self.model.hf_model.config if self.model.hf_model is not None else self.model.checkpoint.config
        if getattr(config, "attn_logit_softcapping", None):
            notes.append("attention logits are soft-capped (tanh) in the forward pass; weight scores leave it out")
        return notes

    def _select(
        self,
        layer: int,
        scores: Tensor,
        threshold: float,
        method: str,
        *,
        baseline: float | None = None,
        notes: list[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> HeadSelection:
        scores = scores.detach().float().cpu()
        chosen = head_math.select_by_share(scores, threshold)
        return HeadSelection(
            [(layer, h) for h in chosen],
            layer=layer,
            scores=scores.tolist(),
            shares=head_math.shares(scores).tolist(),
            method=method,
            threshold=threshold,
            baseline=baseline,
            notes=notes,
            extra=extra,
        )

    # -- composition -------------------------------------------------------------------------

    def composition_scores(self, mode: str = "K", *, folded: bool = True) -> CompositionScores:
        """Q-, K- or V-composition scores of every writer -> reader pair (docs/mathematics.md#composition).

        [n_layers, n_heads, n_layers, n_heads], zero where the writer's layer is not
        earlier; ``.baseline`` is 1/sqrt(d_model). Computed once per mode and weights.
        """
        mode = check_mode(mode)
        weights = self.model.head_weights(folded=bool(folded))
        cached = self._composition.get((mode, bool(folded)))
        if cached is None or cached[0] is not weights:
            logger.info("computing %s-composition scores", mode)
            W_Q, W_K = weights.qk_circuit()  # per-head q/k norm gains folded in, where there are any
            scores = composition_scores(W_Q, W_K, weights.W_V, weights.W_O, (mode,))[mode]
            result = CompositionScores(
                scores.cpu(),
                mode=mode,
                folded=bool(folded),
                baseline=composition_baseline(self.cfg.d_model),
                notes=self._qk_notes() if mode in ("Q", "K") else [],
            )
            cached = (weights, result)
            self._composition[(mode, bool(folded))] = cached
        return cached[1]

    # -- information flow -----------------------------------------------------------------

    def trace_information_flow(
        self,
        input_ids: Tensor,
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
        their weakest edge. ``method="routes"``: Information Flow Routes (Ferrando & Voita
        2024), how much of dst's residual stream comes from src, for comparison.

        ``verify=True`` adds exact knockouts (batched) of the top heads' and suppressors'
        edges, of each layer's edge and of all layers at once, beside their estimates with
        the rank correlation; ``verify="all"`` knocks out every head's edge one at a time.

        A padded batch: pick the prompt with ``batch_index`` and pass its ``attention_mask``;
        the prompt is traced without its padding, so the result's positions count its real
        tokens and its numbers are those of the prompt run alone.
        """
        ids, src, dst = resolve_positions(
            self.model, input_ids, src_token, dst_token, src_pos, dst_pos, batch_index, attention_mask
        )
        chosen = resolve_layers(n_layers, layers, self.cfg.n_layers)
        method = check_choice(method, METHODS, "method")
        chosen_metric = resolve_metric(self.model, target, foil, metric)
        top_k, n_paths = check_positive_int(top_k, "top_k"), check_positive_int(n_paths, "n_paths")
        if isinstance(min_edge_flow, bool) or not isinstance(min_edge_flow, int | float) or not 0 <= min_edge_flow <= 1:
            raise ValueError(f"min_edge_flow must be a number in [0, 1], got {min_edge_flow!r}")
        if verify not in (True, False, "all"):
            raise ValueError(f"verify must be True, False or 'all', got {verify!r}")
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
            seq_len, n_repeats = check_positive_int(seq_len, "seq_len"), check_positive_int(n_repeats, "n_repeats")
            n_sequences = check_positive_int(n_sequences, "n_sequences")
            if n_repeats < 2:
                logger.warning("n_repeats=1: nothing repeats, so induction and duplicate scores will be ~0")
            input_ids = self._random_probe(seq_len, n_repeats, n_sequences, seed)
            source = f"repeated random tokens (seq_len={seq_len}, n_repeats={n_repeats}, seed={seed})"
        else:
            source = "input_ids"
        batches = self._batches(input_ids, attention_mask, batch_size)
        computed = self._remembered(
            ("roles", fingerprint(batches)), lambda: data_stats.role_scores(self.model, batches)
        )
        scores = {role: value.clone() for role, value in computed.items()}
        n_tokens = max(ids.shape[1] for ids, _ in batches)
        n_sequences = sum(ids.shape[0] for ids, _ in batches)
        return HeadRoles(**scores, n_tokens=n_tokens, n_sequences=n_sequences, source=source)

    def _random_probe(self, seq_len: int = 32, n_repeats: int = 2, n_sequences: int = 4, seed: int = 0) -> Tensor:
        """Random tokens repeated, after a BOS where the tokenizer has one: the default probe."""
        bos = getattr(self.model.tokenizer, "bos_token_id", None)
        return repeated_random_tokens(self.cfg.d_vocab, seq_len, n_repeats, n_sequences, seed, bos)

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
        for role in (writer_role, reader_role):
            if role is not None:
                check_choice(role, ROLES, "head role")
        if not min_ratio > 0:
            raise ValueError(f"min_ratio must be positive, got {min_ratio}")
        if top_k is not None:
            top_k = check_positive_int(top_k, "top_k")  # (None: every edge)
        if (writer_role or reader_role) and not 0 < role_threshold <= 1:
            raise ValueError(
                f"role_threshold must be in (0, 1] (role scores are attention shares), got {role_threshold}"
            )
        runs = self.model.hf_model is not None  # weights-only models have no forward pass
        if verify:
            n_null = check_positive_int(n_null, "n_null")
            if not runs:
                self.model.require_forward()
        if roles is None and (writer_role or reader_role or runs):
            roles = self.head_roles()  # weights-only: only when a role filter asks for them (and fails clearly)
        comp = self.composition_scores(mode, folded=folded)
        layer = torch.arange(self.cfg.n_layers, device=comp.tensor.device)
        allowed = (layer[:, None] < layer[None, :])[:, None, :, None].expand(comp.tensor.shape)  # [L, H, L, H]
        if writer_role:
            allowed = allowed & (roles.scores(writer_role) >= role_threshold)[:, :, None, None]
        if reader_role:
            allowed = allowed & (roles.scores(reader_role) >= role_threshold)[None, None, :, :]
        keep = allowed & (comp.tensor >= min_ratio * comp.baseline)
        index = keep.nonzero().tolist()
        values = [float(comp.tensor[tuple(i)]) for i in index]
        order = sorted(range(len(index)), key=lambda k: -values[k])[: top_k if top_k is not None else None]

        def role_dict(layer: int, head: int) -> dict[str, float]:
            if roles is None:
                return {}
            return {role: round(float(roles.scores(role)[layer, head]), 4) for role in ROLES}

        edges = [
            CircuitEdge(
                writer=(index[k][0], index[k][1]),
                reader=(index[k][2], index[k][3]),
                score=values[k],
                ratio=values[k] / comp.baseline,
                writer_roles=role_dict(index[k][0], index[k][1]),
                reader_roles=role_dict(index[k][2], index[k][3]),
            )
            for k in order
        ]
        verification = None
        if verify and edges:
            if probe is None:  # head_roles' default probe
                probe = self._random_probe()
            batches = self._batches(probe, attention_mask, None)
            ids, mask = batches[0]
            pairs = [(e.writer, e.reader) for e in edges]
            results, verification = verify_circuit(self.model, ids, mask, pairs, mode, n_null=n_null)
            for edge, (effect, ratio) in zip(edges, results, strict=True):
                edge.causal_effect, edge.ratio_to_null = effect, ratio
        notes = []
        if not edges:
            filters = {role: role_threshold for role in (writer_role, reader_role) if role}
            notes.append(self._why_no_edge(comp, allowed, min_ratio, roles, filters))
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

    @staticmethod
    def _why_no_edge(
        comp: CompositionScores, allowed: Tensor, min_ratio: float, roles: Any, filters: dict[str, float]
    ) -> str:
        """Which filter emptied a circuit: the role filters (``filters``: role -> threshold), or
        min_ratio (naming the strongest pair the filters allow)."""
        if not allowed.any():
            counts = [f"{int((roles.scores(r) >= t).sum())} heads score >= {t:g} as {r}" for r, t in filters.items()]
            return f"no pair of heads in increasing layers passes the role filters ({'; '.join(counts)})"
        scores = comp.tensor.masked_fill(~allowed, -1.0)
        a, b, c, d = (int(i) for i in torch.unravel_index(scores.argmax(), scores.shape))
        ratio = float(scores[a, b, c, d]) / comp.baseline
        return (
            f"the strongest {comp.mode}-composition the role filters allow is L{a}H{b} -> L{c}H{d}, "
            f"{ratio:.2f}x the baseline: below min_ratio {min_ratio:g}"
        )


__all__ = ["CHANNELS", "MODES", "WriteReadAnalyzer"]
