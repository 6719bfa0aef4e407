"""Statistics over prompts: what every head writes, and head-role scores, from one forward
pass per batch for all layers at once (docs/mathematics.md: conventions, write heads, head roles).

Every statistic counts real tokens only: padded positions are masked out of every sum, and a
dataset's aggregate is a mean over its tokens (not a mean of batch means), so batching
never changes it. Under torchrun or accelerate launch each process runs its share of the
prompts and the sums and counts are added across processes (``arrakis.models.parallel``).
Activations are reduced as they are captured (per token and head, never [batch, pos, head,
d_model]); tensors stay on the model's device until the end.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from arrakis.circuits import heads as head_math
from arrakis.circuits.roles import DETECTORS, ROLES, repeated_random_tokens, role_hits
from arrakis.models import HookedAutoModel
from arrakis.models.batching import iter_batches
from arrakis.models.parallel import all_sum, shard_batches
from arrakis.progress import progress as progress_bar
from arrakis.tools.base import check_positive_int

logger = logging.getLogger(__name__)
Batch = tuple[Tensor, Tensor | None]  # (input_ids [batch, pos], attention_mask or None)


def fingerprint(batches: list[Batch], *extra: Any) -> str:
    """A key for the same prompts (ids and masks by content) and options."""
    digest = hashlib.sha256(repr(extra).encode())
    for ids, mask in batches:
        for tensor in (ids, mask):
            if tensor is None:
                digest.update(b"-")
            else:
                digest.update(str(tuple(tensor.shape)).encode())
                digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def prompt_batches(
    model: HookedAutoModel, data: Any, attention_mask: Any, batch_size: int | None, what: str = "input_ids"
) -> list[Batch]:
    """Checked batches of prompts (``iter_batches``); errors name the argument the prompts
    came from (``what``: "input_ids", "probe")."""
    if batch_size is not None:
        batch_size = check_positive_int(batch_size, "batch_size")
    if isinstance(data, str) and not data.strip():
        raise ValueError(f"{what} is an empty string; pass token ids [batch, pos], a prompt or a list of them")
    try:
        return list(iter_batches(model, data, attention_mask, batch_size))
    except (TypeError, ValueError) as error:
        if what == "input_ids":
            raise
        message = str(error).replace("input_ids", what)
        raise type(error)(message if what in message else f"{what}: {message}") from None


def random_probe(
    model: HookedAutoModel, seq_len: int = 32, n_repeats: int = 2, n_sequences: int = 4, seed: int = 0
) -> tuple[Tensor, str]:
    """The default probe: random tokens repeated, after a BOS where the tokenizer has one;
    (ids [n_sequences, pos], a description)."""
    seq_len, n_repeats = check_positive_int(seq_len, "seq_len"), check_positive_int(n_repeats, "n_repeats")
    n_sequences = check_positive_int(n_sequences, "n_sequences")
    if n_repeats < 2:
        logger.warning("n_repeats=1: nothing repeats, so induction and duplicate scores will be ~0")
    bos = getattr(model.tokenizer, "bos_token_id", None)
    ids = repeated_random_tokens(model.cfg.d_vocab, seq_len, n_repeats, n_sequences, seed, bos)
    return ids, f"repeated random tokens (seq_len={seq_len}, n_repeats={n_repeats}, seed={seed})"


def _progress(batches: list[Batch], what: str) -> Iterable[Batch]:
    return progress_bar(batches, what, "batch", enabled=len(batches) >= 4)


def write_scores(model: HookedAutoModel, batches: list[Batch], direction: Tensor | None = None) -> Tensor:
    """[n_layers, n_heads]: the mean over real tokens of ||z[h] W_O[h]||_2 (or |<z[h] W_O[h], u^>|)."""
    cfg, device = model.cfg, model.device
    W_O = model.head_weights(folded=True).W_O  # [layer, head, d_head, D]
    u = None if direction is None else direction.float().to(device)
    names = {f"blocks.{layer}.attn.hook_z" for layer in range(cfg.n_layers)}

    def sizes(name: str, z: Tensor) -> Tensor:  # [batch, pos, head, d_head] -> [batch, pos, head]
        layer = int(name.split(".")[1])
        return head_math.written_sizes(
            z.float(), W_O[layer].float().to(z.device), None if u is None else u.to(z.device)
        )

    total = torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for ids, mask in _progress(shard_batches(batches, device), "write scores"):
        _, cache = model.run_with_cache(ids, names=names, transform=sizes, attention_mask=mask)
        weight = torch.ones(ids.shape, device=device) if mask is None else mask.float().to(device)
        for layer in range(cfg.n_layers):
            size = cache[f"blocks.{layer}.attn.hook_z"].to(device)
            total[layer] += torch.einsum("bph,bp->h", size, weight).double()
        count += weight.sum().double()
    return (all_sum(total) / all_sum(count)).float().cpu()


def role_scores(model: HookedAutoModel, batches: list[Batch]) -> dict[str, Tensor]:
    """{role: [n_layers, n_heads]}: over real query tokens, the attention mass each head puts
    on the cells of the role's detection pattern, divided by the mass it puts anywhere."""
    cfg, device = model.cfg, model.device
    hits = {role: torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.float64, device=device) for role in ROLES}
    mass = torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.float64, device=device)
    names = {f"blocks.{layer}.attn.hook_pattern" for layer in range(cfg.n_layers)}
    for ids, mask in _progress(shard_batches(batches, device), "head roles"):
        detections = {role: detection(DETECTORS[role], ids, mask).to(device) for role in ROLES}
        rows = torch.ones(ids.shape, device=device) if mask is None else mask.float().to(device)
        _, cache = model.run_with_cache(ids, names=names, attention_mask=mask)
        for layer in range(cfg.n_layers):
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"].float().to(device)  # [batch, head, q, k]
            pattern = pattern * rows[:, None, :, None]  # padded query rows count for nothing
            mass[layer] += pattern.sum((0, 2, 3)).double()
            for role in ROLES:
                hits[role][layer] += role_hits(pattern, detections[role]).double()
    mass = all_sum(mass)
    return {role: (all_sum(hits[role]) / mass.clamp_min(1e-30)).float().cpu() for role in ROLES}


def detection(detector: Any, ids: Tensor, mask: Tensor | None) -> Tensor:
    """A role's detection pattern [batch, q, k] computed on each prompt's real tokens alone
    (so "previous" means the previous real token), zero on every padded row and column."""
    if mask is None:
        return detector(ids).float()
    out = torch.zeros(ids.shape[0], ids.shape[1], ids.shape[1], device=ids.device)
    for b in range(ids.shape[0]):
        keep = mask[b].bool().nonzero().flatten()
        inner = detector(ids[b, keep][None])[0].float()  # [real, real]
        out[b, keep[:, None], keep[None, :]] = inner
    return out
