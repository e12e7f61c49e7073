"""Calibration on the first index: a fresh `recall index` (nothing else run) against `--full` on
the same files, arms alternated; then quality against full depth on the docstring corpus and on a
second public corpus that calibration never saw (networkx's docstrings, indexed afterwards), and
after an extra `recall heal`.

    python -m benchmarks.run --only calibrate [--quick]
    python -m benchmarks.bench_calibrate [--quick] [--rounds N] [--heal-budget MIN] [--steps N] [--force]

MiniLM does not calibrate by default (calibrate.OFF_BY_DEFAULT), so every arm here sets
RECALL_CALIBRATE=1; it heals in MiniLM's mode (closed-form heads; RECALL_CALIBRATE_MODE=lora for
LoRA, with --steps).  On a corpus this small the projected saving is below the healing time, so the
run defers (full depth, honest).  `--force` sets RECALL_CALIBRATE_SAVING=0 (heal and use the exits
anyway): that is how the quality figures of the calibrated exits are measured here.  Time: --quick
(2 rounds of 300 docstrings, then 200 networkx docstrings, queries, a 1-minute heal) took over 30 min
on 2 cores shared with other work (load 5-6); the full run is larger (1,275 + 600 documents).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import pkgutil
import random
import shutil
import tempfile
import time
from pathlib import Path

from .bench_core import batch_query, load_corpus, retrieval_metrics, write_corpus_files
from .common import machine_info, machine_line, markdown_table, recall_cmd, run_measured, write_results

BUSY_LOAD = 0.25  # 1-minute load average per core above which timings are flagged as contaminated
SECOND_CORPUS_DOCS, SECOND_CORPUS_QUICK = 600, 200
TARGETS = {"skipped": 0.35, "wall": 0.80, "coarse": 0.80, "first_r10": 0.95, "first_mrr": 0.93}
HEAL_TARGETS = {"R@10": 0.97, "MRR@10": 0.95}


def networkx_corpus(limit: int, seed: int = 0) -> list[dict]:
    """Public functions and classes of networkx with a docstring: the summary line is the query,
    the rest of the docstring the document (as the docstring corpus is built)."""
    import networkx

    rows, seen = [], set()
    for module_info in pkgutil.walk_packages(networkx.__path__, "networkx."):
        if ".tests" in module_info.name or "conftest" in module_info.name:
            continue
        try:
            module = importlib.import_module(module_info.name)
        except Exception:  # optional dependencies of some submodules
            continue
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            query, doc = _split_docstring(inspect.getdoc(obj) or "")
            if query and query not in seen:
                seen.add(query)
                name = f"{module.__name__}.{name}"
                rows.append({"id": f"nx{len(rows):05d}", "name": name, "query": query, "doc": doc})
    random.Random(seed).shuffle(rows)
    return rows[:limit]


def _split_docstring(text: str) -> tuple[str | None, str]:
    summary, _, rest = text.strip().partition("\n\n")
    summary = " ".join(summary.split())
    if len(summary.split()) < 4 or len(rest) < 200:
        return None, ""
    return summary, rest.strip()


def load_check() -> dict:
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    if load > BUSY_LOAD:
        print(f"[calibrate] WARNING: load {load:.2f} per core before the run; timings are not trustworthy", flush=True)
    return {"load_per_core": round(load, 3), "busy": load > BUSY_LOAD}


def _stats(db: Path) -> dict:
    return json.loads(run_measured(recall_cmd("stats", "--db", db, "--json"))["stdout"])


def _index(folder: Path, db: Path, *extra, env: dict | None = None) -> float:
    measured = run_measured(recall_cmd("index", folder, "--db", db, "-q", *extra), env=env)
    if measured["rc"] != 0:
        raise RuntimeError(f"recall index failed: {measured['stderr'][-2000:]}")
    return measured["wall"]


def _quality(db: Path, rows: list[dict], paths: dict[str, str], extra=()) -> dict:
    ranked_by_text, _ = batch_query(db, [row["query"] for row in rows], extra)
    ranked = {row["id"]: ranked_by_text.get(row["query"], []) for row in rows}
    return retrieval_metrics(ranked, {row["id"]: paths[row["id"]] for row in rows})


def alternated_index(docs: Path, work: Path, rounds: int, env: dict) -> tuple[dict, Path, Path]:
    """A (`--full`) and B (fresh index, default policy) on the same files, A B A B...; each
    round starts from an empty index.  Returns the walls and the last round's two indexes."""
    walls: dict[str, list[float]] = {"full": [], "calibrated": []}
    for round_number in range(rounds):
        full_db, fresh_db = work / f"full-{round_number}", work / f"fresh-{round_number}"
        walls["full"].append(_index(docs, full_db, "--full", env=env))
        walls["calibrated"].append(_index(docs, fresh_db, env=env))
        print(
            f"[calibrate] round {round_number}: full {walls['full'][-1]:.1f} s, fresh {walls['calibrated'][-1]:.1f} s",
            flush=True,
        )
        if round_number < rounds - 1:
            shutil.rmtree(full_db)
            shutil.rmtree(fresh_db)
    return walls, full_db, fresh_db


