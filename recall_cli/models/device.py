"""Choose where and in what precision a model runs: CUDA, then Apple MPS, then CPU.

Precision `auto` is bfloat16 on a CPU that computes it natively (x86 `avx512_bf16` or `amx_bf16`:
about twice the fp32 speed for the same embeddings, cosine >= 0.9999), fp32 on other CPUs (there
bf16 is emulated and slower), fp16 on GPUs.  An automatic bf16 is checked against fp32 on the
first index run (index/precision.py) and replaced by fp32 when it is not exact enough."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from recall_cli.errors import RecallError

DEVICE_ENV = "RECALL_DEVICE"
DTYPE_ENV = "RECALL_DTYPE"
CPUINFO = Path("/proc/cpuinfo")  # where the CPU's flags are read; tests point it at a file of their own
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # most capable first
PRECISION_NAMES = {
    "fp32": "fp32",
    "float32": "fp32",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
}


@dataclass(frozen=True)
class Precision:
    name: str  # fp32, bf16 or fp16
    reason: str  # why, in words for `recall stats`
    automatic: bool  # chosen by `auto` (so checked, and replaceable), not asked for

    @property
    def dtype(self):
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]


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


def requested_precision(requested: str | None = None) -> str:
    """What was asked for: `requested`, else $RECALL_DTYPE, else auto (lower case, checked)."""
    choice = str(requested or os.environ.get(DTYPE_ENV) or "auto").lower().removeprefix("torch.")
    if choice != "auto" and choice not in PRECISION_NAMES:
        raise RecallError(f"unknown precision {choice!r}; use auto, fp32, bf16 or fp16")
    return choice


def native_bf16_flag() -> str | None:
    """The CPU flag that says bfloat16 is computed natively here (None: emulated, or unknown)."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return next((flag for flag in NATIVE_BF16_FLAGS if flag in flags), None)


def choose_precision(device, requested: str | None = None) -> Precision:
    """The precision for `device` (a torch.device or its type name) and why."""
    choice = requested_precision(requested)
    device_type = getattr(device, "type", device)
    if choice != "auto":
        source = "--dtype" if requested else f"${DTYPE_ENV}"
        return Precision(PRECISION_NAMES[choice], f"asked for ({source} {choice})", automatic=False)
    if device_type != "cpu":
        return Precision("fp16", f"auto: fp16 on {device_type}", automatic=True)
    flag = native_bf16_flag()
    if flag:
        return Precision("bf16", f"auto: this CPU computes bfloat16 natively ({flag})", automatic=True)
    return Precision("fp32", "auto: this CPU has no native bfloat16", automatic=True)


def pick_dtype(device, requested: str | None = None):
    """The torch dtype of choose_precision.  `requested` (or $RECALL_DTYPE) may be auto, fp32,
    bf16 or fp16."""
    return choose_precision(device, requested).dtype


def precision_key(requested: str | None = None) -> str:
    """What decides the precision of a model loaded now, for the per-process model cache."""
    choice = requested_precision(requested)
    return f"auto:{native_bf16_flag()}" if choice == "auto" else PRECISION_NAMES[choice]


class one_torch_thread:
    """`with one_torch_thread():` torch's intra-op threads set to one in the calling thread, and
    restored after.  For the bookkeeping ops between blocks (gathers, joins, quantisation): each
    is a pass or two over memory, and on a shared 2-core machine torch's second thread waited for
    a core far longer than it saved (torch.cat of one batch's states: 190 ms on two threads, under
    1 ms on one)."""

    def __enter__(self):
        import torch

        self.previous = torch.get_num_threads()
        if self.previous != 1:
            torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        if self.previous != 1:
            import torch

            torch.set_num_threads(self.previous)
