"""Shared fixtures: tiny random models of every family, in every variant that matters.

Nothing here downloads anything: every model is built from a config.
"""

from __future__ import annotations

import os
from functools import cache

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

from arrakis import HookedAutoConfig, HookedAutoModel

# Under pytest-xdist (make test runs one worker per core), each worker takes its share of the
# cores: two threads spinning on one core make the tiny models' millisecond ops 10-100x slower.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
from arrakis.models.adapters import ADAPTERS, FamilyAdapter

# A few layers, several heads, a small vocabulary: each builds and runs in milliseconds.
TINY = {"n_layers": 2, "d_model": 64, "n_heads": 4, "d_vocab": 512}
GQA = {"n_kv_heads": 2}
LLAMA_LIKE_TINY = {**TINY, **GQA, "d_mlp": 128}

# variant id -> (family, config overrides). Every family; a multi-query variant (one KV head)
# where the family has grouped-query attention; a bias variant where the family allows one;
# the other residual layout where the family has a switch.
VARIANTS: dict[str, tuple[str, dict]] = {
    "gpt2": ("gpt2", {**TINY, "d_mlp": 128}),
    "gpt-neo": ("gpt-neo", {**TINY, "d_mlp": 128, "window_size": 4}),
    "gpt-neox": ("gpt-neox", {**TINY, "d_mlp": 128}),
    "gpt-neox-sequential-nobias": (
        "gpt-neox",
        {**TINY, "d_mlp": 128, "use_parallel_residual": False, "attention_bias": False},
    ),
    "llama": ("llama", {**LLAMA_LIKE_TINY, "d_head": 16}),
    "llama-mqa-bias": ("llama", {**LLAMA_LIKE_TINY, "d_head": 16, "n_kv_heads": 1, "attention_bias": True}),
    "llama-wide-head": ("llama", {**LLAMA_LIKE_TINY, "d_head": 24}),  # d_head * n_heads != d_model
    "gemma": ("gemma", {**LLAMA_LIKE_TINY, "d_head": 16}),
    "gemma-mqa-bias": ("gemma", {**LLAMA_LIKE_TINY, "d_head": 16, "n_kv_heads": 1, "attention_bias": True}),
    "phi3": ("phi3", LLAMA_LIKE_TINY),
    "phi3-mqa": ("phi3", {**LLAMA_LIKE_TINY, "n_kv_heads": 1}),
    "qwen2": ("qwen2", LLAMA_LIKE_TINY),
    "qwen2-mqa": ("qwen2", {**LLAMA_LIKE_TINY, "n_kv_heads": 1}),
    "mistral": ("mistral", {**LLAMA_LIKE_TINY, "d_head": 16, "sliding_window": 6}),
    "mistral-mqa": ("mistral", {**LLAMA_LIKE_TINY, "d_head": 16, "n_kv_heads": 1}),
    "stable-lm": ("stable-lm", LLAMA_LIKE_TINY),
    "stable-lm-mqa-bias-parallel": (
        "stable-lm",
        {**LLAMA_LIKE_TINY, "n_kv_heads": 1, "use_qkv_bias": True, "use_parallel_residual": True},
    ),
    # the later families: per-head q/k norms (over d_head, over all heads, LayerNorm per head),
    # post-norms, soft-capping, local (sliding-window) and global layers
    "stable-lm-qk-norm": ("stable-lm", {**LLAMA_LIKE_TINY, "qk_layernorm": True}),
    "gemma2": ("gemma2", {**LLAMA_LIKE_TINY, "d_head": 16, "sliding_window": 6}),
    "gemma2-mqa-bias": (
        "gemma2",
        {**LLAMA_LIKE_TINY, "d_head": 16, "n_kv_heads": 1, "attention_bias": True, "attn_logit_softcapping": 5.0},
    ),
    "gemma3": (
        "gemma3",
        {**LLAMA_LIKE_TINY, "d_head": 16, "sliding_window": 6, "layer_types": ["sliding_attention", "full_attention"]},
    ),
    "gemma3-mqa-bias": ("gemma3", {**LLAMA_LIKE_TINY, "d_head": 16, "n_kv_heads": 1, "attention_bias": True}),
    "qwen3": ("qwen3", {**LLAMA_LIKE_TINY, "d_head": 16}),
    "qwen3-mqa-bias": ("qwen3", {**LLAMA_LIKE_TINY, "d_head": 16, "n_kv_heads": 1, "attention_bias": True}),
    "olmo2": ("olmo2", LLAMA_LIKE_TINY),
    "olmo2-mqa-bias": ("olmo2", {**LLAMA_LIKE_TINY, "n_kv_heads": 1, "attention_bias": True}),
}


def default_overrides(adapter: FamilyAdapter) -> dict:
    """Tiny overrides for a family no variant above names: a new adapter file is tested from
    the registry alone (grouped-query attention and an explicit d_head where its config has them)."""
    overrides = {**TINY, "d_mlp": 128}
    if adapter.fields.get("n_kv_heads"):
        overrides.update(GQA)
    if adapter.fields.get("d_head"):
        overrides["d_head"] = 16
    return overrides


# every registered family has at least one variant
VARIANTS.update(
    {
        family: (family, default_overrides(a))
        for family, a in ADAPTERS.items()
        if family not in {f for f, _ in VARIANTS.values()}
    }
)


def randomize_(model: HookedAutoModel, seed: int = 0, scale: float = 0.1) -> HookedAutoModel:
    """Perturb every parameter, so norm gains are not 1 and biases not 0.

    Hugging Face initialises gains to 1 and biases to 0, which would let a wrong fold or a
    forgotten bias pass every identity; random values make each term count.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.hf_model.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))
    return model


def build(variant: str, seed: int = 0) -> HookedAutoModel:
    """A fresh randomised tiny model of a variant (for tests that change the model)."""
    family, overrides = VARIANTS[variant]
    torch.manual_seed(seed)
    return randomize_(HookedAutoModel(HookedAutoConfig(family, **overrides)), seed)


@cache
def shared(variant: str) -> HookedAutoModel:
    """One tiny model per variant for the whole session; tests must not change it."""
    return build(variant)


def prompt(d_vocab: int = 512, batch: int = 2, pos: int = 12, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, d_vocab, (batch, pos), generator=generator)


@pytest.fixture(params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def tiny(variant: str) -> HookedAutoModel:
    return shared(variant)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files that run the real checkpoints (marked slow) first. make test gives each of its
    workers (one per core) whole files, in this order (``--no-loadscope-reorder``; xdist would
    otherwise hand out the files with the most tests first, which put the longest file, with
    five tests, last): the long files start first and the short ones fill in around them. The
    order within each group is kept."""
    heavy = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in heavy)
