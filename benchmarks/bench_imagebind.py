"""Benchmark ImageBind-Huge in recall (random weights in the real formats; CI does not run this).

Measures
  * load: each trunk from the converted per-trunk safetensors (mmap) vs a naive torch.load of the
    whole reference-format checkpoint (+ building the three trunks from it); wall time and peak RSS,
    each in a fresh subprocess; also the time to page every weight in ("touch");
  * per-block time of each trunk (block 0; all blocks of a trunk are identical) at batch 1 and a
    bigger batch, fp32 and bf16;
  * full-depth throughput: images/s, audio clips/s, text queries/s (fp32).

Writes benchmarks/results/imagebind.json and .md.  Default run: well under 10 minutes on 2 cores
(~9 GB of temporary files in benchmarks/results/tmp/, deleted at the end unless --keep).

    python benchmarks/bench_imagebind.py [--quick] [--keep]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402 - after the sys.path line, so the script runs from a checkout

from recall_cli.models.imagebind.checkpoint import to_official_state_dict  # noqa: E402 - after the sys.path line, so the script runs from a checkout
from recall_cli.models.imagebind.model import HUGE_CONFIG, TRUNKS, ImageBindEncoder, build_trunk  # noqa: E402 - after the sys.path line, so the script runs from a checkout
from recall_cli.models.imagebind.weights import load_safetensors_mmap, save_safetensors  # noqa: E402 - after the sys.path line, so the script runs from a checkout

RESULTS = ROOT / "benchmarks" / "results"
TMP = RESULTS / "tmp"


def peak_rss_mb() -> float:
    """High-water RSS of this process (VmHWM; ru_maxrss would include the parent's, kept across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------------
# subprocess load measurements
# ------------------------------------------------------------------------------------------------


def _child(mode: str, arg: str) -> None:
    """Runs in a fresh interpreter; prints one JSON line."""
    t0 = time.perf_counter()
    if mode == "mmap":
        trunk = build_trunk(arg, HUGE_CONFIG, load_safetensors_mmap(TMP / f"{arg}.safetensors"))
        loaded = time.perf_counter() - t0
        rss_loaded = peak_rss_mb()
        with torch.no_grad():
            total = sum(float(p.float().sum()) for p in trunk.state_dict().values())  # page everything in
        touched = time.perf_counter() - t0
        print(
            json.dumps(
                {
                    "load_s": loaded,
                    "load_touch_s": touched,
                    "rss_after_load_mb": rss_loaded,
                    "peak_rss_mb": peak_rss_mb(),
                    "checksum": total,
                }
            )
        )
    elif mode == "naive":
        from recall_cli.models.imagebind.checkpoint import convert_official_state_dict

        sd = torch.load(TMP / "imagebind_huge_random.pth", map_location="cpu", weights_only=True)
        read = time.perf_counter() - t0
        trunks = convert_official_state_dict(sd)
        models = {
            k: build_trunk(
                k,
                HUGE_CONFIG,
                {
                    n: t.clone()
                    if ".attn." in n and n.endswith(("q.weight", "k.weight", "v.weight", "q.bias", "k.bias", "v.bias"))
                    else t
                    for n, t in v.items()
                },
            )
            for k, v in trunks.items()
        }
        print(
            json.dumps(
                {
                    "torch_load_s": read,
                    "load_s": time.perf_counter() - t0,
                    "peak_rss_mb": peak_rss_mb(),
                    "trunks": len(models),
                }
            )
        )


def run_child(mode: str, arg: str = "") -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, arg], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# timing helpers
# ------------------------------------------------------------------------------------------------


def timeit(fn, reps: int, warmup: int = 1) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
    return (time.perf_counter() - t0) / reps


def tokens_for(kind: str) -> int:
    return {"vision": 257, "audio": 229, "text": 77}[kind]


