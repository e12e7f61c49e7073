"""Run the benchmarks and write benchmarks/results/*.json, *.md and a combined SUMMARY.md.

    python -m benchmarks.run [--quick] [--only core,early_exit,...]

Each suite is a module `benchmarks.bench_<name>` with `main(quick: bool) -> str` (Markdown).
Suites whose module is missing are skipped with a note.
"""

from __future__ import annotations

import argparse
import importlib
import time
import traceback

from .common import RESULTS, machine_info, machine_line

SUITES = [
    "core",
    "early_exit",
    "speed",
    "heal",
    "imagebind",
    "watch",
    "speculative",
    "hybrid",
    "server",
    "calibrate",
    "mediatext",
    "photo_decode",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller corpora, for a fast look")
    parser.add_argument("--only", default=",".join(SUITES), help="comma-separated suites: " + ", ".join(SUITES))
    args = parser.parse_args()
    sections = [
        f"# recall benchmarks\n\nMachine: {machine_line(machine_info())}. "
        f"Command: `python -m benchmarks.run{' --quick' if args.quick else ''}`."
    ]
    for name in args.only.split(","):
        started = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.bench_{name}")
        except ModuleNotFoundError as error:
            sections.append(f"## {name}\n\nnot run: {error}")
            continue
        try:
            sections.append(module.main(quick=args.quick))
        except Exception:  # one failing suite must not hide the others' numbers
            sections.append(f"## {name}\n\nFAILED:\n```\n{traceback.format_exc()}```")
        print(f"[bench] {name}: {time.perf_counter() - started:.0f} s", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "SUMMARY.md").write_text("\n\n".join(sections) + "\n")
    print("\n\n".join(sections))


if __name__ == "__main__":
    main()
