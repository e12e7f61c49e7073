"""Indexing speed, measured honestly: `python -m benchmarks.bench_speed [--quick] [--minilm] [--rounds N]`.

Every comparison alternates its arms (A B C ... A B C ..., `--rounds`, at least 2, default 3),
reports the median, the spread ((max - min) / median) and CPU seconds per file beside wall time,
gives each ratio as the median of its per-round ratios with their range (a 5% question needs a
range narrower than 5%: add rounds), and checks the machine's load first: a busy machine marks
every table "BUSY" (do not publish those timings).  `--minilm`: the MiniLM section alone (written
to results/speed-minilm.*), the form to repeat with many rounds.

MiniLM, docstring corpus (one doc per file), the real indexer in this process (model loaded once):
  * bare encoder: the same units through the same model and batch size, nothing else, on the
    pipeline's encode workers (two MiniLM batches side by side, models/device.encode_workers), and
    again one batch at a time on all of torch's threads (what `model.encode` in a loop does);
  * `recall index --full` at the default precision and in fp32; fixed:3; a fixed mix; the
    predictor policy (trained on other docstrings), each next to its ideal (full / blocks run);
    full again with RECALL_ENCODE_WORKERS=1 (one batch at a time);
  * full and fixed:3 again with encoding overlapped (RECALL_OVERLAP=1, off by default) in batches
    of 64 files: what the overlap queue (index/overlap.py) gains or loses;
  * a stage profile of the predictor policy, fixed:3 and full depth (shares of wall time), and
    from it the most fixed:3 can gain: full depth's blocks over fixed:3's blocks and the INT4 cache
    it writes for refinement.
ImageBind-Huge (random weights, vision), generated photos, the real indexer: fp32 and bf16 at full
depth, bf16 `fixed:16`, and the bare bf16 encoder, and a stage profile of bf16 full depth.  Not in
--quick.

Expected run time on 2 quiet cores: --quick ~2 minutes; default (3 rounds) ~10 minutes (MiniLM
~1 minute to set up and ~55 s a round; Huge ~1.5 minutes to build its two models and ~40 s a round
with its 16 photos); `--minilm --rounds 8` ~8 minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .common import (
    CORPUS,
    alternate,
    load_check,
    machine_info,
    machine_line,
    markdown_table,
    random_huge,
    write_results,
)

MIX = "mix:2=0.25,3=0.25,4=0.25,6=0.25"
HUGE_POLICY = "fixed:16"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _index_arm(files: Path, db: Path, model: str, dtype: str, policy: str, overlap: bool = False, workers: str = ""):
    """One run of the real indexer into a fresh index: the units and blocks it did.  `overlap`
    True: encoding overlapped with decoding and writes (RECALL_OVERLAP=1), to measure the queue,
    in the media batch size (256 units or 64 files): the whole text corpus fits in one text batch,
    which leaves the queue nothing to overlap.  `workers` "1": one batch at a time on all of torch's
    threads ($RECALL_ENCODE_WORKERS) instead of the default batches side by side."""
    from recall_cli.index import indexer
    from recall_cli.index.indexer import IndexOptions, index_roots
    from recall_cli.index.overlap import OVERLAP_ENV
    from recall_cli.models.device import WORKERS_ENV

    def run() -> dict:
        os.environ[OVERLAP_ENV] = "1" if overlap else "0"
        os.environ[WORKERS_ENV] = workers
        text_bounds = indexer.TEXT_FLUSH_UNITS, indexer.TEXT_FLUSH_FILES
        if overlap:
            indexer.TEXT_FLUSH_UNITS, indexer.TEXT_FLUSH_FILES = indexer.FLUSH_UNITS, indexer.FLUSH_FILES
        shutil.rmtree(db, ignore_errors=True)
        if policy == "predictor":
            db.mkdir(parents=True)
            shutil.copy(files.parent / "predictor.safetensors", db / "predictor.safetensors")
        options = IndexOptions(
            model=model, dtype=dtype, full=policy == "full", exit_policy=None if policy == "full" else policy
        )
        try:
            summary = index_roots([str(files)], db, options)
        finally:
            os.environ.pop(OVERLAP_ENV, None)
            os.environ.pop(WORKERS_ENV, None)
            indexer.TEXT_FLUSH_UNITS, indexer.TEXT_FLUSH_FILES = text_bounds
        return {
            "files": summary.added,
            "units": summary.units_encoded,
            "blocks_run": summary.blocks_run,
            "blocks_full": summary.blocks_full,
        }

    return run


def _bare_arm(model, modality: str, units_per_file: list[list], workers: int | None = None):
    """The encoder alone: the same units, the same batch size, sorted and batched as the pipeline
    does (by length, longest first, within each flush of the index run: index/indexer.py gathers
    files into flushes and index/pipeline.py sorts each), on the pipeline's encode workers
    (models/device.encode_workers; `workers` 1: one batch at a time on all of torch's threads).
    Sorting across the whole corpus instead, as this arm did before, gave it 5% fewer padded
    tokens than the pipeline could have on 200 docstrings in flushes of 64 files: a saving of
    batching, not of the work around the model."""
    from recall_cli.modalities import batch_size
    from recall_cli.models.device import encode_workers, map_batches

    size = batch_size(modality)
    windows = [[unit.data for unit in window] for window in _flush_windows(units_per_file)]
    if modality == "text":
        windows = [sorted(window, key=len, reverse=True) for window in windows]
    batches = [window[start : start + size] for window in windows for start in range(0, len(window), size)]
    n_files, n_units = len(units_per_file), sum(len(window) for window in windows)
    threads = workers or encode_workers(model, len(batches))

    def run() -> dict:
        map_batches(lambda batch: model.encode(modality, batch), batches, threads)
        return {"files": n_files, "units": n_units, "blocks_run": 0, "blocks_full": 0}

    return run


def _flush_windows(units_per_file: list[list]) -> list[list]:
    """The units in the flushes an index run makes of these files, in order (indexer._pending_full)."""
    from recall_cli.index import indexer

    windows, window, files, text_only = [], [], 0, True
    for units in units_per_file:
        window += units
        files += 1
        text_only = text_only and all(isinstance(unit.data, str) for unit in units)
        unit_limit = indexer.TEXT_FLUSH_UNITS if text_only else indexer.FLUSH_UNITS
        file_limit = indexer.TEXT_FLUSH_FILES if text_only else indexer.FLUSH_FILES
        if len(window) >= unit_limit or files >= file_limit:
            windows.append(window)
            window, files, text_only = [], 0, True
    return windows + ([window] if window else [])


def _profile_shares(run) -> dict:
    """One extra run under the stage profiler: stage -> (share of wall time, CPU seconds)."""
    from recall_cli import profiling

    profile = profiling.start()
    started, started_cpu = time.perf_counter(), time.process_time()
    try:
        run()
    finally:
        profiling.stop()
    wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    shares = {
        name: (seconds / wall, profile.cpu_seconds.get(name, 0.0))
        for name, seconds in sorted(profile.seconds.items(), key=lambda kv: -kv[1])
    }
    shares["(not in a stage)"] = (
        max(0.0, 1 - sum(share for share, _ in shares.values())),
        max(0.0, cpu - sum(profile.cpu_seconds.values())),
    )
    shares["(whole run)"] = (1.0, cpu)
    return shares


def _train_predictor(records: list[dict], model, path: Path) -> None:
    """A predictor for the text exits, trained on documents that are not indexed in the timing."""
    import torch

    from recall_cli.early_exit.plan import exit_plan
    from recall_cli.early_exit.predictor import exit_labels, save_predictors, train_predictor

    plan = exit_plan(model, "text")
    docs = sorted((r["doc"] for r in records), key=len)
    per_exit = {L: [] for L in plan.points}
    with torch.inference_mode():
        for start in range(0, len(docs), 32):
            batch = model.tokenize("text", docs[start : start + 32])
            for L in range(1, plan.depth + 1):
                batch = model.run_blocks(batch, L - 1, L)
                if L in per_exit:
                    per_exit[L].append(model.embed(batch, L).float())
    emb = {L: torch.cat(parts) for L, parts in per_exit.items()}
    labels = exit_labels({L: emb[L] for L in plan.points[:-1]}, emb[plan.depth], plan.points, rule="neighbours")
    predictor, _ = train_predictor(emb[plan.k0], labels, plan.points, holdout=0.0, seed=0)
    save_predictors(path, "minilm", {"text": predictor}, {"text": plan})


def _rows(label: str, measured: dict, reference: str, bare: str | None) -> list[list]:
    from .common import paired_ratio

    def ratio(a: str, b: str, key: str = "runs") -> dict:
        return paired_ratio(measured[a][key], measured[b][key])

    def shown(r: dict) -> str:
        return f"{r['median']:.3f} [{r['low']:.2f}-{r['high']:.2f}]"

    rows = []
    for name, r in measured.items():
        skipped = r.get("blocks_run") and r["blocks_run"] < r["blocks_full"]
        ideal = r["blocks_full"] / r["blocks_run"] if skipped else None  # only arms that skip blocks
        speedup = ratio(reference, name)
        cpu_speedup = ratio(reference, name, "cpu_runs")["median"]
        to_bare = ratio(bare, name) if bare and name != bare else None
        rows.append(
            [
                label,
                name,
                r["units"],
                round(r["seconds"], 2),
                f"{r['spread']:.0%}",
                round(r["units"] / r["seconds"], 2),
                round(r["cpu_seconds"] / max(r["files"], 1), 3),
                shown(speedup),
                round(cpu_speedup, 3),
                round(ideal, 3) if ideal else "-",
                round(speedup["median"] / ideal, 3) if ideal else "-",
                round(cpu_speedup / ideal, 3) if ideal else "-",
                shown(to_bare) if to_bare else "-",
                round(ratio(bare, name, "cpu_runs")["median"], 3) if to_bare else "-",
                f"{r['others_share']:.0%}" + (" BUSY" if r["busy"] else ""),
            ]
        )
    return rows


HEADERS = [
    "model",
    "arm",
    "units",
    "seconds (median)",
    "spread",
    "units/s",
    "CPU s/file",
    "speed-up [range]",
    "CPU speed-up",
    "ideal",
    "of ideal",
    "of ideal (CPU)",
    "x bare rate [range]",
    "x bare (CPU)",
    "others' CPU (worst run)",
]


def minilm_section(work: Path, quick: bool, rounds: int) -> dict:
    from recall_cli.index.indexer import IndexOptions, index_roots
    from recall_cli.models import load_model
    from recall_cli.models.device import choose_precision

    default = choose_precision("cpu").name
    records = [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]
    n_files = 60 if quick else 200
    files = work / "docs" / "files"
    files.mkdir(parents=True)
    for r in records[:n_files]:
        (files / f"{r['id']}.txt").write_text(r["doc"], encoding="utf-8")
    model = load_model("minilm", None, default)
    _train_predictor(
        records[n_files : n_files + (150 if quick else 400)], model, files.parent / "predictor.safetensors"
    )
    units_per_file = [model.file_units(path, "text") for path in sorted(files.iterdir())]  # the scan's order
    units = [unit for units in units_per_file for unit in units]
    warm = work / "docs" / "warm"  # loading each precision's model is not part of any timing
    warm.mkdir()
    for r in records[n_files : n_files + 2]:
        (warm / f"{r['id']}.txt").write_text(r["doc"], encoding="utf-8")
    for dtype in (default, "fp32"):
        index_roots([str(warm)], work / f"warm-{dtype}", IndexOptions(model="minilm", dtype=dtype, full=True))
    arms = {
        "bare encoder": _bare_arm(model, "text", units_per_file),
        "bare encoder (one batch at a time)": _bare_arm(model, "text", units_per_file, workers=1),
    }
    for policy in ("full", "fixed:3", MIX, "predictor"):
        arms[policy] = _index_arm(files, work / "db", "minilm", default, policy)
    arms["full (one batch at a time)"] = _index_arm(files, work / "db", "minilm", default, "full", workers="1")
    arms["full (overlapped)"] = _index_arm(files, work / "db", "minilm", default, "full", overlap=True)
    arms["fixed:3 (overlapped)"] = _index_arm(files, work / "db", "minilm", default, "fixed:3", overlap=True)
    if default != "fp32":
        arms["full (fp32)"] = _index_arm(files, work / "db", "minilm", "fp32", "full")
    log(f"minilm ({default} by default): {n_files} files, {len(units)} units, {rounds} rounds")
    measured = alternate(arms, rounds, log)
    shares = {
        policy: _profile_shares(_index_arm(files, work / "db", "minilm", default, policy))
        for policy in ("predictor", "fixed:3", "full")
    }
    return {"precision": default, "measured": measured, "profile_shares": shares, "ceiling": _fixed_ceiling(shares)}


CACHE_STAGES = ("state capture", "INT4 packing")  # the work an early exit adds for refinement's cache


def _fixed_ceiling(shares: dict) -> dict:
    """What `fixed:3` could reach at most, from the profiled runs' CPU seconds: full depth's blocks
    over fixed:3's blocks plus the INT4 cache it must write for refinement (state capture, packing,
    and the extra seconds of its LanceDB write), with nothing else (`zero_overhead`), and with full
    depth's own work outside the blocks added to both sides (`shared_as_full`)."""

    def cpu(policy: str, names) -> float:
        return sum(share[1] for name, share in shares[policy].items() if name in names)

    def blocks(policy: str) -> float:
        return cpu(policy, [name for name in shares[policy] if "blocks" in name and "(load)" not in name])

    full_blocks, fixed_blocks = blocks("full"), blocks("fixed:3")
    write_extra = max(0.0, cpu("fixed:3", ["LanceDB write"]) - cpu("full", ["LanceDB write"]))
    cache = cpu("fixed:3", CACHE_STAGES) + write_extra
    shared = max(0.0, shares["full"]["(whole run)"][1] - full_blocks)
    return {
        "full_blocks_cpu": full_blocks,
        "fixed_blocks_cpu": fixed_blocks,
        "cache_cpu": cache,
        "shared_cpu": shared,
        "blocks_only": full_blocks / fixed_blocks if fixed_blocks else None,
        "zero_overhead": full_blocks / (fixed_blocks + cache) if fixed_blocks else None,
        "shared_as_full": (full_blocks + shared) / (fixed_blocks + cache + shared) if fixed_blocks else None,
    }


