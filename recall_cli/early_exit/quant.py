"""INT4 activation cache: group-wise 4-bit quantisation of hidden states, and the blob format.

What is stored for one item (a text chunk, a photo, a video or audio file) is the hidden state
after its exit block, every real token of every sequence of the item (padding removed), so the
refinement step can resume the remaining blocks without decoding the file or re-running the first
blocks again.

Quantisation (asymmetric, group-wise along the hidden dimension):
    every run of GROUP_SIZE consecutive channels of one token has its own fp16 `scale` and `low`:
        low   = min(x),  scale = (max(x) - min(x)) / 15
        q     = round((x - low) / scale)  in 0..15          (4 bits)
        x_hat = low + q * scale
    two codes share a byte (even channel in the low nibble, odd channel in the high nibble).
GROUP_SIZE = 32: measured on all-MiniLM-L6-v2 hidden states of the docstring corpus, the relative
error ||x - x_hat|| / ||x|| is 0.088-0.093 at group 32 at every exit block (0.070 at 16, 0.108-0.116
at 64, 0.128-0.143 at 128), and the full-depth embedding resumed from the dequantised state has
cosine >= 0.997 (mean 0.998) with the one from the exact state (64 docstrings; group 16 would give
0.999 but costs 1 byte per value).  benchmarks/bench_early_exit.py measures both on every run.
Storage: 0.5 byte per value + 4 bytes (two fp16) per 32 values = 0.625 byte per value, i.e. a
6.4x reduction from fp32.

Blob layout (little endian), version 2:
    magic   4s   b"RQ4C"
    version u8   2
    dtype   u8   dtype of the original hidden state (0 fp32, 1 fp16, 2 bf16)
    group   u16  group size
    dim     u32  hidden dimension D
    nseq    u32  number of sequences
    block   u16  blocks that had run when the state was taken: refinement resumes at this block
                 (the exit block, or an earlier un-adapted block once exits are healed)
    lengths nseq x u32   real tokens of each sequence (their sum is N)
    scales  N x G fp16   (G = ceil(D / group))
    lows    N x G fp16
    codes   N x G*group/2 bytes (channels padded with zeros up to G*group)
"""

from __future__ import annotations

import os
import struct

import numpy as np

GROUP_SIZE = 32
MAGIC = b"RQ4C"
VERSION = 2
LEVELS = 15  # 4 bits: codes 0..15

_DTYPES = ["float32", "float16", "bfloat16"]
_HEADER = struct.Struct("<4sBBHIIH")


class CacheFormatError(ValueError):
    """A cache blob that this version cannot read (other magic/version, or truncated)."""


def _torch():
    import torch

    return torch


def _numpy(x) -> np.ndarray:
    return _bits_to_float(_raw(x))


