"""What a task measures at dst, per example: ``metric(logits_at_dst, index) -> [b]``.

- ``logit_diff``: logit(answer) - logit(foil), the default when a foil is given. It compares
  two candidates directly, so it is linear in the final residual stream (up to the final
  norm) and does not saturate: Wang et al. 2022 use it for IOI.
- ``log_prob``: log softmax(logits)[answer], the default without a foil. It saturates near
  p = 1, where a patched head can change the logit a lot and log p hardly at all.
- a callable with the same signature, for anything else.

``index`` [b] holds the examples' indices in the task, so a metric reads each example's own
answer and foil however the examples were batched.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

Metric = Callable[[Tensor, Tensor], Tensor]  # (logits_at_dst [b, d_vocab], index [b]) -> [b]
METRICS = ("logit_diff", "log_prob")


def check_metric(metric: object, has_foil: bool) -> tuple[str, Metric | None]:
    """The metric's name ("logit_diff", "log_prob" or "custom") and the callable for "custom"."""
    if metric is None:
        return ("logit_diff" if has_foil else "log_prob"), None
    if callable(metric):
        return "custom", metric
    if not isinstance(metric, str) or metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected 'logit_diff', 'log_prob' or a callable")
    if metric == "logit_diff" and not has_foil:
        raise ValueError("metric 'logit_diff' needs a foil (answer - foil): pass foil=, or use metric='log_prob'")
    return metric, None


def picked(logits: Tensor, tokens: Tensor, index: Tensor) -> Tensor:
    """logits[i, tokens[index[i]]] for each row i: [b, d_vocab] -> [b]."""
    chosen = tokens[index.cpu()].to(logits.device)
    return logits.gather(-1, chosen[:, None])[:, 0]


def logit_diff(logits: Tensor, answer: Tensor, foil: Tensor, index: Tensor) -> Tensor:
    return picked(logits, answer, index) - picked(logits, foil, index)


def log_prob(logits: Tensor, answer: Tensor, index: Tensor) -> Tensor:
    return picked(logits.float().log_softmax(-1), answer, index)
