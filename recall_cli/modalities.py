"""The kinds of file recall indexes (one list for the scanner, the models, the query filters and
the output), and how many units of each one model call takes."""

from __future__ import annotations

MODALITIES = ("text", "image", "video", "audio")

# Units per model call: enough to keep the cores busy, small enough that a batch of decoded video
# clips (2 x 2 clips x 2 frames of 224x224) or images stays within a few hundred MiB.
BATCH_SIZE = {"text": 32, "image": 8, "video": 2, "audio": 8}


def batch_size(modality: str) -> int:
    return BATCH_SIZE.get(modality, 8)


def check_modality(name: str) -> str:
    """`name` if it is a modality, else the one-line error a user sees for `--type`."""
    if name not in MODALITIES:
        from recall_cli.errors import RecallError

        raise RecallError(f"unknown --type {name!r}; use one of {', '.join(MODALITIES)}")
    return name