def quantize(x, group: int = GROUP_SIZE):
    """x [..., D] float -> (codes uint8 [..., Dp/2], scales fp16 [..., G], lows fp16 [..., G]) as
    numpy arrays.  D is padded with zeros up to a multiple of `group` (Dp = G * group); `group` must
    be even.  Done in numpy: small torch ops under OpenMP cost ~5 ms each on a busy 2-core CPU."""
    if group % 2:
        raise ValueError("group size must be even (two codes per byte)")
    x = _numpy(x).astype(np.float32, copy=False)
    dim = x.shape[-1]
    groups = -(-dim // group)
    if groups * group != dim:
        x = np.concatenate([x, np.zeros((*x.shape[:-1], groups * group - dim), np.float32)], axis=-1)
    g = x.reshape(*x.shape[:-1], groups, group)
    # scales and lows are stored in fp16: quantise against the rounded values so the codes match
    low16 = _halving(g, np.minimum).astype(np.float16)
    low = low16.astype(np.float32)
    scale16 = ((_halving(g, np.maximum) - low) / LEVELS).astype(np.float16)
    scale = np.maximum(scale16.astype(np.float32), 1e-8)
    q = np.subtract(g, low)  # in place from here: each pass over the tokens costs as much as a min
    np.divide(q, scale, out=q)
    np.rint(q, out=q)
    np.clip(q, 0, LEVELS, out=q)
    pairs = q.astype(np.uint8).reshape(*x.shape[:-1], groups * group // 2, 2)
    codes = pairs[..., 1] << 4
    codes |= pairs[..., 0]
    return codes, scale16[..., 0], low16[..., 0]


def _halving(g: np.ndarray, pick) -> np.ndarray:
    """The min or max (pick: np.minimum / np.maximum) over the last axis, keeping it: halves
    compared pairwise, 1.6x faster than numpy's reduction over a short last axis."""
    while g.shape[-1] > 1 and g.shape[-1] % 2 == 0:
        half = g.shape[-1] // 2
        g = pick(g[..., :half], g[..., half:])
    return g if g.shape[-1] == 1 else pick.reduce(g, axis=-1, keepdims=True)


def dequantize(codes, scales, lows, dim: int, group: int = GROUP_SIZE):
    """Inverse of quantize: float32 torch tensor [..., dim]."""
    torch = _torch()
    codes, scales, lows = (a if isinstance(a, np.ndarray) else a.detach().cpu().numpy() for a in (codes, scales, lows))
    q = np.stack([codes & 0x0F, codes >> 4], axis=-1).reshape(*codes.shape[:-1], codes.shape[-1] * 2)
    groups = scales.shape[-1]
    g = q.reshape(*q.shape[:-1], groups, group).astype(np.float32)
    x = lows.astype(np.float32)[..., None] + g * scales.astype(np.float32)[..., None]
    return torch.from_numpy(np.ascontiguousarray(x.reshape(*x.shape[:-2], groups * group)[..., :dim]))


def encode_blob(sequences, block: int, group: int = GROUP_SIZE) -> bytes:
    """Quantise the real tokens of one item's sequences (a list of [len_i, D] tensors, padding
    already removed), the state after `block` blocks, into one self-describing blob."""
    return encode_blobs([(sequences, block)], group)[0]


def encode_blobs(items: list[tuple[list, int]], group: int = GROUP_SIZE) -> list[bytes]:
    """encode_blob for many items, (sequences, block) each, with one quantisation over all their
    tokens: the same bytes (every token is quantised on its own), without numpy's per-call cost,
    which was ~3 ms an item, more than the blocks an exit saves on a short text."""
    for sequences, _ in items:
        if not sequences:
            raise ValueError("an item has at least one sequence")
    if not items:
        return []
    dim = int(items[0][0][0].shape[-1])
    codes, scales, lows = _quantize_in_parts(
        _all_tokens([seq for sequences, _ in items for seq in sequences], dim), group
    )
    blobs, start = [], 0
    for sequences, block in items:
        lengths = [int(seq.shape[0]) for seq in sequences]
        stop = start + sum(lengths)
        header = _HEADER.pack(MAGIC, VERSION, _dtype_code(sequences[0]), group, dim, len(lengths), block)
        blobs.append(
            b"".join(
                [
                    header,
                    struct.pack(f"<{len(lengths)}I", *lengths),
                    scales[start:stop].astype("<f2").tobytes(),
                    lows[start:stop].astype("<f2").tobytes(),
                    codes[start:stop].tobytes(),
                ]
            )
        )
        start = stop
    return blobs


PART_TOKENS = 4096  # below this, one thread: splitting costs more than it saves
_pool = None


def _quantize_in_parts(tokens: np.ndarray, group: int):
    """quantize() over row blocks on the cores the process may use (numpy lets go of the
    interpreter lock in each pass): tokens are quantised independently, so the bytes are the same.
    Single-threaded, a batch's INT4 cache took a third of a MiniLM block's CPU time, and two
    thirds of its wall time on 2 cores, where the blocks run on both."""
    global _pool
    parts = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 4)
    if parts < 2 or len(tokens) < PART_TOKENS:
        return quantize(tokens, group)
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="recall-int4")
    bounds = np.linspace(0, len(tokens), parts + 1).astype(int)
    done = list(_pool.map(lambda k: quantize(tokens[bounds[k] : bounds[k + 1]], group), range(parts)))
    return tuple(np.concatenate([part[i] for part in done]) for i in range(3))