def corpus_quality(full_db: Path, db: Path, rows: list[dict], paths: dict[str, str]) -> dict:
    """Coarse only, first refined pass (rows refined per query), second pass after write-back."""
    full = _quality(full_db, rows, paths)
    coarse = _quality(db, rows, paths, ("--no-refine",))
    waiting_before = _stats(db)["early_exit"]["waiting_refinement"]
    first = _quality(db, rows, paths)
    waiting_after = _stats(db)["early_exit"]["waiting_refinement"]
    second = _quality(db, rows, paths)
    return {
        "full": full,
        "coarse": coarse,
        "first": first,
        "second": second,
        "rows_refined_per_query": (waiting_before - waiting_after) / len(rows),
    }


def main(
    quick: bool = False, rounds: int = 2, heal_budget: float | None = None, steps: int | None = None, force=False
) -> str:
    info, load = machine_info(), load_check()
    heal_budget = (1.0 if quick else 5.0) if heal_budget is None else heal_budget
    env = {"RECALL_CALIBRATE": "1", **({"RECALL_CALIBRATE_STEPS": str(steps)} if steps else {})}
    if force:
        env["RECALL_CALIBRATE_SAVING"] = "0"
    docs_rows = load_corpus()[: 300 if quick else None]
    second_rows = networkx_corpus(SECOND_CORPUS_QUICK if quick else SECOND_CORPUS_DOCS)
    work = Path(tempfile.mkdtemp(prefix="recall-calibrate-"))
    try:
        paths = write_corpus_files(docs_rows, work / "docs")
        second_paths = write_corpus_files(second_rows, work / "networkx")
        walls, full_db, fresh_db = alternated_index(work / "docs", work, rounds, env)
        fresh_stats = _stats(fresh_db)
        # the second corpus arrives later: the calibrated index encodes it with its exits
        _index(work / "networkx", full_db, "--full", env=env)
        _index(work / "networkx", fresh_db, env=env)
        healed_db = work / "healed"
        shutil.copytree(fresh_db, healed_db)  # before any query writes back
        combined_stats = _stats(fresh_db)
        quality = {
            "docstrings": corpus_quality(full_db, fresh_db, docs_rows, paths),
            "networkx": corpus_quality(full_db, fresh_db, second_rows, second_paths),
        }
        started = time.perf_counter()
        heal = run_measured(recall_cmd("heal", "--db", healed_db, "--budget", heal_budget, "-q"))
        heal_seconds = time.perf_counter() - started
        healed = {
            "docstrings": _quality(healed_db, docs_rows, paths),
            "networkx": _quality(healed_db, second_rows, second_paths),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data = {
        "machine": info,
        "load_before": load,
        "quick": quick,
        "rounds": rounds,
        "docs": len(docs_rows),
        "second_corpus_docs": len(second_rows),
        "walls": walls,
        "calibration": fresh_stats.get("calibration"),
        "skipped_docstrings": fresh_stats["early_exit"]["compute_skipped"],
        "skipped_both": combined_stats["early_exit"]["compute_skipped"],
        "quality": quality,
        "heal_budget_minutes": heal_budget,
        "heal_rc": heal["rc"],
        "heal_seconds": heal_seconds,
        "healed": healed,
    }
    data["force"] = force
    markdown = render(data, quick, steps)
    write_results("calibrate", data, markdown)
    return markdown


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def render(data: dict, quick: bool, steps: int | None) -> str:
    walls = data["walls"]
    ratios = [_ratio(c, f) for c, f in zip(walls["calibrated"], walls["full"], strict=True)]
    wall_ratio = _ratio(sum(walls["calibrated"]), sum(walls["full"]))
    cal = data["calibration"] or {}
    rows = [
        ["blocks skipped, fresh index (docstrings)", f"{data['skipped_docstrings']:.1%}", ">= 35%"],
        ["blocks skipped, after the second corpus", f"{data['skipped_both']:.1%}", ""],
        [
            "wall time fresh / --full (calibration included)",
            f"{wall_ratio:.3f} (rounds {', '.join(f'{r:.3f}' for r in ratios)})",
            "<= 0.80",
        ],
    ]
    for corpus, q in data["quality"].items():
        full = q["full"]
        rows += [
            [f"{corpus}: coarse only R@10 / full", f"{_ratio(q['coarse']['R@10'], full['R@10']):.3f}", ">= 0.80"],
            [f"{corpus}: 1st pass R@10 / full", f"{_ratio(q['first']['R@10'], full['R@10']):.3f}", ">= 0.95"],
            [f"{corpus}: 1st pass MRR@10 / full", f"{_ratio(q['first']['MRR@10'], full['MRR@10']):.3f}", ">= 0.93"],
            [f"{corpus}: rows refined per query (1st pass)", f"{q['rows_refined_per_query']:.1f}", "<= 50"],
            [
                f"{corpus}: 2nd pass R@10 / MRR@10 minus full",
                f"{q['second']['R@10'] - full['R@10']:+.3f} / {q['second']['MRR@10'] - full['MRR@10']:+.3f}",
                "within 0.01",
            ],
            [
                f"{corpus}: after `heal --budget {data['heal_budget_minutes']:g}` R@10 / MRR@10 of full",
                f"{_ratio(data['healed'][corpus]['R@10'], full['R@10']):.3f} / "
                f"{_ratio(data['healed'][corpus]['MRR@10'], full['MRR@10']):.3f}",
                ">= 0.97 / 0.95",
            ],
        ]
    absolute = [
        [corpus, *(f"{q[arm]['R@10']:.4f} / {q[arm]['MRR@10']:.4f}" for arm in ("full", "coarse", "first", "second"))]
        for corpus, q in data["quality"].items()
    ]
    busy = " **Machine was busy: timings not trustworthy.**" if data["load_before"]["busy"] else ""
    command = (
        f"python -m benchmarks.bench_calibrate{' --quick' if quick else ''}"
        + (f" --steps {steps}" if steps else "")
        + (" --force" if data.get("force") else "")
    )
    per_exit = {
        m: {"cosine": info.get("heldout_cosine"), "retrieval": info.get("heldout_retrieval")}
        for m, info in (cal.get("modalities") or {}).items()
    }
    return "\n\n".join(
        [
            "## calibration on the first index",
            f"Machine: {machine_line(data['machine'])}; load per core before the run "
            f"{data['load_before']['load_per_core']}.{busy} Command: `{command}`. MiniLM; docstring corpus "
            f"{data['docs']} documents, then networkx docstrings ({data['second_corpus_docs']} documents, "
            f"indexed afterwards, never seen by calibration). {data['rounds']} rounds, arms alternated "
            f"(--full, fresh). Walls: full {', '.join(f'{w:.1f}' for w in walls['full'])} s; fresh "
            f"{', '.join(f'{w:.1f}' for w in walls['calibrated'])} s.",
            f"Calibration: {cal.get('status')}"
            + (f" ({cal.get('reason')})" if cal.get("reason") else "")
            + f"; sample {cal.get('sample_units')} units of {cal.get('sample_files')} files; "
            f"healing {cal.get('heal_seconds')} s of a {cal.get('budget_seconds')} s budget; held-out cosine "
            f"and retrieval per exit {per_exit}; exits used "
            f"{ {m: info.get('enabled_exits') for m, info in (cal.get('modalities') or {}).items()} }.",
            markdown_table(["figure", "measured", "target"], rows),
            "R@10 / MRR@10:",
            markdown_table(["corpus", "full depth", "coarse only", "1st pass", "2nd pass"], absolute),
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--heal-budget", type=float, default=None, help="minutes for the extra `recall heal`")
    parser.add_argument("--steps", type=int, default=None, help="pin calibration training steps (reproducible)")
    parser.add_argument("--force", action="store_true", help="use the exits even where the saving would not pay")
    arguments = parser.parse_args()
    print(main(arguments.quick, arguments.rounds, arguments.heal_budget, arguments.steps, arguments.force))
