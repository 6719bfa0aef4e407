"""What a flow trace asks: which sequence, which src and dst positions, which layers, and
which metric of dst's prediction (docs/mathematics.md#information-flow). Everything here checks input and fails
before any forward pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from arrakis.models import HookedAutoModel
from arrakis.models.batching import check_attention_mask, real_rows
from arrakis.tasks import Task
from arrakis.tools.base import check_choice, check_index, check_positive_int
from arrakis.tools.results.flow import METHODS, FlowEdge, FlowPath, InformationFlow, LayerFlow


def token_id(model: HookedAutoModel, token: Any, what: str) -> int:
    """A token id from an id (int or one-element tensor) or a string that is one token."""
    if isinstance(token, str):
        ids = model.require_tokenizer().encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"{what} {token!r} is {len(ids)} tokens ({ids}); pass a string that is one token")
        return ids[0]
    if isinstance(token, Tensor):
        if token.numel() != 1:
            raise ValueError(f"{what} must be one token, got a tensor of shape {tuple(token.shape)}")
        token = int(token)
    return check_index(token, model.cfg.d_vocab, what, "tokens in its vocabulary")


def refuse_with_task(given: dict[str, Any], why: str) -> None:
    """Arguments of a one-prompt question passed with a task, which gives them: an error."""
    named = [name for name, value in given.items() if value is not None]
    if named:
        raise ValueError(f"{', '.join(n + '=' for n in named)} cannot go with a task: {why}")


def task_positions(model: HookedAutoModel, task: Task, given: dict[str, Any]) -> tuple[Task, Tensor, Tensor]:
    """A task's src and dst [n], checked: every example needs a src before its dst."""
    refuse_with_task(given, "the task gives each example's prompt, src and dst")
    if task.src is None:
        raise ValueError(f"task {task.name!r} has no src positions: pass src= to Task to trace src -> dst")
    later = (task.src >= task.dst).nonzero().flatten().tolist()
    if later:
        i = later[0]
        raise ValueError(
            f"task {task.name!r}, example {i}: src {int(task.src[i])} must come before dst {int(task.dst[i])}"
        )
    task.require_model(model)
    return task, task.src, task.dst


def pick_row(model: HookedAutoModel, input_ids: Any, attention_mask: Any, batch_index: int | None) -> tuple:
    """Checked (ids, mask or None, batch_index): one prompt of a batch, which must be named
    when the batch holds several."""
    if input_ids is None:
        raise TypeError("input_ids is required: token ids [batch, pos] (or [pos]), or a string with a tokenizer")
    ids = model.check_input_ids(input_ids)
    mask = check_attention_mask(attention_mask, ids)
    if batch_index is None:
        if ids.shape[0] != 1:
            raise ValueError(f"input_ids holds a batch of {ids.shape[0]} sequences; pass batch_index= to pick one")
        batch_index = 0
    return ids, mask, check_index(batch_index, ids.shape[0], "batch_index", "sequences in the batch")


def one_prompt(model: HookedAutoModel, input_ids: Any, attention_mask: Any, batch_index: int | None) -> Tensor:
    """One prompt [1, pos] without its padding."""
    ids, mask, batch_index = pick_row(model, input_ids, attention_mask, batch_index)
    return real_rows(ids, mask, batch_index)


