"""arrakis: find the attention heads that write to and read from the residual stream.

>>> from arrakis import HookedAutoConfig, HookedAutoModel, WriteReadAnalyzer
>>> HookedAutoModel(HookedAutoConfig("gpt2", n_layers=2)).cfg.n_heads
8
"""

from arrakis.lazy import lazy_exports

# Everything is loaded on first use: ``import arrakis`` (and the command line's argument
# checks) import neither torch nor transformers, and the import direction (docs/architecture.md)
# is kept: the models, then the tools and the bench above them.
_MODELS = (
    "ActivationCache",
    "HeadWeights",
    "HookedAutoConfig",
    "HookedAutoModel",
    "HookNameError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelShape",
    "UnsupportedArchitectureError",
    "load_model",
    "supported_families",
)
_LAZY = {name: "arrakis.models" for name in _MODELS}
_LAZY |= {"WriteReadAnalyzer": "arrakis.tools", "BaseInterpretabilityBench": "arrakis.bench"}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "ActivationCache",
    "BaseInterpretabilityBench",
    "HeadWeights",
    "HookNameError",
    "HookedAutoConfig",
    "HookedAutoModel",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelShape",
    "UnsupportedArchitectureError",
    "WriteReadAnalyzer",
    "load_model",
    "supported_families",
]
__version__ = "0.1.0"
