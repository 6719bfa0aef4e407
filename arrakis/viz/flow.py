"""Plot of an information-flow trace: flow at dst per layer, and what each head carries."""

from __future__ import annotations

from typing import Any


def plot_information_flow(flow: Any, ax: Any = None) -> Any:
    """Left: f_l(dst) per analysed layer; right: flow carried into dst per (layer, head)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    if ax is None:
        _, (ax, ax_heads) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1, 1.4]})
    else:
        ax_heads = None
    layers = [lf.layer for lf in flow.layers]
    ax.plot(layers, list(flow), marker="o")
    ax.set(xlabel="layer", ylabel="flow src -> dst", ylim=(0, 1.05), title=f"{flow.src_pos} -> {flow.dst_pos}")
    if ax_heads is not None:
        carried = np.array([[h.carried for h in lf.heads] for lf in flow.layers])  # [layer, head]
        image = ax_heads.imshow(carried.T, aspect="auto", cmap="viridis", origin="lower")
        ax_heads.set(xlabel="layer", ylabel="head", title="flow carried into dst")
        ax_heads.set_xticks(range(len(layers)), layers)
        ax_heads.figure.colorbar(image, ax=ax_heads)
    return ax