def _photos(folder: Path, count: int) -> None:
    """Photo-like JPEGs (smooth gradients, shapes and sensor noise), 640x480."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(count):
        y, x = np.mgrid[0:480, 0:640]
        base = np.stack([(x * (i + 1) % 256), (y * 2 + 40 * i) % 256, ((x + y) // 3) % 256], -1).astype(np.float32)
        noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        image = Image.fromarray(noisy)
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = rng.integers(0, 560), rng.integers(0, 400)
            draw.ellipse(
                [x0, y0, x0 + rng.integers(20, 200), y0 + rng.integers(20, 200)],
                fill=tuple(rng.integers(0, 255, 3).tolist()),
            )
        image.save(folder / f"photo{i:02d}.jpg", quality=90)


def huge_section(work: Path, quick: bool, rounds: int) -> dict:
    """ImageBind-Huge with random weights, placed in the per-process model cache under the names
    the indexer asks for (the official weights are a 4.5 GB download)."""
    from recall_cli.index.indexer import IndexOptions, index_roots

    n_images = 8 if quick else 16
    files = work / "photos"
    _photos(files, n_images)
    random_huge("fp32")
    bf16 = random_huge("bf16")
    units_per_file = [bf16.file_units(path, "image") for path in sorted(files.iterdir())]
    arms = {
        "bare encoder (bf16)": _bare_arm(bf16, "image", units_per_file),
        "full (fp32)": _index_arm(files, work / "db-huge", "imagebind-huge", "fp32", "full"),
        "full (bf16)": _index_arm(files, work / "db-huge", "imagebind-huge", "bf16", "full"),
        f"{HUGE_POLICY} (bf16)": _index_arm(files, work / "db-huge", "imagebind-huge", "bf16", HUGE_POLICY),
        "full (bf16, overlapped)": _index_arm(files, work / "db-huge", "imagebind-huge", "bf16", "full", overlap=True),
    }
    _bare_arm(bf16, "image", units_per_file[:1])()  # first-call warm-up of the kernels
    # the first index run of a process loads the OCR engines and the place names: not a timing
    warm = work / "photos-warm"
    warm.mkdir()
    shutil.copy(sorted(files.iterdir())[0], warm / "warm.jpg")
    for dtype in ("fp32", "bf16"):
        options = IndexOptions(model="imagebind-huge", dtype=dtype, full=True)
        index_roots([str(warm)], work / f"warm-huge-{dtype}", options)
    log(f"imagebind-huge: {n_images} photos, {rounds} rounds")
    measured = alternate(arms, rounds, log)
    shares = {"full (bf16)": _profile_shares(arms["full (bf16)"])}
    return {"measured": measured, "profile_shares": shares}


def main(quick: bool = False, rounds: int = 3, minilm_only: bool = False) -> str:
    import torch

    rounds = max(2, rounds)
    info = machine_info()
    load = load_check(log)
    data: dict = {
        "machine": info,
        "load_before": load,
        "quick": quick,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
    }
    work = Path(tempfile.mkdtemp(prefix="recall-bench-speed-"))
    try:
        data["minilm"] = minilm_section(work, quick, rounds)
        if not (quick or minilm_only):
            data["imagebind_huge"] = huge_section(work, quick, rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data["load_after"] = load_check(log)
    markdown = render(data)
    if not _busy(data) and not quick:
        write_results("speed-minilm" if minilm_only else "speed", json.loads(json.dumps(data, default=str)), markdown)
    else:
        log("not written to benchmarks/results (quick run, or the machine was busy)")
    return markdown


def _busy(data: dict) -> bool:
    arms = [r for section in ("minilm", "imagebind_huge") for r in data.get(section, {}).get("measured", {}).values()]
    return not (data["load_before"]["quiet"] and data["load_after"]["quiet"]) or any(r["busy"] for r in arms)


def render(data: dict) -> str:
    load, after = data["load_before"], data["load_after"]
    busy = " **BUSY: other work shared the CPU; timings not publishable.**" if _busy(data) else ""
    md = [
        "# Indexing speed\n",
        f"Machine: {machine_line(data['machine'])}, {data['threads']} torch threads. Other processes' share "
        f"of the cores before: {load['busy_share']:.0%} (loadavg {load['loadavg_1m']}); after: "
        f"{after['busy_share']:.0%}.{busy} "
        f"Arms alternated, {data['rounds']} rounds; seconds are medians, spread = (max - min) / median.\n",
    ]
    mini = data["minilm"]
    rows = _rows("minilm", mini["measured"], "full", "bare encoder")
    if "imagebind_huge" in data:
        rows += _rows("imagebind-huge vision", data["imagebind_huge"]["measured"], "full (fp32)", "bare encoder (bf16)")
    md.append(markdown_table(HEADERS, rows))
    md.append(
        f"\nMiniLM's default precision here: {mini['precision']}. Speed-up: against `full` (MiniLM, default "
        "precision) or `full (fp32)` (ImageBind-Huge), the median over rounds of the ratio within each round "
        "[lowest-highest]: a difference inside that range is not settled by this run. CPU speed-up: the same "
        "from the process's CPU seconds (every thread), which other work on the machine inflates far less "
        "than wall time. Ideal: full blocks / blocks run. x bare rate: the bare encoder's time over the "
        "arm's (1.0 = nothing but the model), paired by round the same way.\n"
    )
    md.append("## Where the time goes (stage profile: share of wall time, CPU seconds)\n")
    md.append(_profile_table(mini["profile_shares"]))
    if mini.get("ceiling"):
        md.append(_ceiling_text(mini["ceiling"]))
    if "profile_shares" in data.get("imagebind_huge", {}):
        md.append("\nImageBind-Huge vision, bf16 at full depth (what separates it from the bare encoder):\n")
        md.append(_profile_table(data["imagebind_huge"]["profile_shares"]))
    return "\n".join(md)


def _ceiling_text(ceiling: dict) -> str:
    return (
        f"\nThe most `fixed:3` can gain here (CPU seconds of the profiled runs above): full depth's blocks "
        f"{ceiling['full_blocks_cpu']:.2f} s against fixed:3's {ceiling['fixed_blocks_cpu']:.2f} s "
        f"({ceiling['blocks_only']:.3f}x); the INT4 cache fixed:3 writes for refinement (state capture, "
        f"packing, the extra LanceDB write) {ceiling['cache_cpu']:.2f} s, so **{ceiling['zero_overhead']:.3f}x** "
        f"with nothing else in either run, and **{ceiling['shared_as_full']:.3f}x** with full depth's "
        f"{ceiling['shared_cpu']:.2f} s of work outside the blocks (scan, decoding, tokenising, heads, writes) "
        "in both. One profiled run each: a single run's stages move by a few percent.\n"
    )


def _profile_table(profiles: dict) -> str:
    names = sorted({name for shares in profiles.values() for name in shares})
    return markdown_table(
        ["stage", *(f"{policy} {kind}" for policy in profiles for kind in ("wall", "CPU s"))],
        [
            [name, *(cell for shares in profiles.values() for cell in _profile_cells(shares.get(name)))]
            for name in names
        ],
    )


def _profile_cells(share) -> list[str]:
    if share is None:
        return ["0.0%", "0"]
    wall_share, cpu = share if isinstance(share, list | tuple) else (share, None)
    return [f"{wall_share:.1%}", "-" if cpu is None else f"{cpu:.3f}"]


if __name__ == "__main__":
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 3
    print(main(quick="--quick" in sys.argv, rounds=rounds, minilm_only="--minilm" in sys.argv))
