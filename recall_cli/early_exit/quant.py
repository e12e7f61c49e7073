"""INT4 activation cache: group-wise 4-bit quantisation of hidden states, and the blob format.

What is stored for one item (a text chunk, a photo, a video or audio file) is the hidden state
after its exit block, every real token of every sequence of the item (padding removed), so the
refinement step can resume the remaining blocks without decoding the file or re-running the first
blocks again.

Quantisation (asymmetric, group-wise along the hidden dimension):
    every run of GROUP_SIZE consecutive channels of one token has its own fp16 `scale` and `low`:
        low   = fp16(min(x)),  scale = fp16((max(x) - low) / 15), or 1 where that is 0
        q     = round((x - low) * (1 / scale))  in 0..15    (4 bits; float32, ties to even)
        x_hat = low + q * scale
    two codes share a byte (even channel in the low nibble, odd channel in the high nibble).
    This is FBGEMM's 4-bit row-wise format (one row per group), so torch's fused kernel for it
    writes the codes where it exists; blobs of recall 0.x before this rule stored scale 0 for a
    constant group and divided by the scale, which decodes the same (q is 0 there; elsewhere
    the two roundings differ on 1 code in ~17,000, by one step).
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


def quantize(x, group: int = GROUP_SIZE):
    """x [..., D] float (a torch tensor or numpy array) -> (codes uint8 [..., Dp/2], scales fp16
    [..., G], lows fp16 [..., G]) as numpy arrays.  D is padded with zeros up to a multiple of
    `group` (Dp = G * group); `group` must be even.

    Through FBGEMM's fused row-wise 4-bit kernel (one pass, on torch's threads) where this torch
    has it: a batch of 7,360 MiniLM tokens took 3.6 ms of CPU against 8.6 ms for the same formula
    in separate torch ops (and 17-19 ms in numpy), the bytes the same."""
    torch = _torch()
    if group % 2:
        raise ValueError("group size must be even (two codes per byte)")
    x = _as_float_tensor(x)
    lead, dim = tuple(x.shape[:-1]), x.shape[-1]
    groups = -(-dim // group)
    x = x.reshape(-1, dim)
    if groups * group != dim:
        x = torch.nn.functional.pad(x, (0, groups * group - dim))
    rows = x.reshape(-1, group)  # one FBGEMM row per group of one token
    fused = _fused_kernel()
    codes, scales, lows = _split_rows(fused(rows.contiguous())) if fused else _quantize_rows(rows)
    return (
        codes.reshape(*lead, groups * group // 2).numpy(),
        scales.reshape(*lead, groups).numpy(),
        lows.reshape(*lead, groups).numpy(),
    )


def _fused_kernel():
    """torch's FBGEMM row-wise 4-bit quantisation (rows of float32 -> rows of codes, fp16 scale,
    fp16 low), or None in a torch built without it (then the torch ops below do the same)."""
    torch = _torch()
    try:
        return torch.ops.quantized.embedding_bag_4bit_prepack if FUSED_KERNEL else None
    except (AttributeError, RuntimeError):
        return None


FUSED_KERNEL = True  # False: always the separate torch ops (tests compare the two paths)


def _split_rows(packed):
    """FBGEMM's rows (codes, then the fp16 scale, then the fp16 low) as the three arrays."""
    torch = _torch()
    half = packed.shape[1] - 4
    codes = packed[:, :half].contiguous()
    scales = packed[:, half : half + 2].contiguous().view(torch.float16)
    lows = packed[:, half + 2 :].contiguous().view(torch.float16)
    return codes, scales, lows


def _quantize_rows(rows):
    """The format's formula in torch ops on one thread (each a pass or two over memory): [R, group]
    float32 -> codes [R, group/2] uint8, scales [R] fp16, lows [R] fp16."""
    from recall_cli.models.device import one_torch_thread

    torch = _torch()
    with one_torch_thread():
        low16 = rows.amin(dim=-1).to(torch.float16)
        low = low16.to(torch.float32)
        scale16 = ((rows.amax(dim=-1) - low) / LEVELS).to(torch.float16)
        scale16 = torch.where(scale16 == 0, torch.ones_like(scale16), scale16)
        inverse = 1 / scale16.to(torch.float32)
        q = torch.sub(rows, low[:, None]).mul_(inverse[:, None]).round_().clamp_(0, LEVELS)
        pairs = q.reshape(len(rows), -1, 2)
        codes = pairs[..., 1].mul_(16).add_(pairs[..., 0]).to(torch.uint8)  # odd channel high
        return codes, scale16, low16


def _as_float_tensor(x):
    """A CPU float32 torch tensor of x (the same tensor when it already is one)."""
    torch = _torch()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return x.detach().to(device="cpu", dtype=torch.float32)


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
    from recall_cli.models.device import one_torch_thread

    with one_torch_thread():  # the join: torch.cat on two threads took 190 ms a batch on a busy CPU
        tokens = _all_tokens([seq for sequences, _ in items for seq in sequences], dim)
    codes, scales, lows = quantize(tokens, group)
    # little-endian views (no copy on a little-endian machine); each blob is one join of its header
    # and views into these arrays: one copy of its bytes, not three
    scales, lows = scales.astype("<f2", copy=False), lows.astype("<f2", copy=False)
    blobs, start = [], 0
    for sequences, block in items:
        lengths = [int(seq.shape[0]) for seq in sequences]
        stop = start + sum(lengths)
        header = _HEADER.pack(MAGIC, VERSION, _dtype_code(sequences[0]), group, dim, len(lengths), block)
        parts = (scales[start:stop], lows[start:stop], codes[start:stop])
        blobs.append(b"".join([header, struct.pack(f"<{len(lengths)}I", *lengths), *map(memoryview, parts)]))
        start = stop
    return blobs


def _all_tokens(sequences: list, dim: int):
    """Every token of the sequences as one [N, dim] tensor, in their own dtype when they share it
    (the quantisation reads it once).  No copy when they already lie one after another in one
    tensor, as the states of one capture do (encode.item_states: views of one gathered tensor)."""
    torch = _torch()
    parts = [torch.as_tensor(seq).detach().cpu().reshape(-1, dim) for seq in sequences]
    if len(parts) == 1:
        return parts[0]
    if len({part.dtype for part in parts}) > 1:
        return torch.cat([part.float() for part in parts])
    adjacent = _adjacent(parts, dim)
    return adjacent if adjacent is not None else torch.cat(parts)


def _adjacent(parts: list, dim: int):
    """The parts as one view of their storage when each starts where the one before ends, else None."""
    torch = _torch()
    first = parts[0]
    storage, position = first.untyped_storage().data_ptr(), first.storage_offset()
    for part in parts:
        if part.untyped_storage().data_ptr() != storage or part.storage_offset() != position:
            return None
        if part.numel() and not part.is_contiguous():
            return None
        position += part.numel()
    return torch.as_strided(first, ((position - first.storage_offset()) // dim, dim), (dim, 1))


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
