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


WORKERS_ENV = "RECALL_ENCODE_WORKERS"


def encode_workers(model, jobs: int) -> int:
    """How many threads encode `jobs` batches side by side: on a CPU, for a model that gains by it
    (LayeredEncoder.batches_side_by_side), one per torch thread, each running torch on one thread
    of its own, at most one per batch; else one.  $RECALL_ENCODE_WORKERS overrides (1: one batch
    at a time on all of torch's threads).

    Why: torch splits each op of one batch over its threads and makes them meet after every op.
    When anything else uses a core, the threads that wait for each other lose far more than the
    share of the core they are denied: with another process busy on a 2-core machine, MiniLM on 60
    docstrings took 4.9-7.3 s as one batch on two threads and 2.3-3.4 s as two batches side by
    side, one thread each.  On 2 quiet cores the two are within noise of each other (`recall index
    --full` of 200 docstrings, three runs of bench_speed: 5.18 against 5.16 s, 5.24 against
    5.20 s, 5.45 against 5.61 s).  The work between blocks (gathers, heads, INT4 packing) also
    runs beside the other batch's blocks.  ImageBind-Huge loses by it (16 photos: 4.4-4.7 s
    against 4.3 s): two batches read its 1.3 GB of weights twice as often."""
    import torch

    device = getattr(model, "device", None)
    if getattr(device, "type", "cpu") != "cpu" or jobs < 2:
        return 1
    asked = os.environ.get(WORKERS_ENV, "").strip()
    if asked:
        try:
            return max(1, min(int(asked), jobs))
        except ValueError:
            raise RecallError(f"{WORKERS_ENV} must be a whole number, not {asked!r}") from None
    if not getattr(model, "batches_side_by_side", False):
        return 1
    return max(1, min(torch.get_num_threads(), jobs))


def map_batches(function, jobs: list, workers: int) -> list:
    """[function(job) for job in jobs], run by `workers` threads (encode_workers), each with one
    torch thread; results in the jobs' order.  Workers take the jobs in order as they come free,
    so give the longest first: the last batches to finish are then short ones."""
    if workers <= 1 or len(jobs) < 2:
        return [function(job) for job in jobs]
    from concurrent.futures import ThreadPoolExecutor

    def on_one_thread(job):
        with one_torch_thread():
            return function(job)

    pool = ThreadPoolExecutor(workers, thread_name_prefix="recall-encode")
    try:
        return list(pool.map(on_one_thread, jobs))
    finally:  # an interrupt or error: no batch starts after it, the ones running finish
        pool.shutdown(wait=True, cancel_futures=True)
