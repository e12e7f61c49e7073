"""Choose where and in what precision a model runs: CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import os

from recall_cli.errors import RecallError

DEVICE_ENV = "RECALL_DEVICE"
DTYPE_ENV = "RECALL_DTYPE"


def pick_device(requested: str | None = None):
    """`requested` (or $RECALL_DEVICE) may be auto, cpu, cuda, cuda:N or mps."""
    import torch

    choice = (requested or os.environ.get(DEVICE_ENV) or "auto").lower()
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise RecallError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if choice == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RecallError("--device mps was asked for but Apple MPS is not available; use --device cpu")
    try:
        return torch.device(choice)
    except RuntimeError:
        raise RecallError(f"unknown device {choice!r}; use auto, cpu, cuda or mps") from None


def pick_dtype(device, requested: str | None = None):
    """fp32 by default on CPU (bf16 there is opt-in: faster on some CPUs, less exact);
    fp16 on CUDA/MPS.  `requested` (or $RECALL_DTYPE) may be auto, fp32, bf16 or fp16."""
    import torch

    choice = (requested or os.environ.get(DTYPE_ENV) or "auto").lower()
    table = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if choice == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if choice not in table:
        raise RecallError(f"unknown precision {choice!r}; use auto, fp32, bf16 or fp16")
    return table[choice]
