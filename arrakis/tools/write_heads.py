"""Write heads: how much each head of a layer writes to the residual stream
(docs/mathematics.md#write-heads).

From the weights, ||OV[h]||_F (or ||OV[h] u^||_2 along a unit direction u); toward a token,
the signed direct logit attribution of each head at one position, whose shares are taken
over the writers (positive heads) with the suppressors listed beside them. The data-based
scores (the mean size of z[h] W_O[h] over real tokens) come from ``data_stats``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from arrakis.circuits import heads as head_math
from arrakis.models import HookedAutoModel
from arrakis.tasks import Task
from arrakis.tools.results import HeadSelection
from arrakis.tools.results.attribution import LogitAttribution
from arrakis.tools.task_means import attribute


def weight_write_scores(model: HookedAutoModel, layer: int, u: Tensor | None) -> Tensor:
    """[head]: ||OV[h]||_F of the folded weights, or ||OV[h] u^||_2 along ``u``."""
    weights = model.head_weights(folded=True)
    W_V, W_O = weights.W_V[layer].float(), weights.W_O[layer].float()  # stacks may be bfloat16
    return head_math.ov_norms(W_V, W_O) if u is None else head_math.ov_along(W_V, W_O, u)


def answer_writers(
    model: HookedAutoModel,
    layer: int,
    threshold: float,
    input_ids: Any,
    attention_mask: Tensor | None,
    direction: Tensor | None,
    batch_size: int | None,
    token: Any,
    pos: int | None,
    foil: Any,
) -> HeadSelection | None:
    """The writers of a token on one prompt, or of each example's answer of a task (the mean
    attribution); None when the question is not about a token (write sizes instead)."""
    if isinstance(input_ids, Task):
        if direction is not None or batch_size is not None:
            raise ValueError(
                "a task's write heads are those writing its answers: direction= and batch_size= go with prompts"
            )
        return token_writers(attribute(model, input_ids, token, pos, foil, attention_mask, None), layer, threshold)
    if token is None:
        for what, value in (("foil", foil), ("pos", pos)):
            if value is not None:
                raise ValueError(f"{what}= goes with token= (the logit attributed at pos); pass token= too")
        return None
    if input_ids is None:
        raise ValueError("token= attributes a logit on a prompt: pass input_ids too")
    if direction is not None:
        raise ValueError("give token= or direction=, not both")
    return token_writers(attribute(model, input_ids, token, pos, foil, attention_mask, None), layer, threshold)


def token_writers(attribution: LogitAttribution, layer: int, threshold: float) -> HeadSelection:
    """The heads of ``layer`` that write the attributed token: shares over the positive
    heads, every head's signed score kept, the suppressors beside them."""
    signed = attribution.heads[layer]
    selection = HeadSelection.from_scores(layer, signed.clamp_min(0), threshold, "logit-attribution")
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
