"""Data parallelism: a script that computes dataset statistics or task scores runs unchanged
under ``torchrun --nproc-per-node N script.py`` or ``accelerate launch script.py``.

Each process takes its share of the examples (``shard``: contiguous, sizes differing by at
most one), sums and counts are added across the processes (``all_sum``) and per-example
results are gathered in example order (``all_gather_rows``), so every process returns the
result one process would have computed.

A distributed run is the default process group where one is initialised; otherwise one is
initialised here, once, when the launcher's environment says so (``WORLD_SIZE`` > 1 with
``RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, as torchrun and accelerate launch set them):
backend "nccl" when the model is on CUDA, "gloo" otherwise. With one process nothing is
created and every function here is the identity.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

logger = logging.getLogger(__name__)


def launched() -> bool:
    """Whether a launcher (torchrun, accelerate launch) started this process as one of several."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return False
    return size > 1 and all(os.environ.get(name) for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"))


def backend_for(device: torch.device | str | None) -> str:
    """ "nccl" for a model on CUDA (where NCCL is built in), "gloo" otherwise."""
    on_cuda = device is not None and torch.device(device).type == "cuda"
    return "nccl" if on_cuda and torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def world(device: torch.device | str | None = None) -> tuple[int, int]:
    """(rank, number of processes): (0, 1) in a single process. Initialises the default
    process group once where the environment describes a distributed run and none exists
    (``device``: where the model lives, which picks the backend)."""
    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        if not launched():
            return 0, 1
        backend = backend_for(device)
        if backend == "nccl" and os.environ.get("LOCAL_RANK"):
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend)
        logger.info("process group initialised: rank %d of %d, %s", dist.get_rank(), dist.get_world_size(), backend)
    return dist.get_rank(), dist.get_world_size()


def shard(n: int, rank: int | None = None, size: int | None = None) -> range:
    """This rank's examples of ``n``: a contiguous range; the ranges of ranks 0..size-1 cover
    0..n-1 in order, their lengths differing by at most one (a rank may get none). ``rank``
    and ``size`` default to ``world()``'s."""
    if rank is None or size is None:
        rank, size = world()
    if size < 1 or not 0 <= rank < size or n < 0:
        raise ValueError(f"shard needs 0 <= rank < size and n >= 0; got n={n}, rank={rank}, size={size}")
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def shard_batches(batches: Sequence[tuple], device: torch.device | str | None = None) -> list[tuple]:
    """This rank's rows of a list of batches whose first element is a [rows, ...] tensor
    (the others a tensor with the same rows or None): the rows of ``shard`` over all the
    batches' rows, in order, each batch cut to the rows that fall in it."""
    rank, size = world(device)
    if size == 1:
        return list(batches)
    mine = shard(sum(int(batch[0].shape[0]) for batch in batches), rank, size)
    out, first = [], 0
    for batch in batches:
        rows = int(batch[0].shape[0])
        lo, hi = max(mine.start - first, 0), min(mine.stop - first, rows)
        if lo < hi:
            out.append(tuple(None if part is None else part[lo:hi] for part in batch))
        first += rows
    return out


def collective_device(tensor: Tensor) -> torch.device:
    """Where the backend reduces: the CPU for gloo, a GPU for NCCL (the tensor's, or this process's)."""
    backend = str(dist.get_backend())
    if backend == "gloo":
        return torch.device("cpu")
    if backend == "nccl" and tensor.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def all_sum(tensor: Tensor) -> Tensor:
    """``tensor`` summed over the processes, written into ``tensor`` and returned (the
    identity in a single process)."""
    if world()[1] == 1:
        return tensor
    work = tensor.to(collective_device(tensor)).contiguous()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    if work is not tensor:
        tensor.copy_(work)
    return tensor


def all_gather_rows(tensor: Tensor, n_total: int) -> Tensor:
    """Every process's rows [k_rank, ...] joined in rank order, [n_total, ...] on every
    process (the identity in a single process). The processes may hold different numbers of
    rows (none too): each is padded to the largest and trimmed after the gather."""
    rank, size = world()
    if size == 1:
        return tensor
    device = collective_device(tensor)
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(size)]
    dist.all_gather(counts, torch.tensor([tensor.shape[0]], dtype=torch.long, device=device))
    rows = [int(c.item()) for c in counts]
    if sum(rows) != n_total:
        raise ValueError(f"the processes hold {rows} rows, {sum(rows)} in all; expected {n_total}")
    widest = max(rows)
    if widest == 0:
        return tensor
    padded = torch.zeros(widest, *tensor.shape[1:], dtype=tensor.dtype, device=device)
    padded[: tensor.shape[0]] = tensor.to(device)
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    logger.debug("rank %d gathered %s rows", rank, rows)
    return torch.cat([part[:k] for part, k in zip(parts, rows, strict=True)]).to(tensor.device)


def all_gather_objects(items: list) -> list:
    """Every process's list of picklable results joined in rank order (the identity in a
    single process): per-example answers of a task, whose means are then taken in example
    order, so every process averages exactly what one process would."""
    size = world()[1]
    if size == 1:
        return items
    gathered: list[list | None] = [None] * size
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in (part or [])]