def block_timings(trunks: dict, batches: dict, reps: dict) -> list[dict]:
    rows = []
    for kind in TRUNKS:
        dim = HUGE_CONFIG.trunk(kind).dim
        for dtype in (torch.float32, torch.bfloat16):
            block = trunks[kind].blocks[0]
            if dtype != torch.float32:
                import copy

                block = copy.deepcopy(block).to(dtype)
            for batch in (1, batches[kind]):
                x = torch.randn(batch, tokens_for(kind), dim).to(dtype)
                causal = kind == "text"
                sec = timeit(
                    functools.partial(block, x, causal=causal), reps[kind] if batch == 1 else max(1, reps[kind] // 2)
                )
                rows.append(
                    {
                        "trunk": kind,
                        "dtype": str(dtype).removeprefix("torch."),
                        "batch": batch,
                        "tokens": tokens_for(kind),
                        "ms_per_block": sec * 1000,
                        "ms_per_block_per_seq": sec * 1000 / batch,
                        "full_depth_s_est": sec * HUGE_CONFIG.trunk(kind).depth,
                    }
                )
                print(f"  block {kind:6s} {rows[-1]['dtype']:8s} batch {batch:3d}: {sec * 1000:8.1f} ms", flush=True)
    return rows


def throughput(encoder: ImageBindEncoder, cases: list[tuple[str, int, int]]) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for modality, batch, reps in cases:
        if modality == "image":
            data = list(torch.randn(batch, 3, 224, 224, generator=gen))
        elif modality == "audio":
            data = list(torch.randn(batch, 1, 1, 128, 204, generator=gen))
        else:
            data = [encoder.text_unit(f"query number {i} about a red kayak on a lake").data for i in range(batch)]
        sec = timeit(
            functools.partial(encoder.encode, modality, data),
            reps,
            warmup=1 if batch * reps < 8 or modality != "image" else 0,
        )
        rows.append({"modality": modality, "batch": batch, "s_per_batch": sec, "items_per_s": batch / sec})
        print(
            f"  full depth {modality:5s} batch {batch:3d}: {batch / sec:8.2f} items/s ({sec:.2f} s/batch)", flush=True
        )
    return rows


# ------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and smaller batches")
    ap.add_argument("--keep", action="store_true", help="keep the temporary weight files")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(*args.child)

    t_start = time.perf_counter()
    TMP.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
        },
        "config": "imagebind-huge (random weights in the official layout)",
        "quick": args.quick,
    }
    print("building random ImageBind-Huge trunks and writing the weight files ...", flush=True)
    t0 = time.perf_counter()
    trunks = {kind: build_trunk(kind, HUGE_CONFIG, None, seed=1) for kind in TRUNKS}
    result["random_init_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for kind, trunk in trunks.items():
        if not (TMP / f"{kind}.safetensors").exists():
            save_safetensors(trunk.state_dict(), TMP / f"{kind}.safetensors")
    if not (TMP / "imagebind_huge_random.pth").exists():
        torch.save(
            to_official_state_dict({k: t.state_dict() for k, t in trunks.items()}), TMP / "imagebind_huge_random.pth"
        )
    result["write_files_s"] = time.perf_counter() - t0
    result["file_sizes_mb"] = {p.name: p.stat().st_size / 2**20 for p in sorted(TMP.iterdir())}

    print("load times (fresh subprocess each) ...", flush=True)
    load = {}
    for kind in TRUNKS:
        load[f"mmap_{kind}"] = run_child("mmap", kind)
        print(f"  mmap {kind}: {load[f'mmap_{kind}']}", flush=True)
    load["naive_full_torch_load"] = run_child("naive")
    print(f"  naive: {load['naive_full_torch_load']}", flush=True)
    result["load"] = load

    print("per-block times ...", flush=True)
    batches = {"vision": 4 if args.quick else 8, "audio": 8 if args.quick else 16, "text": 32}
    reps = {"vision": 2 if args.quick else 3, "audio": 3 if args.quick else 5, "text": 5 if args.quick else 10}
    result["per_block"] = block_timings(trunks, batches, reps)

    print("full-depth throughput (fp32) ...", flush=True)
    encoder = ImageBindEncoder(
        HUGE_CONFIG, "imagebind-huge", "bench", torch.device("cpu"), torch.float32, source=lambda kind: None
    )
    encoder._trunks = {kind: trunks[kind] for kind in TRUNKS}
    cases = [("image", 1, 1), ("image", 4, 1), ("audio", 1, 3), ("audio", 8, 1), ("text", 1, 5), ("text", 32, 1)]
    if args.quick:
        cases = [("image", 1, 1), ("audio", 8, 1), ("text", 1, 3), ("text", 32, 1)]
    result["throughput_fp32"] = throughput(encoder, cases)
    result["suggested_batch"] = {m: encoder.suggest_batch_size(m) for m in ("image", "audio", "text")}
    result["total_s"] = time.perf_counter() - t_start

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "imagebind.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "imagebind.md").write_text(markdown(result))
    print((RESULTS / "imagebind.md").read_text())
    if not args.keep:
        shutil.rmtree(TMP, ignore_errors=True)


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# ImageBind-Huge in recall: load and speed",
        "",
        f"Machine: {m['platform']}, {m['processor']}, {m['cpus']} CPUs, torch {m['torch']} "
        f"({m['threads']} threads), CUDA: {m['cuda']}.  Random weights in the real formats.  "
        f"Total run {r['total_s']:.0f} s{' (--quick)' if r['quick'] else ''}.",
        "",
        "## Loading (fresh process each; page cache warm)",
        "",
        "| what | load s | load + page in all weights s | peak RSS MB |",
        "|---|---|---|---|",
    ]
    for kind in TRUNKS:
        x = r["load"][f"mmap_{kind}"]
        lines.append(
            f"| {kind} trunk from safetensors (mmap) | {x['load_s']:.2f} | {x['load_touch_s']:.2f} | "
            f"{x['peak_rss_mb']:.0f} (after load only: {x['rss_after_load_mb']:.0f}) |"
        )
    n = r["load"]["naive_full_torch_load"]
    lines.append(
        f"| naive torch.load of the full checkpoint + build 3 trunks | {n['load_s']:.2f} "
        f"(torch.load {n['torch_load_s']:.2f}) | same | {n['peak_rss_mb']:.0f} |"
    )
    lines += [
        "",
        "## Per block (block 0 of each trunk; inference mode)",
        "",
        "| trunk | dtype | batch | tokens | ms / block | ms / block / sequence | est. full depth s / batch |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["per_block"]:
        lines.append(
            f"| {row['trunk']} | {row['dtype']} | {row['batch']} | {row['tokens']} | {row['ms_per_block']:.1f} | "
            f"{row['ms_per_block_per_seq']:.1f} | {row['full_depth_s_est']:.2f} |"
        )
    lines += [
        "",
        "## Full depth, fp32 (stem + all blocks + head)",
        "",
        "| modality | batch | s / batch | items / s |",
        "|---|---|---|---|",
    ]
    for row in r["throughput_fp32"]:
        lines.append(f"| {row['modality']} | {row['batch']} | {row['s_per_batch']:.2f} | {row['items_per_s']:.2f} |")
    lines += ["", f"Suggested batch sizes (sequences) for the free memory at the time: {r['suggested_batch']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
