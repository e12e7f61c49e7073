"""Model registry: `--model NAME` -> a LayeredEncoder.

Entries are import paths so that naming a model costs nothing until it is loaded (keeps `--help`,
`stats` and unchanged re-index runs free of torch).
"""

from __future__ import annotations

import importlib

from recall_cli.errors import RecallError
from recall_cli.modalities import MODALITIES

# name -> "module:factory".  Each factory takes (device=None, dtype=None, weights=None).
REGISTRY: dict[str, str] = {
    "minilm": "recall_cli.models.minilm.model:load_minilm",
    "imagebind-huge": "recall_cli.models.imagebind.factory:load_imagebind_huge",
}

# Registered for tests and benchmarks only: hidden from --help, usable by name.
TEST_REGISTRY: dict[str, str] = {
    "imagebind-test": "recall_cli.models.imagebind.factory:load_imagebind_test",
}

# name -> "module:factory" of a light query encoder: the same full-depth text embedding without
# torch (factory takes weights=None), so that a cold query need not import it.
QUERY_ENCODERS: dict[str, str] = {
    "minilm": "recall_cli.models.minilm.light:load_light_minilm",
}

DEFAULT_MODEL = "minilm"
TEXT_ONLY_MODELS = ("minilm",)  # media through its text side, which names the file: a copy is not reused

# What each model can index, known without loading it (the indexer uses this to skip files early).
# A text model indexes photos, audio and video by their text side (models/mediatext): name words,
# metadata and the text inside an image.
MODEL_MODALITIES: dict[str, tuple[str, ...]] = {
    "minilm": MODALITIES,
    "imagebind-huge": MODALITIES,
    "imagebind-test": MODALITIES,
}


def known_models() -> list[str]:
    return list(REGISTRY)


def check_model_name(name: str) -> str:
    if name not in REGISTRY and name not in TEST_REGISTRY:
        raise RecallError(f"unknown model {name!r}; choose one of: {', '.join(REGISTRY)}")
    return name


_LOADED: dict[tuple, object] = {}


def load_model(name: str, device: str | None = None, dtype: str | None = None, weights=None):
    """The named model, ready for inference, on the chosen device.  Loaded once per process for
    the same arguments (batch queries, the watch server and tests reuse it)."""
    from recall_cli.models.device import precision_key

    key = (name, device, precision_key(dtype), str(weights) if weights else None)
    if key not in _LOADED:
        _LOADED[key] = build_model(name, device, dtype, weights)
    return _LOADED[key]


def build_model(name: str, device: str | None, dtype: str | None, weights):
    """A new instance, not shared (healing puts adapters on its own copy)."""
    target = REGISTRY.get(name) or TEST_REGISTRY.get(check_model_name(name))
    module_name, factory_name = target.split(":")
    factory = getattr(importlib.import_module(module_name), factory_name)
    return factory(device=device, dtype=dtype, weights=weights)


def load_query_encoder(name: str, weights=None):
    """The model's light query encoder (loaded once per process), or None when it has none: then
    query texts are embedded by the model itself."""
    target = QUERY_ENCODERS.get(name)
    if target is None:
        return None
    key = ("query-encoder", name, str(weights) if weights else None)
    if key not in _LOADED:
        module_name, factory_name = target.split(":")
        _LOADED[key] = getattr(importlib.import_module(module_name), factory_name)(weights=weights)
    return _LOADED[key]
