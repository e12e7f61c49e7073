"""The `--model` factories for ImageBind, named in recall_cli/models/__init__.py: an ImageBindEncoder
on the chosen device, with the source its trunks are loaded from.

Apart from model.py so that the dependency runs one way: these factories need weights.py (where
the trunk files are), and weights.py needs model.py (through checkpoint.py, to check a checkpoint
against the architecture); model.py needs neither.
"""

from __future__ import annotations

from pathlib import Path

import torch

from recall_cli.models.device import pick_device, pick_dtype
from recall_cli.models.imagebind.model import HUGE_CONFIG, TEST_CONFIG, TEST_SEED, ImageBindEncoder
from recall_cli.models.imagebind.weights import imagebind_trunk_files, load_safetensors_mmap


def load_imagebind_huge(device=None, dtype=None, weights=None) -> ImageBindEncoder:
    """ImageBind-Huge with the official weights (downloaded and converted on first use)."""
    dev, dt = _device_dtype(device, dtype)
    files, version = imagebind_trunk_files(weights)
    return ImageBindEncoder(
        HUGE_CONFIG,
        "imagebind-huge",
        f"imagebind-huge@{version}",
        dev,
        dt,
        source=lambda kind: load_safetensors_mmap(files[kind]),
    )


def load_imagebind_test(device=None, dtype=None, weights=None) -> ImageBindEncoder:
    """Tests only: the tiny TEST_CONFIG with deterministic random weights (seed 0)."""
    dev, dt = _device_dtype(device, dtype)
    if weights:  # a folder of {vision,text,audio}.safetensors in TEST_CONFIG shapes
        folder = Path(weights)
        return ImageBindEncoder(
            TEST_CONFIG,
            "imagebind-test",
            f"imagebind-test@{folder.name}",
            dev,
            dt,
            source=lambda kind: load_safetensors_mmap(folder / f"{kind}.safetensors"),
        )
    return ImageBindEncoder(
        TEST_CONFIG,
        "imagebind-test",
        f"imagebind-test@seed{TEST_SEED}",
        dev,
        dt,
        source=lambda kind: None,
        seed=TEST_SEED,
    )


def _device_dtype(device, dtype):
    """Names (or None, for the best available) resolved to torch objects; torch objects kept."""
    dev = pick_device(device) if not isinstance(device, torch.device) else device
    dt = pick_dtype(dev, dtype) if not isinstance(dtype, torch.dtype) else dtype
    return dev, dt
