"""Encode units into stored vectors.  Today: full depth.  Early exit plugs in here (issue 4)
through the same layered-encoder interface."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .models.base import LayeredEncoder, Unit

BATCH_SIZE = {"text": 32, "image": 8, "video": 2, "audio": 8}


@dataclass
class Encoded:
    vector: np.ndarray | None  # unit-norm float32, None when encoding failed
    exit_block: int = 0
    depth: int = 0
    refined: bool = False  # vector is the full-depth embedding
    cache: bytes | None = None  # INT4 activation at the exit block, for later refinement
    error: str | None = None


def encode_units(model: LayeredEncoder, units: list[Unit]) -> list[Encoded]:
    """One Encoded per unit, in order.  A batch that fails is retried unit by unit so one bad
    input costs only itself."""
    results: list[Encoded | None] = [None] * len(units)
    by_modality: dict[str, list[int]] = {}
    for index, unit in enumerate(units):
        by_modality.setdefault(unit.modality, []).append(index)
    for modality, indices in by_modality.items():
        if modality == "text":  # similar lengths together: less padding per batch
            indices = sorted(indices, key=lambda i: len(units[i].data))
        size = BATCH_SIZE.get(modality, 8)
        for start in range(0, len(indices), size):
            batch = indices[start:start + size]
            for index, encoded in zip(batch, _encode_batch(model, modality, [units[i] for i in batch])):
                results[index] = encoded
    return results  # type: ignore[return-value]


def _encode_batch(model: LayeredEncoder, modality: str, units: list[Unit]) -> list[Encoded]:
    depth = model.depth(modality)
    try:
        vectors = model.encode(modality, [unit.data for unit in units]).cpu().numpy()
        return [Encoded(vector, depth, depth, True) for vector in vectors]
    except Exception as error:  # noqa: BLE001 - isolate the failing unit below
        if len(units) == 1:
            return [Encoded(None, error=f"encoding failed: {type(error).__name__}: {error}".splitlines()[0])]
    return [encoded for unit in units for encoded in _encode_batch(model, modality, [unit])]
