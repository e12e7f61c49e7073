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
