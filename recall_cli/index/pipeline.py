"""Encode units into stored vectors, with early exit (early_exit/encode.py) and the INT4 activation cache
(quant.py): a unit that stops before full depth gets its coarse embedding and the quantised hidden
state at its exit block; a full-depth unit gets its fine embedding and no cache."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recall_cli.modalities import batch_size
from recall_cli.models.base import LayeredEncoder, Unit
from recall_cli.profiling import stage


@dataclass
class Encoded:
    vector: np.ndarray | None  # unit-norm float32, None when encoding failed
    exit_block: int = 0
    depth: int = 0
    refined: bool = False  # vector is the full-depth embedding
    cache: bytes | None = None  # INT4 activation at the exit block, for later refinement
    adapter_version: int = 0  # healed adapters the coarse vector was made with (0: none / fine)
    error: str | None = None


def encode_units(model: LayeredEncoder, units: list[Unit], full: bool = False, policy=None) -> list[Encoded]:
    """One Encoded per unit, in order.  A batch that fails is retried unit by unit so one bad
    input costs only itself.  `full`: every unit runs every block; else `policy` (an
    policy.ExitPolicy; default: policy.parse_policy(None), i.e. $RECALL_EXIT_POLICY or full depth
    until a predictor exists) picks each unit's exit block."""
    from recall_cli.early_exit.policy import FullDepthPolicy, parse_policy

    policy = FullDepthPolicy() if full else (policy or parse_policy(None))
    results: list[Encoded | None] = [None] * len(units)
    by_modality: dict[str, list[int]] = {}
    for index, unit in enumerate(units):
        by_modality.setdefault(unit.modality, []).append(index)
    for modality, indices in by_modality.items():
        if modality == "text":  # similar lengths together: less padding per batch
            indices = sorted(indices, key=lambda i: len(units[i].data))
        size = batch_size(modality)
        for start in range(0, len(indices), size):
            batch = indices[start : start + size]
            for index, encoded in zip(
                batch, _encode_batch(model, modality, [units[i] for i in batch], policy), strict=True
            ):
                results[index] = encoded
    return results  # type: ignore[return-value]


def _encode_batch(model: LayeredEncoder, modality: str, units: list[Unit], policy) -> list[Encoded]:
    from recall_cli.early_exit.encode import encode_with_exits
    from recall_cli.early_exit.quant import encode_blob

    try:
        out = encode_with_exits(model, modality, [unit.data for unit in units], policy)
        vectors = out.vectors.numpy()
        results = []
        for vector, exit_block, states, block in zip(vectors, out.exits, out.states, out.state_blocks, strict=True):
            refined = exit_block == out.depth
            with stage("INT4 packing"):
                cache = (
                    encode_blob(states, block if block is not None else exit_block) if states and not refined else None
                )
            results.append(
                Encoded(vector, exit_block, out.depth, refined, cache, 0 if refined else out.adapter_version)
            )
        return results
    except Exception as error:  # isolate the failing unit below
        if len(units) == 1:
            return [Encoded(None, error=f"encoding failed: {type(error).__name__}: {error}".splitlines()[0])]
    return [encoded for unit in units for encoded in _encode_batch(model, modality, [unit], policy)]
