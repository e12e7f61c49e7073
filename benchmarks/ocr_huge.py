"""What OCR costs an ImageBind-Huge index of camera-size photos without text (bench_mediatext).

ImageBind-Huge's weights are a 4.5 GB download, so its vision trunk is built here with random
weights in the official layout (common.random_huge, as for bench_speed) and placed in the process's model cache under
the name the indexer asks for; the runs are the real indexer (`index_roots`) in this process, OCR
on and off alternated, each into a fresh index.  The model's cost per photo does not depend on
its weights; OCR's does not depend on the embedding.  CPU seconds are the process's (every
thread); the OCR stages are the profile's, per photo."""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

from .common import random_huge

OCR_STAGES = ("ocr gate decode", "ocr gate", "ocr detection decode", "ocr detection", "ocr full-size decode")
OCR_STAGES += ("ocr recognition",)


def throughput_huge(folder: Path, rounds: int) -> dict:
    """Photos per second and CPU seconds indexing `folder` with ImageBind-Huge (bf16, full depth),
    OCR on and off alternated; the shape bench_mediatext.throughput gives, with OCR's stages."""
    from recall_cli import profiling
    from recall_cli.index.indexer import IndexOptions, index_roots

    random_huge("bf16")
    photos = sorted(folder.glob("*.jpg"))
    per_arm: dict[str, list[float]] = {"ocr on": [], "ocr off": []}
    cpu: dict[str, list[float]] = {"ocr on": [], "ocr off": []}
    stages: dict[str, list[float]] = {name: [] for name in OCR_STAGES}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        warm = work / "warm"  # the first run's one-off costs (the OCR engines, the places) are no arm's
        warm.mkdir()
        shutil.copy(photos[0], warm)
        index_roots([str(warm)], work / "warm-db", IndexOptions(model="imagebind-huge", dtype="bf16", full=True))
        for _ in range(rounds):
            for arm in ("ocr on", "ocr off"):
                shutil.rmtree(work / "db", ignore_errors=True)
                options = IndexOptions(model="imagebind-huge", dtype="bf16", full=True, ocr=arm == "ocr on")
                profile = profiling.start()
                started, started_cpu = time.perf_counter(), time.process_time()
                try:
                    index_roots([str(folder)], work / "db", options)
                finally:
                    profiling.stop()
                per_arm[arm].append(len(photos) / (time.perf_counter() - started))
                cpu[arm].append(time.process_time() - started_cpu)
                if arm == "ocr on":
                    for name in OCR_STAGES:
                        stages[name].append(1000 * profile.cpu_seconds.get(name, 0.0) / len(photos))
    on, off = statistics.median(per_arm["ocr on"]), statistics.median(per_arm["ocr off"])
    cpu_on, cpu_off = statistics.median(cpu["ocr on"]), statistics.median(cpu["ocr off"])
    return {
        "model": "imagebind-huge, random weights, bf16",
        "photos": len(photos),
        "per_arm": per_arm,
        "drop": 1 - on / off,
        "cpu": cpu,
        "cpu_drop": 1 - cpu_off / cpu_on,
        "paired_drops": [1 - a / b for a, b in zip(per_arm["ocr on"], per_arm["ocr off"], strict=True)],
        "ocr_ms_per_photo": {name: statistics.median(values) for name, values in stages.items()},
    }


def huge_line(speed: dict) -> str:
    """The OCR stages' CPU per photo of the Huge runs, and the drop round by round."""
    stages = ", ".join(f"{name} {ms:.1f}" for name, ms in speed["ocr_ms_per_photo"].items())
    total = sum(speed["ocr_ms_per_photo"].values())
    rounds = ", ".join(f"{drop:.1%}" for drop in speed["paired_drops"])
    return (
        f"With ImageBind-Huge, OCR reads the photo the model decoded (models/mediatext/lent.py): OCR's CPU per photo "
        f"{total:.1f} ms ({stages}); the drop round by round (on against off within each round): {rounds}."
    )
