"""One head's attention pattern: query positions (rows) x key positions (columns).

Cell (i, j) is A[i, j], how much query position i attends to key position j; each row sums
to 1 and, in a causal model, the upper triangle (j > i) is 0. Tokens label both axes, so
a previous-token head shows as the subdiagonal and an induction head as a stripe offset by
the length of the repeated segment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from arrakis.viz.common import heatmap, new_figure, tick_step, token_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from torch import Tensor

MAX_TOKEN_LABELS = 80  # label every position up to this length, every k-th beyond


def plot_attention_pattern(
    pattern: Tensor | Mapping[str, Tensor],
    tokens: Sequence[Any] | None = None,
    *,
    layer: int | None = None,
    head: int | None = None,
    batch: int = 0,
) -> Figure:
    """Heatmap of one head's pattern [query_pos, key_pos], token labels on both axes.

    ``pattern`` is [query_pos, key_pos]; a [head, query_pos, key_pos] or the cache's
    [batch, head, query_pos, key_pos] pattern needs ``head`` (and ``batch``, default 0) to
    pick one. An activation cache (``model.run_with_cache``) with ``layer`` plots that
    layer's pattern: ``plot_attention_pattern(cache, tokens, layer=1, head=2)``. ``tokens``
    (strings or ids, one per position, e.g. ``model.to_str_tokens(ids)``) label the axes;
    ``layer`` and ``head`` name the head in the title.
    """
    import torch

    if isinstance(pattern, Mapping):  # an activation cache: models know nothing of plots
        if layer is None:
            raise ValueError("plotting a cache's pattern needs layer= (and head=)")
        pattern = pattern["pattern", layer]
        if pattern.dim() != 4:
            raise ValueError(
                f"this cache kept the layer {layer} pattern as shape {tuple(pattern.shape)}, not "
                "[batch, head, query_pos, key_pos]; run run_with_cache without a transform to plot it"
            )
    values = torch.as_tensor(pattern).detach()
    if values.dim() == 4:  # [batch, head, query_pos, key_pos]
        values = values[_check(batch, values.shape[0], "batch", "sequences")]
    if values.dim() == 3:  # [head, query_pos, key_pos]
        if head is None:
            raise ValueError(f"pattern holds {values.shape[0]} heads; pass head= to pick one")
        values = values[_check(head, values.shape[0], "head", "heads")]
    if values.dim() != 2:
        raise ValueError(
            f"pattern must be [query_pos, key_pos] (or with head/batch axes), got shape {tuple(values.shape)}"
        )
    n_query, n_key = values.shape
    if tokens is not None and len(tokens) != n_key:
        raise ValueError(f"tokens has {len(tokens)} entries but the pattern covers {n_key} key positions")
    fig = new_figure(min(16.0, max(4.5, 0.2 * n_key + 2.5)), min(15.0, max(4.0, 0.2 * n_query + 1.5)))
    ax = fig.add_subplot()
    heatmap(ax, values.float().cpu().numpy(), cmap="Blues", vmin=0.0, vmax=1.0, label="attention")
    if tokens is None:
        tokens = list(range(n_key))
    # a cache kept with a transform may hold only the last query rows: align them to the end
    query_tokens = list(tokens)[len(tokens) - n_query :]
    for axis, names, rotation in ((ax.xaxis, list(tokens)[:n_key], 90), (ax.yaxis, query_tokens, 0)):
        step = tick_step(len(names), MAX_TOKEN_LABELS)
        axis.set_ticks(range(0, len(names), step), [token_label(t) for t in names[::step]], rotation=rotation)
        axis.set_tick_params(labelsize=8 if len(names) <= 40 else 6)
    ax.set(xlabel="key position", ylabel="query position")
    name = (f"L{layer}" if layer is not None else "") + (f"H{head}" if head is not None else "")
    ax.set_title(f"attention pattern {name}".strip())
    return fig


def _check(index: int, size: int, what: str, plural: str) -> int:
    if not -size <= index < size:
        raise IndexError(f"{what} {index} is out of range: the pattern has {size} {plural} (0-{size - 1})")
    return index
