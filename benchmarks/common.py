"""Shared pieces of the benchmark harness: machine description, timing, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
CORPUS = REPO.parent / "shared" / "bench" / "docstrings.jsonl"


def machine_info() -> dict:
    """What ran the benchmark: recorded in every result file."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def machine_line(info: dict) -> str:
    return (
        f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB"
        + (f", GPU {info['gpu']}" if info["gpu"] else ", no GPU")
        + f", torch {info['torch']}"
    )


def write_results(name: str, data: dict, markdown: str) -> Path:
    """benchmarks/results/<name>.json and <name>.md; returns the Markdown path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2))
    md_path = RESULTS / f"{name}.md"
    md_path.write_text(markdown.rstrip() + "\n")
    return md_path


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def recall_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "recall_cli", *map(str, args)]


def run_measured(command: list[str], stdin: str | None = None, env: dict | None = None) -> dict:
    """Run a command in a child process: wall seconds, peak RSS (MiB), stdout, return code.

    Peak memory comes from a tiny wrapper process so that each measurement sees only its own
    child (RUSAGE_CHILDREN of a fresh parent)."""
    wrapper = (
        "import resource, subprocess, sys, json, time\n"
        "start = time.perf_counter()\n"
        "done = subprocess.run(sys.argv[1:], stdin=sys.stdin, stdout=subprocess.PIPE)\n"
        "wall = time.perf_counter() - start\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "sys.stderr.write(json.dumps({'wall': wall, 'peak_mib': peak, 'rc': done.returncode}) + '\\n')\n"
        "sys.stdout.buffer.write(done.stdout)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *command],
        input=stdin,
        capture_output=True,
        text=True,
        # no query server left behind to answer a later measurement warm (unless asked for)
        env={**os.environ, "RECALL_SERVER_AUTOSTART": "0", **(env or {})},
    )
    measured = json.loads(done.stderr.strip().splitlines()[-1])
    measured["stdout"] = done.stdout
    measured["stderr"] = "\n".join(done.stderr.strip().splitlines()[:-1])
    return measured


def mean(values) -> float:
    return statistics.fmean(values) if values else float("nan")


# ------------------------------------------------------------------------------------------------
# honest speed comparisons: the machine's load checked first, arms alternated, spread printed
# ------------------------------------------------------------------------------------------------

BUSY_SHARE = 0.15  # share of the cores used by other processes above which timings are not published


def system_busy_seconds() -> float:
    """CPU seconds every process on the machine has used since boot, from /proc/stat (nan: none)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def others_share(busy_before: float, own_cpu: float, wall: float) -> float:
    """Share of the cores other processes used over `wall` seconds (ours taken out)."""
    cores = os.cpu_count() or 1
    return max(0.0, (system_busy_seconds() - busy_before - own_cpu) / (wall * cores)) if wall > 0 else 0.0


def load_check(log=None, seconds: float = 3.0) -> dict:
    """The machine's load before (or after) a speed comparison, while this process idles: the
    share of the cores others use over `seconds` (the load average is reported too, but it still
    carries the last minute of our own work); `quiet` False when others would contaminate timings."""
    busy0, cpu0, wall0 = system_busy_seconds(), cpu_seconds(), time.perf_counter()
    time.sleep(seconds)
    busy = others_share(busy0, cpu_seconds() - cpu0, time.perf_counter() - wall0)
    load1, cores = os.getloadavg()[0], os.cpu_count() or 1
    quiet = not busy > BUSY_SHARE
    check = {"loadavg_1m": round(load1, 2), "cores": cores, "busy_share": round(busy, 3), "quiet": quiet}
    if log:
        verdict = "quiet" if quiet else "BUSY: timings are marked and must not be published"
        log(f"machine load: others use {busy:.0%} of {cores} cores (loadavg {load1:.2f}) -> {verdict}")
    return check


def cpu_seconds() -> float:
    """CPU seconds of this process so far, every thread (torch's included)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def alternate(arms: dict, rounds: int, log=None) -> dict:
    """Run each arm once per round, A B A B ..., so slow drift of the machine hits every arm alike.
    `arms`: name -> callable returning a dict with at least "units" (work done); wall and CPU
    seconds are measured here.  Returns name -> {"runs": [...], "seconds": median wall, "spread":
    (max - min) / median, "cpu_seconds": median, plus the last run's fields}."""
    runs: dict[str, list[dict]] = {name: [] for name in arms}
    for round_number in range(rounds):
        for name in arms:
            busy0, cpu0, wall0 = system_busy_seconds(), cpu_seconds(), time.perf_counter()
            result = dict(arms[name]() or {})
            result["seconds"] = time.perf_counter() - wall0
            result["cpu_seconds"] = cpu_seconds() - cpu0
            result["others_share"] = others_share(busy0, result["cpu_seconds"], result["seconds"])
            runs[name].append(result)
            if log:
                wall, cpu, others = result["seconds"], result["cpu_seconds"], result["others_share"]
                log(f"  round {round_number + 1} {name}: {wall:.2f} s wall, {cpu:.2f} s CPU, others {others:.0%}")
    out = {}
    for name, measured in runs.items():
        walls = [r["seconds"] for r in measured]
        middle = statistics.median(walls)
        out[name] = {
            **measured[-1],
            "runs": walls,
            "cpu_runs": [r["cpu_seconds"] for r in measured],
            "seconds": middle,
            "spread": (max(walls) - min(walls)) / middle if middle else 0.0,
            "cpu_seconds": statistics.median(r["cpu_seconds"] for r in measured),
            "others_share": max(r["others_share"] for r in measured),  # the worst run
            "busy": any(r["others_share"] > BUSY_SHARE for r in measured),
        }
    return out


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict:
    """The ratio numerator / denominator of two arms' runs, taken round by round (run i of one
    arm against run i of the other, made a few seconds apart, so slow drift of the machine cancels):
    the median over rounds, and the lowest and highest.  A difference smaller than the spread
    between low and high is not settled by these rounds."""
    ratios = sorted(a / b for a, b in zip(numerator, denominator, strict=True) if b > 0)
    if not ratios:
        return {"median": float("nan"), "low": float("nan"), "high": float("nan"), "rounds": 0}
    return {"median": statistics.median(ratios), "low": ratios[0], "high": ratios[-1], "rounds": len(ratios)}


def random_huge(precision: str):
    """ImageBind-Huge with random weights in the official layout (the real ones are a 4.5 GB
    download), its vision trunk built, placed in the per-process model cache under the name the
    indexer asks for at `precision` ("fp32" or "bf16"); the model's cost does not depend on its
    weights."""
    import torch

    from recall_cli import models
    from recall_cli.models.device import precision_key
    from recall_cli.models.imagebind.model import HUGE_CONFIG, ImageBindEncoder

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    model = ImageBindEncoder(
        HUGE_CONFIG, "imagebind-huge", "imagebind-huge@random", torch.device("cpu"), torch_dtype,
        source=lambda kind: None, seed=0,
    )  # fmt: skip
    model.trunk("image")
    models._LOADED[("imagebind-huge", None, precision_key(precision), None)] = model
    return model