def _all_tokens(sequences: list, dim: int) -> np.ndarray:
    """Every token of the sequences as one float32 [N, dim] array: one copy in numpy, no torch op
    (torch.cat and .float() run on OpenMP threads that cost ~0.4 s a batch on a busy CPU)."""
    raw = [_raw(seq).reshape(-1, dim) for seq in sequences]
    if all(part.dtype == np.uint16 for part in raw):  # all bfloat16: join the bits, convert once
        return _bits_to_float(np.concatenate(raw))
    return np.concatenate([_bits_to_float(part) for part in raw])


def _raw(x) -> np.ndarray:
    """A CPU tensor or array as numpy without conversion (bfloat16 as its uint16 bits)."""
    if isinstance(x, np.ndarray):
        return x
    x = x.detach().cpu()
    if x.dtype == _torch().bfloat16:
        return x.view(_torch().int16).numpy().view(np.uint16)
    return x.numpy()


def _bits_to_float(part: np.ndarray) -> np.ndarray:
    """float32 of an array from _raw: bfloat16 bits are the top half of a float32."""
    if part.dtype == np.uint16:
        return (part.astype(np.uint32) << 16).view(np.float32)
    return part.astype(np.float32, copy=False)


def _dtype_code(sequence) -> int:
    dtype_name = str(sequence.dtype).replace("torch.", "")
    return _DTYPES.index(dtype_name) if dtype_name in _DTYPES else 0


def blob_info(blob: bytes) -> dict:
    """The header of a blob: version, dtype, group, dim, lengths, block (and the derived sizes)."""
    if len(blob) < _HEADER.size:
        raise CacheFormatError("cache blob too short")
    magic, version, dtype_code, group, dim, nseq, block = _HEADER.unpack_from(blob, 0)
    if magic != MAGIC:
        raise CacheFormatError("not an INT4 cache blob")
    if version != VERSION:
        raise CacheFormatError(f"cache blob version {version} (this recall reads {VERSION})")
    lengths = list(struct.unpack_from(f"<{nseq}I", blob, _HEADER.size))
    groups = -(-dim // group)
    tokens = sum(lengths)
    expected = _HEADER.size + 4 * nseq + tokens * groups * (2 + 2 + group // 2)
    if len(blob) != expected:
        raise CacheFormatError(f"cache blob has {len(blob)} bytes, expected {expected}")
    return {
        "version": version,
        "dtype": _DTYPES[dtype_code],
        "group": group,
        "dim": dim,
        "block": block,
        "lengths": lengths,
        "tokens": tokens,
        "groups": groups,
        "bytes": len(blob),
    }


def decode_blob(blob: bytes, device=None, dtype=None) -> list:
    """The item's sequences as a list of [len_i, D] tensors (dequantised; dtype defaults to the
    dtype the hidden state had when it was stored)."""
    torch = _torch()
    info = blob_info(blob)
    tokens, groups, group, dim = info["tokens"], info["groups"], info["group"], info["dim"]
    offset = _HEADER.size + 4 * len(info["lengths"])
    size = tokens * groups
    scales = np.frombuffer(blob, "<f2", size, offset).reshape(tokens, groups)
    lows = np.frombuffer(blob, "<f2", size, offset + 2 * size).reshape(tokens, groups)
    codes = np.frombuffer(blob, np.uint8, tokens * groups * group // 2, offset + 4 * size)
    codes = codes.reshape(tokens, groups * group // 2)
    x = dequantize(codes, scales, lows, dim, group)
    x = x.to(device=device, dtype=dtype or getattr(torch, info["dtype"]))
    return list(torch.split(x, info["lengths"]))


def relative_error(exact, approx) -> float:
    """||exact - approx|| / ||exact|| over all values."""
    exact = exact.float()
    return float((exact - approx.float()).norm() / exact.norm().clamp(min=1e-12))
