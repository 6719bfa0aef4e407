"""The original project's import paths keep working."""

import torch


def test_activation_cache_path_reexports_the_hooked_model():
    namespace: dict = {}
    exec("from arrakis.src.core_arrakis.activation_cache import *", namespace)
    config = namespace["HookedAutoConfig"](name="llama")
    model = namespace["HookedAutoModel"](config)
    output, cache = model(torch.randint(0, 50256, (1, 50)))
    assert output.logits.shape == (1, 50, 50257)
    assert isinstance(cache, namespace["ActivationCache"])
    import arrakis

    assert namespace["HookedAutoModel"] is arrakis.HookedAutoModel
