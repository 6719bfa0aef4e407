"""Write heads: how much each head of a layer writes to the residual stream
(docs/mathematics.md#write-heads).

From the weights, ||OV[h]||_F (or ||OV[h] u^||_2 along a unit direction u); toward a token,
the signed direct logit attribution of each head at one position, whose shares are taken
over the writers (positive heads) with the suppressors listed beside them. The data-based
scores (the mean size of z[h] W_O[h] over real tokens) come from ``data_stats``.
"""

from __future__ import annotations

from torch import Tensor

from arrakis.circuits import heads as head_math
from arrakis.models import HookedAutoModel
from arrakis.tools.results import HeadSelection
from arrakis.tools.results.attribution import LogitAttribution


def weight_write_scores(model: HookedAutoModel, layer: int, u: Tensor | None) -> Tensor:
    """[head]: ||OV[h]||_F of the folded weights, or ||OV[h] u^||_2 along ``u``."""
    weights = model.head_weights(folded=True)
    W_V, W_O = weights.W_V[layer].float(), weights.W_O[layer].float()  # stacks may be bfloat16
    return head_math.ov_norms(W_V, W_O) if u is None else head_math.ov_along(W_V, W_O, u)


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