def resolve_positions(
    model: HookedAutoModel,
    input_ids: Any,
    src_token: Any,
    dst_token: Any,
    src_pos: int | None,
    dst_pos: int | None,
    batch_index: int | None,
    attention_mask: Any = None,
) -> tuple[Tensor, int, int]:
    """The one sequence to analyse ([1, pos], without padding) and the src and dst positions
    in it. With an ``attention_mask``, positions given count the padded row's columns and
    are returned counting the prompt's real tokens (as if it ran alone). A task: the task
    itself and its src and dst [n] (the one-prompt arguments are then errors)."""
    if isinstance(input_ids, Task):
        given = {"src_token": src_token, "dst_token": dst_token, "src_pos": src_pos, "dst_pos": dst_pos}
        return task_positions(model, input_ids, {**given, "batch_index": batch_index, "attention_mask": attention_mask})
    ids, mask, batch_index = pick_row(model, input_ids, attention_mask, batch_index)
    if mask is not None:
        keep = mask[batch_index].bool()
        real = (keep.cumsum(0) - 1).tolist()

        def unpadded(pos: int | None, what: str) -> int | None:
            if pos is None:
                return None
            pos = check_index(pos, ids.shape[1], what, "positions in the prompt")
            if not keep[pos]:
                raise ValueError(f"{what} {pos} is padding in row {batch_index} of attention_mask")
            return real[pos]

        src_pos, dst_pos = unpadded(src_pos, "src_pos"), unpadded(dst_pos, "dst_pos")
    ids = real_rows(ids, mask, batch_index)
    row, n_pos = ids[0].tolist(), ids.shape[1]
    if dst_pos is None:
        if dst_token is None:
            raise ValueError("give dst_token (a token id or string) or dst_pos")
        token = token_id(model, dst_token, "dst_token")
        if token not in row:
            raise ValueError(f"dst_token {dst_token!r} (id {token}) does not occur in the prompt")
        dst_pos = n_pos - 1 - row[::-1].index(token)  # its last occurrence
    dst_pos = check_index(dst_pos, n_pos, "dst_pos", "positions in the prompt")
    if src_pos is None:
        if src_token is None:
            raise ValueError("give src_token (a token id or string) or src_pos")
        token = token_id(model, src_token, "src_token")
        before = row[:dst_pos]
        if token not in before:
            raise ValueError(
                f"src_token {src_token!r} (id {token}) does not occur before dst (position {dst_pos}); "
                "src must come before dst"
            )
        src_pos = dst_pos - 1 - before[::-1].index(token)  # its last occurrence before dst
    src_pos = check_index(src_pos, n_pos, "src_pos", "positions in the prompt")
    if src_pos >= dst_pos:
        raise ValueError(f"src_pos {src_pos} must come before dst_pos {dst_pos}: information flows forward")
    return ids, src_pos, dst_pos


