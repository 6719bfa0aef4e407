"""Weights straight from a safetensors checkpoint, without building the model.

Weight-based analyses (write and read scores, composition) need only the attention and
norm tensors. ``Checkpoint`` opens a local folder (``config.json`` plus one or several
``*.safetensors`` shards, with or without ``model.safetensors.index.json``) and reads those
tensors one at a time with ``safe_open``; nothing else is loaded, so a 7B checkpoint's
per-head weights fit in a few GiB.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor
from transformers import AutoConfig

from arrakis.models.adapters import FamilyAdapter, adapter_for
from arrakis.models.config import ModelShape, model_shape
from arrakis.models.load_errors import ModelNotFoundError, reading
from arrakis.models.loading import check_config
from arrakis.models.weights import HeadWeights, Linear, Norm, stack_head_weights
from arrakis.progress import progress as progress_bar

logger = logging.getLogger(__name__)


class Checkpoint:
    """A local safetensors checkpoint, read lazily, tensor by tensor."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()
        if self.folder.is_file():
            self.folder = self.folder.parent
        if not (self.folder / "config.json").is_file():
            raise ModelNotFoundError(f"no config.json in {str(self.folder)!r}: weights_only needs a checkpoint folder")
        check_config(self.folder)  # unreadable JSON or an unsupported family, named before anything else
        self.config = AutoConfig.from_pretrained(self.folder, local_files_only=True)
        self.adapter: FamilyAdapter = adapter_for(self.config.model_type)
        self.files = self._weight_map()
        self.prefix = self._layer_prefix()
        o_shape = self.shape_of(self.name(0, self.adapter.o, "weight"))
        o_in = o_shape[0 if self.adapter.conv1d else 1]
        n_heads = getattr(self.config, self.adapter.fields["n_heads"])
        self.cfg: ModelShape = model_shape(self.adapter, self.config, d_head=o_in // n_heads)

    def _weight_map(self) -> dict[str, Path]:
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            with reading(index, "it is not a valid shard index"):
                weight_map = json.loads(index.read_text())["weight_map"]
            return {name: self.folder / file for name, file in weight_map.items()}
        shards = sorted(self.folder.glob("*.safetensors"))
        if not shards:
            raise ModelNotFoundError(f"no *.safetensors files in {str(self.folder)!r}")
        files = {}
        for shard in shards:  # each header is read here, so a truncated shard is named before any tensor
            with reading(shard, "it is truncated or corrupt"), safe_open(shard, framework="pt") as f:
                files.update(dict.fromkeys(f.keys(), shard))
        return files

    def _layer_prefix(self) -> str:
        # Causal-LM checkpoints name layers "model.layers.0..."; base-model ones "layers.0...".
        candidates = [self.adapter.layers, self.adapter.layers.split(".", 1)[-1]]
        for prefix in candidates:
            if f"{prefix}.0.{self.adapter.q}.weight" in self.files:
                return prefix
        raise ValueError(
            f"this {self.adapter.family} checkpoint has no tensor "
            f"{candidates[0]}.0.{self.adapter.q}.weight (nor under {candidates[1]}.*)"
        )

    def name(self, layer: int, path: str, kind: str) -> str:
        return f"{self.prefix}.{layer}.{path}.{kind}"

    # Each read opens its shard and closes it again: a shard stays memory-mapped only while
    # it is open, and mapped pages that were read count as resident memory, so keeping the
    # shards open would hold the whole checkpoint in memory beside the stacked weights.

    def shape_of(self, name: str) -> list[int]:
        with reading(self.files[name], "it is truncated or corrupt"), safe_open(self.files[name], framework="pt") as f:
            return list(f.get_slice(name).get_shape())

    def tensor(self, name: str) -> Tensor | None:
        """One tensor, read from its shard (None if the checkpoint has no such tensor)."""
        if name not in self.files:
            return None
        with reading(self.files[name], "it is truncated or corrupt"), safe_open(self.files[name], framework="pt") as f:
            return f.get_tensor(name)

    def layer_tensors(self, layer: int) -> tuple[Linear, Norm]:
        def linear(path: str) -> tuple[Tensor, Tensor | None]:
            weight = self.tensor(self.name(layer, path, "weight"))
            if weight is None:
                raise ValueError(f"the checkpoint has no {self.name(layer, path, 'weight')}")
            # Conv1D (GPT-2) stores [in, out]; nn.Linear [out, in]
            return (weight.T if self.adapter.conv1d else weight), self.tensor(self.name(layer, path, "bias"))

        def norm(path: str) -> tuple[Tensor, Tensor | None]:
            return self.tensor(self.name(layer, path, "weight")), self.tensor(self.name(layer, path, "bias"))

        return linear, norm

    def head_weights(
        self, *, folded: bool = True, dtype: torch.dtype = torch.float32, progress: bool = True
    ) -> HeadWeights:
        """Per-head weights of every layer, read one layer at a time (see weights.py)."""

        def layers() -> Iterator[tuple[Linear, Norm]]:
            for layer in progress_bar(range(self.cfg.n_layers), "reading weights", "layer", enabled=progress):
                yield self.layer_tensors(layer)

        with torch.no_grad():
            return stack_head_weights(layers(), self.adapter, self.cfg, folded=folded, dtype=dtype)

    def embedding(self) -> Tensor | None:
        """The token embedding matrix [d_vocab, d_model], if the checkpoint has it."""
        for name in (self.adapter.embed, self.adapter.embed.split(".", 1)[-1]):
            weight = self.tensor(name + ".weight")
            if weight is not None:
                return weight
        return None
