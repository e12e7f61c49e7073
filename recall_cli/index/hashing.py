"""Content hashes: BLAKE3 of the whole file, hex.  A moved or copied file keeps its hash, which is
how it keeps its embeddings without being encoded again."""

from __future__ import annotations

CHUNK = 1 << 20


def file_hash(path: str) -> str:
    from blake3 import blake3

    digest = blake3()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()[:32]
