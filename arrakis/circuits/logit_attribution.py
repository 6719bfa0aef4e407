r"""Direct logit attribution (docs/mathematics.md#direct-logit-attribution): how much each component's
output, as it stands in the final residual stream, adds to one logit (or a logit
difference) through the unembedding, with the final norm's per-token scale frozen at its
clean value (TransformerLens's ``apply_ln_to_stack``).

The final residual at position p is a sum of components c (embeddings, each head's
z[h] W_O[h], each layer's b_O, each MLP's output): x = sum_c c. The final norm is
g * (x - mean(x)) / s + beta (LayerNorm) or g * x / s (RMSNorm), s its per-token scale, so
with s frozen the logit of token t is linear in the components:

    logit_t = sum_c (centre(c) / s) . (g * W_U[:, t]) + beta . W_U[:, t] + b_U[t]

and with a foil, W_U[:, t] - W_U[:, foil]. Folded, W_U' = diag(g) W_U (centred over d_model
for LayerNorm) and b_U' = b_U + beta W_U, which is what ``direction`` and ``bias`` are here.
The contributions add up to the logit exactly: that is the test.
"""

from __future__ import annotations

from torch import Tensor


def final_scale(resid: Tensor, norm: str, eps: float) -> Tensor:
    """The final norm's per-token scale s of residual vectors [..., d_model] -> [...]."""
    x = resid.float()
    if norm == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    return (x.pow(2).mean(-1) + eps).sqrt()


def contributions(parts: Tensor, scale: Tensor, direction: Tensor, norm: str) -> Tensor:
    """Each part's direct contribution to the logit (difference): parts [..., d_model] ->
    [...], ``scale`` the frozen final-norm scale (a scalar), ``direction`` the folded
    unembedding column (difference) [d_model]."""
    parts = parts.float()
    if norm == "layernorm":
        parts = parts - parts.mean(-1, keepdim=True)
    return parts @ direction.float() / scale
