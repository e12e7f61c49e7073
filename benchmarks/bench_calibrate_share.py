"""Calibration's sample share against the wall time of a fresh index: the speed side of the trade
that bench_calibrate_query.py measures for quality.

A smaller sample leaves more files to encode with exits (faster), and heals the exits from fewer
units (worse first passes).  For each share: a fresh `recall index` (calibration forced on, its
gate opened, so every share uses its exits) against `--full` on the docstring corpus, arms
alternated (A B A B), with the blocks skipped and calibration's own seconds; the machine's load
before the run is stated, and a busy machine marks the table.

    python -m benchmarks.bench_calibrate_share [--shares 0.1,0.2,0.3] [--rounds 2]

Time: about 2 minutes per share and round on 2 cores (1,275 documents, both arms).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from .bench_calibrate import _stats, alternated_index, calibration_env, load_check
from .bench_core import load_corpus, write_corpus_files
from .common import machine_info, machine_line, markdown_table, write_results

HEADER = [
    "share",
    "sample files / units",
    "--full s",
    "fresh s",
    "fresh / --full [range]",
    "blocks skipped",
    "healing s",
    "calibration",
]


def main(shares: list[float], rounds: int = 2) -> str:
    info, load = machine_info(), load_check()
    work = Path(tempfile.mkdtemp(prefix="recall-calibrate-share-"))
    rows = []
    try:
        docs = work / "docs"
        write_corpus_files(load_corpus(), docs)
        for share in shares:
            walls, full_db, fresh_db = alternated_index(docs, work, rounds, calibration_env(None, True, share, True))
            stats = _stats(fresh_db)
            skipped = stats["early_exit"]["compute_skipped"]
            rows.append(
                {"share": share, "walls": walls, "skipped": skipped, "calibration": stats.get("calibration") or {}}
            )
            shutil.rmtree(full_db)
            shutil.rmtree(fresh_db)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data = {"machine": info, "load_before": load, "rounds": rounds, "shares": rows}
    markdown = render(data)
    write_results("calibrate-share", data, markdown)
    return markdown


def render(data: dict) -> str:
    table = []
    for row in data["shares"]:
        walls, cal = row["walls"], row["calibration"]
        ratios = [fresh / full for fresh, full in zip(walls["calibrated"], walls["full"], strict=True)]
        table.append(
            [
                f"{row['share']:g}",
                f"{cal.get('sample_files')} / {sum((cal.get('sample_units') or {}).values())}",
                f"{statistics.median(walls['full']):.1f}",
                f"{statistics.median(walls['calibrated']):.1f}",
                f"{statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}]",
                f"{row['skipped']:.1%}",
                f"{cal.get('heal_seconds')}",
                cal.get("status", "-"),
            ]
        )
    busy = data["load_before"]["busy"]
    shares = ",".join(f"{row['share']:g}" for row in data["shares"])
    return "\n\n".join(
        [
            "## calibration sample share against wall time",
            f"Machine: {machine_line(data['machine'])}; load per core before the run "
            f"{data['load_before']['load_per_core']}."
            + (" **Machine was busy: timings not trustworthy.**" if busy else "")
            + f" Command: `python -m benchmarks.bench_calibrate_share --shares "
            f"{shares} --rounds {data['rounds']}`. MiniLM, docstring "
            "corpus (1,275 files); every fresh index with RECALL_CALIBRATE=1, the saving check off and the "
            "held-out gate opened (bench_calibrate's --force --open-gate), so each share uses all its exits. "
            f"{data['rounds']} rounds, arms alternated (--full, fresh).",
            markdown_table(HEADER, table),
            "The quality each share gives is bench_calibrate_query's (first pass R@10 / MRR@10 of full depth).",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shares", default="0.1,0.2,0.3")
    parser.add_argument("--rounds", type=int, default=2)
    arguments = parser.parse_args()
    print(main([float(share) for share in arguments.shares.split(",")], arguments.rounds))