def induction_question(model: HookedAutoModel, n: int = 20, k: int = 10, seed: int = 0) -> tuple[Tensor, int, int]:
    """A standard induction question: (BOS,) n random tokens, then the same n again. dst is
    the second occurrence of token k, src the token after its first occurrence: an
    induction head at dst attends to src and copies it, so the model predicts src's token.
    Returns (ids [1, pos], src, dst)."""
    generator = torch.Generator().manual_seed(seed)
    half = torch.randint(min(100, model.cfg.d_vocab // 2), model.cfg.d_vocab, (1, n), generator=generator)
    bos = getattr(model.tokenizer, "bos_token_id", None)
    ids = torch.cat([torch.tensor([[bos]]) if bos is not None else half[:, :0], half, half], dim=1)
    offset = ids.shape[1] - 2 * n
    return ids, offset + k + 1, offset + n + k


def resolve_layers(n_layers: int | None, layers: Any, total: int) -> list[int]:
    """``layers`` if given (sorted, unique), else the first ``n_layers`` (None: all)."""
    if layers is not None:
        chosen = sorted({check_index(layer, total, "layer", "layers") for layer in layers})
        if not chosen:
            raise ValueError("layers is empty; pass at least one layer")
        return chosen
    if n_layers is None:
        return list(range(total))
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 1 <= n_layers <= total:
        raise ValueError(f"n_layers must be between 1 and {total} (this model's layers) or None, got {n_layers!r}")
    return list(range(n_layers))


def check_trace_options(
    method: object, top_k: object, n_paths: object, min_edge_flow: object, verify: object, steps: object = 5
) -> tuple[str, int, int, int]:
    """The trace's options, checked before anything runs: (method, top_k, n_paths, steps)."""
    method = check_choice(method, METHODS, "method")
    steps = check_positive_int(steps, "steps")
    top_k, n_paths = check_positive_int(top_k, "top_k"), check_positive_int(n_paths, "n_paths")
    if isinstance(min_edge_flow, bool) or not isinstance(min_edge_flow, int | float) or not 0 <= min_edge_flow <= 1:
        raise ValueError(f"min_edge_flow must be a number in [0, 1], got {min_edge_flow!r}")
    if not (isinstance(verify, bool) or verify == "all"):
        raise ValueError(f"verify must be True, False or 'all', got {verify!r}")
    return method, top_k, n_paths, steps


@dataclass
class FlowMetric:
    """What dst's prediction is measured by: ``log p(target)`` (target: the clean top
    prediction unless named), ``logit[target] - logit[foil]`` with a foil, or a callable of
    the logits [d_vocab] that returns a scalar tensor."""

    target: int | None = None
    foil: int | None = None
    fn: Callable[[Tensor], Tensor] | None = None
    names: tuple[str | None, str | None] = (None, None)

    @property
    def kind(self) -> str:
        return "custom" if self.fn is not None else "logit_diff" if self.foil is not None else "log_prob"

    def bind(self, clean_logits: Tensor) -> None:
        """Fix the target as the clean top prediction when none was named."""
        if self.fn is None and self.target is None:
            self.target = int(clean_logits.argmax())
            if self.target == self.foil:
                raise ValueError(
                    f"foil {self.names[1]!r} (id {self.foil}) is the clean top prediction, the default target; "
                    "name a target= or a different foil"
                )

    def __call__(self, logits: Tensor) -> Tensor:
        """The metric of one row of logits [d_vocab] (a scalar tensor, differentiable)."""
        if self.fn is not None:
            return self.fn(logits)
        if self.target is None:
            raise RuntimeError("the metric's target is not bound yet")
        if self.foil is not None:
            return logits[self.target].float() - logits[self.foil].float()
        return logits.float().log_softmax(-1)[self.target]

    def of_clean(self, logits: Tensor) -> Tensor:
        """Bind on the clean logits, then measure them (the gradient pass calls this, right
        after the forward pass): a value that is not one finite number stops the trace here,
        before any backward pass or knockout."""
        self.bind(logits.detach())
        value = self(logits)
        if self.fn is not None:
            if not isinstance(value, Tensor) or value.numel() != 1:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"metric must return a scalar tensor (one number) of the logits [d_vocab], got {got}")
            if not torch.isfinite(value.detach()).all():
                raise ValueError(f"metric returned {float(value.detach())} on the clean logits; it must be finite")
        return value

    def rows(self, logits: Tensor) -> Tensor:
        """The metric of each row of [n, d_vocab] logits: [n] floats."""
        return torch.stack([self(row).detach().float().reshape(()) for row in logits])

    def describe(self, model: HookedAutoModel, value: float) -> dict[str, Any]:
        def text(token: int | None) -> str | None:
            if token is None or model.tokenizer is None:
                return None
            return model.tokenizer.decode([token])

        formula = {
            "log_prob": "log p(target | dst)",
            "logit_diff": "logit(target) - logit(foil) at dst",
            "custom": "metric(logits at dst)",
        }[self.kind]
        return {
            "kind": self.kind,
            "formula": formula,
            "target": self.target,
            "target_str": text(self.target),
            "foil": self.foil,
            "foil_str": text(self.foil),
            "clean": value,
        }


def resolve_metric(model: HookedAutoModel, target: Any, foil: Any, metric: Any, question: Any = None) -> FlowMetric:
    """The metric of the question; a task (``question``) brings each example's own."""
    if isinstance(question, Task):
        refuse_with_task({"target": target, "foil": foil, "metric": metric}, "the task gives each example's metric")
        return FlowMetric()
    if metric is not None:
        if target is not None or foil is not None:
            raise ValueError("give metric= or target=/foil=, not both (a custom metric names its own tokens)")
        if not callable(metric):
            raise TypeError(f"metric must be a callable of the logits [d_vocab], got {type(metric).__name__}")
        return FlowMetric(fn=metric)
    target_id = None if target is None else token_id(model, target, "target")
    foil_id = None if foil is None else token_id(model, foil, "foil")
    if foil_id is not None and foil_id == target_id:
        raise ValueError(f"foil {foil!r} is the same token as target {target!r} (id {foil_id}); pick another foil")
    return FlowMetric(target=target_id, foil=foil_id, names=(target, foil))


def build_flow(
    model: HookedAutoModel,
    ids: Tensor,
    layer_flows: list[LayerFlow],
    *,
    src: int,
    dst: int,
    top_k: int,
    paths: list[FlowPath],
    edges: list[FlowEdge],
    method: str,
    metric: FlowMetric,
    value: float,
    notes: list[str],
    all_layers: dict[str, Any] | None = None,
) -> InformationFlow:
    """The result of a trace: ``top_heads`` are the ``top_k`` heads of highest positive score."""
    ranked = sorted(
        ((lf.layer, h.head, h.score) for lf in layer_flows for h in lf.heads), key=lambda item: (-item[2], item[:2])
    )
    return InformationFlow(
        layer_flows,
        src_pos=src,
        dst_pos=dst,
        tokens=ids[0].tolist(),
        top_heads=[(layer, head) for layer, head, score in ranked[:top_k] if score > 0],
        paths=paths,
        edges=edges,
        method=method,
        str_tokens=model.to_str_tokens(ids) if model.tokenizer is not None else None,
        metric=metric.describe(model, value),
        notes=notes,
        all_layers=all_layers,
    )
