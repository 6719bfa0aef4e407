"""The edge graph of a model: who writes to the residual stream, who reads it, and which
writer -> reader edges exist (docs/mathematics.md#task-circuits).

Senders write to the residual stream: the embeddings (token, and learned positions where
the family has them: one sender), each head's output z[h] W_O[h] as it enters the residual
(with an attention post-norm, its scale frozen) and each MLP's output. Receivers read it:
each head's Q, K and V inputs separately (under grouped-query attention one K and one V
receiver per KV head, which all the group's query heads read), each MLP's input, and the
logits (the final norm's input). An edge u -> v exists when u writes before v reads: u in
an earlier layer, or attention -> MLP within a layer of a sequential family (in a
parallel-residual family the MLP reads the layer's input, as attention does, so those
edges do not exist).

Names are the library's: ``embed``, ``L3H2``, ``MLP3`` for senders; ``L3H2 (Q)``,
``L3H2 (K)`` (``L3KV1 (K)`` for KV head 1 under grouped-query attention), ``MLP3``,
``logits`` for receivers; an edge prints as ``L16H0 -> L17H3 (K)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from arrakis.models.config import ModelShape

SENDER_KINDS = ("embed", "head", "mlp")
RECEIVER_KINDS = ("head", "mlp", "logits")
CHANNELS = ("q", "k", "v")


@dataclass(frozen=True)
class Node:
    """A sender or a receiver. ``head`` is the query head (channel q, or a head sender) or the
    KV head (channels k and v under grouped-query attention, ``grouped``); ``channel`` is
    q, k or v for a head receiver, else None."""

    kind: str  # "embed" | "head" | "mlp" | "logits"
    layer: int = -1  # -1 for the embeddings; n_layers for the logits
    head: int | None = None
    channel: str | None = None
    grouped: bool = False  # a K or V receiver of a KV head under grouped-query attention

    @property
    def name(self) -> str:
        if self.kind == "embed":
            return "embed"
        if self.kind == "logits":
            return "logits"
        if self.kind == "mlp":
            return f"MLP{self.layer}"
        head = f"L{self.layer}{'KV' if self.grouped else 'H'}{self.head}"
        return head if self.channel is None else f"{head} ({self.channel.upper()})"

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class EdgeGraph:
    """Senders, receivers and the edges between them, for one model shape.

    ``senders`` are ordered embed, then per layer its heads and its MLP; ``receivers`` per
    layer its Q receivers (one per head), K and V receivers (one per KV head), its MLP, then
    the logits. ``edges`` [n_edges, 2] holds (sender index, receiver index) of every edge that
    exists, ordered by receiver then sender.
    """

    cfg: ModelShape
    senders: tuple[Node, ...]
    receivers: tuple[Node, ...]
    edges: Tensor

    @property
    def n_edges(self) -> int:
        return int(self.edges.shape[0])

    @cached_property
    def exists(self) -> Tensor:
        """[n_senders, n_receivers] bool: which edges exist."""
        out = torch.zeros(len(self.senders), len(self.receivers), dtype=torch.bool)
        out[self.edges[:, 0], self.edges[:, 1]] = True
        return out

    def edge_name(self, index: int) -> str:
        s, r = self.edges[index].tolist()
        return f"{self.senders[s].name} -> {self.receivers[r].name}"

    def edge_names(self) -> list[str]:
        return [self.edge_name(i) for i in range(self.n_edges)]

    def dense(self, per_edge: Tensor) -> Tensor:
        """Per-edge values [..., n_edges] as [..., n_senders, n_receivers] (zero where no edge)."""
        out = per_edge.new_zeros(*per_edge.shape[:-1], len(self.senders), len(self.receivers))
        out[..., self.edges[:, 0], self.edges[:, 1]] = per_edge
        return out

    def per_edge(self, dense: Tensor) -> Tensor:
        """[..., n_senders, n_receivers] values at the edges: [..., n_edges]."""
        return dense[..., self.edges[:, 0], self.edges[:, 1]]

    def receivers_of_layer(self, layer: int, kind: str) -> list[int]:
        """Indices of the receivers of ``kind`` ("head" or "mlp") in ``layer``."""
        return [i for i, r in enumerate(self.receivers) if r.kind == kind and r.layer == layer]


def sender_slot(node: Node) -> tuple[int, int]:
    """When a sender writes: (layer, 0) for attention, (layer, 1) for the MLP, before layer 0 for the embeddings."""
    return (-1, 0) if node.kind == "embed" else (node.layer, 0 if node.kind == "head" else 1)


def receiver_slot(node: Node, parallel: bool) -> tuple[int, int]:
    """When a receiver reads: attention at (layer, 0); the MLP at (layer, 1), or (layer, 0)
    where it reads the layer's input (parallel residual); the logits after every layer."""
    if node.kind == "mlp":
        return (node.layer, 0 if parallel else 1)
    return (node.layer, 0)


def edge_graph(cfg: ModelShape) -> EdgeGraph:
    """The edge graph of a model of shape ``cfg`` (``HookedAutoModel.cfg``)."""
    n_layers, n_heads, n_kv = cfg.n_layers, cfg.n_heads, cfg.n_kv_heads
    grouped = n_kv < n_heads
    senders = [Node("embed")]
    receivers: list[Node] = []
    for layer in range(n_layers):
        senders += [Node("head", layer, h) for h in range(n_heads)]
        senders.append(Node("mlp", layer))
        receivers += [Node("head", layer, h, "q") for h in range(n_heads)]
        for channel in ("k", "v"):
            receivers += [Node("head", layer, g, channel, grouped) for g in range(n_kv)]
        receivers.append(Node("mlp", layer))
    receivers.append(Node("logits", n_layers))
    parallel = bool(cfg.parallel_residual)
    pairs = [
        (s, r)
        for r, receiver in enumerate(receivers)
        for s, sender in enumerate(senders)
        if sender_slot(sender) < receiver_slot(receiver, parallel)
    ]
    return EdgeGraph(cfg, tuple(senders), tuple(receivers), torch.tensor(pairs, dtype=torch.long))
