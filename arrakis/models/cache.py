"""The activation cache: a read-only mapping from hook name to tensor.

>>> import torch
>>> from arrakis import HookedAutoConfig, HookedAutoModel
>>> model = HookedAutoModel(HookedAutoConfig("gpt2", n_layers=2))
>>> _, cache = model.run_with_cache(torch.tensor([[1, 2, 3]]), names=lambda n: "pattern" in n)
>>> list(cache)
['blocks.0.attn.hook_pattern', 'blocks.1.attn.hook_pattern']
>>> tuple(cache["pattern", 1].shape)  # [batch, head, query_pos, key_pos]
(1, 8, 3, 3)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from torch import Tensor

from arrakis.models.config import ModelShape
from arrakis.models.hook_points import HookNameError, explain_unknown, resolve_key


class ActivationCache(Mapping[str, Tensor]):
    """Activations of one forward pass, keyed by hook name (see ``arrakis.models.hook_points``).

    Keys may also be TransformerLens short forms: ``cache["pattern", 0]`` is
    ``cache["blocks.0.attn.hook_pattern"]``. Asking for a name the model has but this run did
    not keep, or for a name the model does not have, raises a KeyError that says which.
    """

    def __init__(self, activations: dict[str, Tensor], cfg: ModelShape, valid_names: list[str]) -> None:
        self._data = dict(activations)
        self.cfg = cfg
        self._valid = valid_names

    def __getitem__(self, key: object) -> Tensor:
        name = resolve_key(key)
        if isinstance(name, str) and name in self._data:
            return self._data[name]
        if name in self._valid:
            raise HookNameError(
                f"{name!r} was not kept by this run (it cached {len(self._data)} names); "
                f"pass it in run_with_cache(..., names=...)"
            )
        raise HookNameError(explain_unknown(name, self.cfg, self._valid))

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return resolve_key(key) in self._data

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations of a {self.cfg.family} model)"
