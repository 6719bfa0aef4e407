"""Configs: ``HookedAutoConfig`` builds a Hugging Face config for a family from small
defaults; ``ModelShape`` (``model.cfg``) is the family-independent summary every analysis
reads (layers, heads, KV heads, widths, norm kind, residual layout).
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import asdict, dataclass
from typing import Any

from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, PretrainedConfig

from arrakis.models.adapters import ADAPTERS, FamilyAdapter, adapter_for
from arrakis.models.adapters.base import SHAPE_FIELDS

# Rotary settings that transformers 4 took as config fields, and their rope_parameters key.
ROPE_LEGACY = {
    "rotary_pct": "partial_rotary_factor",
    "partial_rotary_factor": "partial_rotary_factor",
    "rotary_emb_base": "rope_theta",
    "rope_theta": "rope_theta",
}


@dataclass(frozen=True)
class ModelShape:
    """What an analysis needs to know about a model, whatever its family."""

    family: str
    model_type: str
    n_layers: int
    n_heads: int
    n_kv_heads: int  # == n_heads without grouped-query attention; 1 for multi-query
    d_model: int
    d_head: int
    d_mlp: int | None
    d_vocab: int
    n_ctx: int | None  # the longest prompt with learned positions; None where unbounded
    norm: str  # "layernorm" or "rmsnorm"
    norm_eps: float
    parallel_residual: bool  # attention and MLP both read resid_pre (no resid_mid)
    positional: str  # "learned" (absolute, added to the embedding) or "rotary"
    ln1: bool = True  # attention reads a normalised residual (False: the residual itself, OLMo-2)
    attn_post_norm: bool = False  # attention's output is normalised before the residual add
    qk_norm: str | None = None  # q/k normalised per head over d_head ("head"), over all heads ("all"), or not

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_shape(adapter: FamilyAdapter, hf_config: PretrainedConfig, d_head: int) -> ModelShape:
    """Read a ModelShape from a Hugging Face config through the adapter's field table.

    ``d_head`` comes from the weights (o-projection input width / n_heads), because several
    families derive it rather than store it.
    """

    def get(name: str) -> Any:
        field = adapter.fields.get(name)
        return getattr(hf_config, field, None) if field else None

    n_heads = get("n_heads")
    d_model = get("d_model")
    qk_norm = None
    if adapter.q_norm is not None and (adapter.qk_norm_field is None or getattr(hf_config, adapter.qk_norm_field)):
        qk_norm = "all" if adapter.qk_norm_layout == "flat" else "head"
    d_mlp = get("d_mlp") or (adapter.mlp_ratio_if_unset * d_model if adapter.mlp_ratio_if_unset else None)
    return ModelShape(
        family=adapter.family,
        model_type=adapter.model_type,
        n_layers=get("n_layers"),
        n_heads=n_heads,
        n_kv_heads=get("n_kv_heads") or n_heads,
        d_model=d_model,
        d_head=d_head,
        d_mlp=d_mlp,
        d_vocab=get("d_vocab"),
        n_ctx=get("n_ctx") if adapter.pos_embed else None,
        norm=adapter.norm,
        norm_eps=float(getattr(hf_config, adapter.eps_field)),
        parallel_residual=bool(getattr(hf_config, adapter.parallel_residual_field or "", False)),
        positional="learned" if adapter.pos_embed else "rotary",
        ln1=adapter.ln1 is not None,
        attn_post_norm=adapter.attn_post_norm is not None,
        qk_norm=qk_norm,
    )


class HookedAutoConfig:
    """A small model of one family, any field overridable.

    ``HookedAutoConfig("llama")`` builds a Llama config with 4 layers, d_model 256, 8 query
    heads sharing 2 KV heads, d_head 32 and the GPT-2 vocabulary (50257), which runs a
    50-token prompt in milliseconds on a CPU. Keyword arguments override any Hugging Face
    config field (``num_hidden_layers=2``) or a shape by its TransformerLens name
    (``n_layers=2``, ``n_heads``, ``n_kv_heads``, ``d_model``, ``d_head``, ``d_mlp``,
    ``d_vocab``, ``n_ctx``). A field the family's config does not know is an error, not
    silently ignored.

    >>> cfg = HookedAutoConfig("gpt2", n_layers=2)
    >>> cfg.family, cfg.hf_config.n_layer, cfg.hf_config.n_embd
    ('gpt2', 2, 256)
    """

    def __init__(self, name: str, **hf_kwargs: Any) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a family name such as 'llama', got {type(name).__name__}")
        self.adapter = adapter_for(name)
        for key in ("n_layers", "n_heads", "n_kv_heads", "d_model", "d_head", "d_mlp", "d_vocab", "n_ctx"):
            value = hf_kwargs.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        kwargs = {**self.adapter.defaults, **self._translate(hf_kwargs)}
        if self.adapter.derive is not None:
            kwargs = self.adapter.derive(kwargs)
        kwargs = self._drop_special_ids_outside_vocab(kwargs)
        self._check_heads(kwargs, d_head_given="d_head" in hf_kwargs or self.adapter.fields["d_head"] in hf_kwargs)
        try:
            self.hf_config: PretrainedConfig = AutoConfig.for_model(self.adapter.model_type, **kwargs)
        except StrictDataclassError as err:  # huggingface_hub's validators: one line, in arrakis's terms
            self._check_heads(kwargs, d_head_given=False)  # this family wants d_model / n_heads whole anyway
            cause = str(err).splitlines()[-1].strip()
            raise ValueError(f"the {self.family} config refuses these fields: {cause}") from None
        # Patterns are only materialised by the eager attention implementation.
        self.hf_config._attn_implementation = "eager"

    @property
    def family(self) -> str:
        return self.adapter.family

    def _translate(self, hf_kwargs: dict[str, Any]) -> dict[str, Any]:
        """Map TransformerLens shape names onto this family's fields and reject unknown ones."""
        known = self._known_fields()
        out: dict[str, Any] = {}
        for key, value in hf_kwargs.items():
            if key in SHAPE_FIELDS:
                field = self.adapter.fields.get(key)
                if field is None:
                    raise ValueError(
                        f"{key} cannot be set for {self.family}: it is derived "
                        f"({'d_model / n_heads' if key == 'd_head' else 'equal to n_heads'}) in this family"
                    )
                key = field
            elif key not in known:
                raise ValueError(f"{key!r} is not a field of the {self.family} config{self._hint(key, value, known)}")
            out[key] = value
        return out

    @staticmethod
    def _hint(key: str, value: Any, known: set[str]) -> str:
        """What to pass instead: rotary settings moved into ``rope_parameters`` in
        transformers 5 (a bare ``rotary_pct`` would be dropped when the family's defaults
        already set the factor, so it is refused rather than half-applied); else close names."""
        rope_key = ROPE_LEGACY.get(key)
        if rope_key is not None and "rope_parameters" in known:
            return f"; rotary settings live in rope_parameters: pass rope_parameters={{{rope_key!r}: {value!r}}}"
        close = difflib.get_close_matches(key, sorted(known | set(SHAPE_FIELDS)), n=3)
        return f"; did you mean {', '.join(close)}?" if close else ""

    def _check_heads(self, kwargs: dict[str, Any], d_head_given: bool) -> None:
        """Heads must split the residual stream: d_model a multiple of n_heads (unless d_head is
        given and the family keeps it apart), n_heads a multiple of n_kv_heads."""
        fields = self.adapter.fields

        def value(name: str) -> Any:
            return kwargs.get(fields[name]) if fields.get(name) else None

        d_model, n_heads, n_kv_heads = value("d_model"), value("n_heads"), value("n_kv_heads")
        if isinstance(d_model, int) and isinstance(n_heads, int) and d_model % n_heads and not d_head_given:
            raise ValueError(
                f"d_model {d_model} is not divisible by n_heads {n_heads}: n_heads must be one of "
                f"{divisors(d_model)} (or pass a d_model that is a multiple of {n_heads})"
            )
        if isinstance(n_heads, int) and isinstance(n_kv_heads, int) and n_heads % n_kv_heads:
            raise ValueError(
                f"n_heads {n_heads} is not a multiple of n_kv_heads {n_kv_heads}: n_kv_heads must be one of "
                f"{divisors(n_heads)}"
            )

    def _drop_special_ids_outside_vocab(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        # A family's default bos/eos/pad ids (Phi-3's pad is 32000) would not fit a smaller
        # vocabulary asked for here; an id the user did not choose is dropped, not kept invalid.
        default = AutoConfig.for_model(self.adapter.model_type)
        vocab = kwargs.get(self.adapter.fields["d_vocab"], default.vocab_size)
        for field in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(default, field, None)
            if field not in kwargs and isinstance(value, int) and value >= vocab:
                kwargs[field] = None
        return kwargs

    def _known_fields(self) -> set[str]:
        default = AutoConfig.for_model(self.adapter.model_type)
        init_params = inspect.signature(type(default).__init__).parameters
        return set(default.to_dict()) | set(default.attribute_map) | set(init_params) - {"self", "kwargs"}

    def __getattr__(self, item: str) -> Any:
        # Any Hugging Face field reads through: cfg.num_hidden_layers, cfg.vocab_size.
        if item in ("hf_config", "adapter") or item.startswith("__"):
            raise AttributeError(item)
        return getattr(self.hf_config, item)

    def __repr__(self) -> str:
        shape = {k: getattr(self.hf_config, v) for k, v in self.adapter.fields.items() if v}
        return f"HookedAutoConfig({self.family!r}, {', '.join(f'{k}={v}' for k, v in shape.items())})"


def divisors(n: int) -> str:
    """``"1, 2, 4, 8"``: the divisors of ``n``, as an error message lists the valid choices."""
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def supported_families() -> list[str]:
    """The family names HookedAutoConfig accepts."""
    return list(ADAPTERS)
