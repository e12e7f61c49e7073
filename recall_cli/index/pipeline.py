"""Encode units into stored vectors, with early exit (early_exit/encode.py) and the INT4 activation cache
(quant.py): a unit that stops before full depth gets its coarse embedding and the quantised hidden
state at its exit block; a full-depth unit gets its fine embedding and no cache."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from recall_cli.modalities import batch_size
from recall_cli.models.base import LayeredEncoder, Unit
from recall_cli.profiling import stage

SNIPPET_CHARS = 2000  # a whole chunk of text fits: results can show the part that matched


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
    from recall_cli.early_exit.encode import live_taps
    from recall_cli.early_exit.policy import FullDepthPolicy, parse_policy
    from recall_cli.models.device import encode_workers, map_batches

    policy = FullDepthPolicy() if full else (policy or parse_policy(None))
    results: list[Encoded | None] = [None] * len(units)
    by_modality: dict[str, list[int]] = {}
    for index, unit in enumerate(units):
        by_modality.setdefault(unit.modality, []).append(index)
    batches = []
    for modality, indices in by_modality.items():
        if modality == "text":  # similar lengths together: less padding per batch; longest first
            indices = sorted(indices, key=lambda i: len(units[i].data), reverse=True)
        size = batch_size(modality)
        batches += [(modality, indices[start : start + size]) for start in range(0, len(indices), size)]

    def encode_batch(job):
        modality, batch = job
        return _encode_batch(model, modality, [units[i] for i in batch], policy)

    # calibration's taps record each full-depth batch in the order encoded: those run one at a time
    workers = 1 if live_taps() else encode_workers(model, len(batches))
    for (_, batch), encoded_batch in zip(batches, map_batches(encode_batch, batches, workers), strict=True):
        for index, encoded in zip(batch, encoded_batch, strict=True):
            results[index] = encoded
    return results  # type: ignore[return-value]


def _encode_batch(model: LayeredEncoder, modality: str, units: list[Unit], policy) -> list[Encoded]:
    from recall_cli.early_exit.encode import encode_with_exits
    from recall_cli.early_exit.quant import encode_blobs

    try:
        out = encode_with_exits(model, modality, [unit.data for unit in units], policy)
        cached = [
            i
            for i, (states, exit_block) in enumerate(zip(out.states, out.exits, strict=True))
            if states and exit_block < out.depth
        ]
        with stage("INT4 packing"):  # one quantisation for the whole batch
            blobs = encode_blobs([(out.states[i], _resume_block(out, i)) for i in cached])
        cache_of = dict(zip(cached, blobs, strict=True))
        return [
            Encoded(
                vector,
                exit_block,
                out.depth,
                exit_block == out.depth,
                cache_of.get(i),
                0 if exit_block == out.depth else out.adapter_version,
            )
            for i, (vector, exit_block) in enumerate(zip(out.vectors.numpy(), out.exits, strict=True))
        ]
    except Exception as error:  # isolate the failing unit below
        if len(units) == 1:
            return [Encoded(None, error=f"encoding failed: {type(error).__name__}: {error}".splitlines()[0])]
    return [encoded for unit in units for encoded in _encode_batch(model, modality, [unit], policy)]


def _resume_block(out, item: int) -> int:
    """Where refinement of a cached item resumes: the block its state was taken at."""
    block = out.state_blocks[item]
    return block if block is not None else out.exits[item]


def unit_row(entry, content_hash: str, unit: Unit, result: Encoded, model_name: str) -> dict:
    """The table row of one encoded unit of a scanned file (index.scan.FileEntry)."""
    from recall_cli.models.mediatext import meta_columns
    from recall_cli.storage.schema import unit_id

    return {
        "id": unit_id(entry.path, unit.chunk),
        "path": entry.path,
        "root": entry.root,
        "hash": content_hash,
        "chunk": unit.chunk,
        "modality": unit.modality,
        "snippet": unit.snippet[:SNIPPET_CHARS],
        "size": entry.size,
        "mtime_ns": entry.mtime_ns,
        "model": model_name,
        "vector": result.vector,  # the write takes the arrays as one matrix (storage/rowtable.py)
        "exit_block": result.exit_block,
        "depth": result.depth,
        "refined": result.refined,
        "cache": result.cache,
        "adapter_version": result.adapter_version,
        "indexed_at": time.time(),
        **meta_columns(unit.meta),
    }
