"""A task: many prompts of one kind, each with a corrupted twin, an answer, a foil and the
positions that matter, and the metric that says how well the model does it.

Interpretability experiments ask about a task, not one prompt (Wang et al. 2022's IOI, with
its "ABC" corruption): patching an activation from the corrupted run into the clean one
moves the metric by some amount, averaged over examples. Everything is checked on
construction, before any forward pass, and the examples run in right-padded batches.

>>> import torch
>>> task = Task([[5, 6, 7], [8, 9]], [[5, 6, 4], [8, 3]], answer=[1, 2], foil=3)
>>> task.n, task.dst.tolist(), task.attention_mask.tolist(), task.metric_name
(2, [2, 1], [[1, 1, 1], [1, 1, 0]], 'logit_diff')
>>> task.metric(torch.tensor([[0.0, 1.0, 0.0, 0.5]]), torch.tensor([0])).tolist()
[0.5]
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from arrakis.models import HookedAutoModel
from arrakis.models.batching import pad
from arrakis.progress import progress
from arrakis.tasks import inputs
from arrakis.tasks.metrics import Metric, check_metric, log_prob, logit_diff

DEFAULT_BATCH_SIZE = 16  # examples per forward pass: the logits [16, pos, d_vocab] stay small
WHICH = ("clean", "corrupted")


class Task:
    """Clean prompts, their corrupted twins, one answer (and foil) per example, src/dst positions.

    Args:
        clean, corrupted: a list of strings (needs ``model`` for its tokenizer), a list of
            token id rows, or ids [n, pos]. Each corrupted prompt has as many tokens as its
            clean twin.
        answer, foil: one token per example (a one-token string, an id, or a list of those
            with one per example); the foil differs from the answer.
        src, dst: per example, a position (int; negative counts from the end of the
            example's tokens) or a token (the last occurrence for dst; for src the last
            one before dst). dst defaults to the last token; src may stay None.
        metric: "logit_diff" (answer - foil, the default with a foil), "log_prob" (the
            default without), or ``metric(logits_at_dst [b, d_vocab], index [b]) -> [b]``.
        model: the model whose tokenizer reads strings and which ``clean_metric``,
            ``corrupted_metric`` and ``accuracy()`` run (may be None for id tasks).

    Attributes (long tensors on the CPU): ``clean_ids``, ``corrupted_ids`` (or None) and
    ``attention_mask`` [n, pos], right-padded with the model's pad id (else 0); ``answer``,
    ``foil`` (or None), ``src`` (or None), ``dst`` [n].
    """

    def __init__(
        self,
        clean: Any,
        corrupted: Any = None,
        *,
        answer: Any,
        foil: Any = None,
        src: Any = None,
        dst: Any = None,
        metric: str | Metric | None = None,
        model: HookedAutoModel | None = None,
        name: str = "task",
    ) -> None:
        if model is not None and not isinstance(model, HookedAutoModel):
            raise TypeError(f"model must be a HookedAutoModel, got {type(model).__name__}")
        self.model, self.name = model, str(name)
        clean_rows = inputs.prompt_rows(clean, model, "clean")
        n = len(clean_rows)
        corrupted_rows = None
        if corrupted is not None:
            corrupted_rows = inputs.prompt_rows(corrupted, model, "corrupted")
            if len(corrupted_rows) != n:
                raise ValueError(f"clean has {n} examples but corrupted {len(corrupted_rows)}; give one twin each")
            for i, (a, b) in enumerate(zip(clean_rows, corrupted_rows, strict=True)):
                if len(a) != len(b):
                    raise ValueError(
                        f"example {i}: clean has {len(a)} tokens, corrupted {len(b)}; a corrupted twin must "
                        "tokenise to as many tokens as its clean prompt"
                    )
        given = inputs.per_example(answer, n, "answer")
        answers = [inputs.token_id(a, model, "answer", i) for i, a in enumerate(given)]
        foils = None
        if foil is not None:
            foils = [inputs.token_id(f, model, "foil", i) for i, f in enumerate(inputs.per_example(foil, n, "foil"))]
            for i, (a, f) in enumerate(zip(answers, foils, strict=True)):
                if a == f:
                    raise ValueError(f"example {i}: the foil is the answer's token (id {a}); pick a different foil")
        dsts = [
            inputs.position(-1 if d is None else d, row, model, "dst", i, len(row))
            for i, (d, row) in enumerate(zip(inputs.per_example(dst, n, "dst"), clean_rows, strict=True))
        ]
        srcs = None
        if src is not None:
            srcs = [
                inputs.position(s, row, model, "src", i, d if isinstance(s, str) else len(row))
                for i, (s, row, d) in enumerate(zip(inputs.per_example(src, n, "src"), clean_rows, dsts, strict=True))
            ]
        self.metric_name, self.metric_fn = check_metric(metric, foils is not None)
        pad_id = 0 if model is None else model.pad_token_id
        self.clean_ids, self.attention_mask = (t.cpu() for t in pad(clean_rows, pad_id))
        self.corrupted_ids = None if corrupted_rows is None else pad(corrupted_rows, pad_id).input_ids.cpu()
        self.answer = torch.tensor(answers, dtype=torch.long)
        self.foil = None if foils is None else torch.tensor(foils, dtype=torch.long)
        self.src = None if srcs is None else torch.tensor(srcs, dtype=torch.long)
        self.dst = torch.tensor(dsts, dtype=torch.long)
        self.lengths = self.attention_mask.sum(-1)  # [n] real tokens per example
        self.measured: dict[str, float] = {}  # clean / corrupted metric of task.model, computed once

    @property
    def n(self) -> int:
        return int(self.clean_ids.shape[0])

    def __len__(self) -> int:
        return self.n

    # -- the metric --------------------------------------------------------------------------

    def metric(self, logits: Tensor, index: Tensor) -> Tensor:
        """The metric of examples ``index`` [b] from their logits at dst [b, d_vocab]: [b]."""
        if self.metric_name == "logit_diff":
            return logit_diff(logits, self.answer, self.foil, index)
        if self.metric_name == "log_prob":
            return log_prob(logits, self.answer, index)
        return self.metric_fn(logits, index)

    def batches(self, batch_size: int | None = None) -> Iterator[Tensor]:
        """The examples' indices, ``batch_size`` at a time (default 16): long tensors [b]."""
        size = DEFAULT_BATCH_SIZE if batch_size is None else check_batch_size(batch_size)
        yield from torch.arange(self.n).split(size)

    def inputs(self, index: Tensor, which: str = "clean") -> tuple[Tensor, Tensor]:
        """(ids, attention_mask) of examples ``index``, cut to their longest prompt: [b, pos]."""
        ids = self.prompts(which)
        width = int(self.lengths[index].max())
        return ids[index, :width], self.attention_mask[index, :width]

    def prompts(self, which: str) -> Tensor:
        if which not in WHICH:
            raise ValueError(f"which must be 'clean' or 'corrupted', got {which!r}")
        if which == "corrupted" and self.corrupted_ids is None:
            raise ValueError(f"task {self.name!r} has no corrupted prompts: pass corrupted= to Task")
        return self.clean_ids if which == "clean" else self.corrupted_ids

    def dst_logits(self, model: HookedAutoModel, index: Tensor, which: str = "clean") -> Tensor:
        """The logits at each example's dst in a plain run: [b, d_vocab] (float32)."""
        ids, mask = self.inputs(index, which)
        device = model.device
        output, _ = model.run_with_cache(ids.to(device), names=[], attention_mask=mask.to(device))
        rows = torch.arange(len(index), device=output.logits.device)
        return output.logits[rows, self.dst[index].to(output.logits.device)].float()

    def values(
        self, model: HookedAutoModel | None = None, which: str = "clean", batch_size: int | None = None
    ) -> Tensor:
        """Each example's metric in a plain run of ``model`` (default: the task's): [n], CPU."""
        model = self.require_model(model)
        self.prompts(which)
        batches = list(self.batches(batch_size))
        out = []
        for index in progress(batches, f"{self.name}: {which} runs", "batch", enabled=len(batches) > 1):
            out.append(self.metric(self.dst_logits(model, index, which), index).detach().float().cpu())
        return torch.cat(out)

    def require_model(self, model: HookedAutoModel | None) -> HookedAutoModel:
        model = self.model if model is None else model
        if model is None:
            raise ValueError(f"task {self.name!r} has no model (it was built from token ids): pass model=")
        if not isinstance(model, HookedAutoModel):
            raise TypeError(f"model must be a HookedAutoModel, got {type(model).__name__}")
        tensors = (self.clean_ids, self.corrupted_ids, self.answer, self.foil)
        top = max(int(t.max()) for t in tensors if t is not None)
        if top >= model.cfg.d_vocab:
            vocab = model.cfg.d_vocab
            raise ValueError(f"task {self.name!r} has token id {top}, outside the model's vocabulary of {vocab}")
        return model

    @property
    def clean_metric(self) -> float:
        """The mean metric over the clean prompts (``task.model``, computed once)."""
        if "clean" not in self.measured:
            self.measured["clean"] = float(self.values(None, "clean").mean())
        return self.measured["clean"]

    @property
    def corrupted_metric(self) -> float:
        """The mean metric over the corrupted prompts (``task.model``, computed once)."""
        if "corrupted" not in self.measured:
            self.prompts("corrupted")
            self.measured["corrupted"] = float(self.values(None, "corrupted").mean())
        return self.measured["corrupted"]

    def normalise(self, effect: Any) -> Any:
        """``effect / (clean_metric - corrupted_metric)``: 1 is the whole gap between the runs."""
        gap = self.clean_metric - self.corrupted_metric
        if not abs(gap) > 1e-9:
            raise ValueError(f"task {self.name!r}: clean and corrupted metrics are equal ({gap:.3g}); nothing to scale")
        return effect / gap

    def accuracy(self, model: HookedAutoModel | None = None, batch_size: int | None = None) -> float:
        """The share of examples whose answer is the top prediction at dst (clean run)."""
        model = self.require_model(model)
        hits = 0
        for index in self.batches(batch_size):
            top = self.dst_logits(model, index).argmax(-1).cpu()
            hits += int((top == self.answer[index]).sum())
        return hits / self.n

    def __repr__(self) -> str:
        twins = "with corrupted twins" if self.corrupted_ids is not None else "clean only"
        return f"Task({self.name!r}, n={self.n}, pos<={self.clean_ids.shape[1]}, {twins}, metric={self.metric_name})"


def check_batch_size(batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    return int(batch_size)
