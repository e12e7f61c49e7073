"""Calibration on the first index: a fresh `recall index` (nothing else run) against `--full` on
the same files, arms alternated; then quality against full depth on the docstring corpus and on a
second public corpus that calibration never saw (networkx's docstrings, indexed afterwards), and
after an extra `recall heal`.

    python -m benchmarks.run --only calibrate [--quick]
    python -m benchmarks.bench_calibrate [--quick] [--rounds N] [--heal-budget MIN] [--steps N]
        [--share F] [--force] [--open-gate] [--results-name NAME]

Without options every `recall index` runs with the product's defaults (a new index calibrates on
its first files; RECALL_CALIBRATE* settings in the caller's environment are dropped), and the
rendered table says which settings were used.  `--share F` sets the sample share
(RECALL_CALIBRATE_SHARE); `--force` heals even where the projected saving does not pay
(RECALL_CALIBRATE_SAVING=0; the `--quick` corpus defers otherwise); `--open-gate` opens the held-out
gate (OPEN_GATE), to measure the exits it would reject.  The first pass is per query (first_pass:
`recall query --no-write-back`), every first pass runs before any query writes back, and the second
pass follows a batch that writes back.  Time: `--quick --rounds 1` took 13 min on 2 cores under
load; the full run (1,275 + 600 documents, 2 rounds, 5-minute heal) about 50-55 min, most of it
the per-query first passes (before and after the heal), about 0.5 s a query (the refine budget).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import pkgutil
import random
import re
import shutil
import tempfile
import time
from pathlib import Path

from .bench_core import batch_query, load_corpus, retrieval_metrics, write_corpus_files
from .common import machine_info, machine_line, markdown_table, recall_cmd, run_measured, write_results

BUSY_LOAD = 0.25  # 1-minute load average per core above which timings are flagged as contaminated
SECOND_CORPUS_DOCS, SECOND_CORPUS_QUICK = 600, 200
FIRST_PASS = ("--no-write-back", "-v")  # each query as the first on the index; -v: rows it refined
REFINED_LINE = re.compile(r"\d+ waiting, (\d+) refined \(")  # search.py's debug line, one per query
# the held-out gate opened (calibrate_gate.Gate): what calibration's exits give when nothing stops them
OPEN_GATE = {
    "RECALL_CALIBRATE_GATE": "0.5",
    "RECALL_CALIBRATE_GATE_CANDIDATES": "0",
    "RECALL_CALIBRATE_GATE_COARSE": "0",
}


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


def _quality(db: Path, rows: list[dict], paths: dict[str, str], extra=()) -> tuple[dict, dict]:
    """R@10 / MRR@10 of one `recall query -` batch over `rows`, and the batch's measurement."""
    ranked_by_text, measured = batch_query(db, [row["query"] for row in rows], extra)
    if measured["rc"] != 0:
        raise RuntimeError(f"recall query failed: {measured['stderr'][-2000:]}")
    ranked = {row["id"]: ranked_by_text.get(row["query"], []) for row in rows}
    return retrieval_metrics(ranked, {row["id"]: paths[row["id"]] for row in rows}), measured


def alternated_index(docs: Path, work: Path, rounds: int, env: dict) -> tuple[dict, Path, Path]:
    """A (`--full`) and B (fresh index, default policy) on the same files, A B A B...; each
    round starts from an empty index.  Returns the walls and the last round's two indexes."""
    walls: dict[str, list[float]] = {"full": [], "calibrated": []}
    for round_number in range(rounds):
        full_db, fresh_db = work / f"full-{round_number}", work / f"fresh-{round_number}"
        walls["full"].append(_index(docs, full_db, "--full", env=env))
        walls["calibrated"].append(_index(docs, fresh_db, env=env))
        _progress(f"round {round_number}: full {walls['full'][-1]:.1f} s, fresh {walls['calibrated'][-1]:.1f} s")
        if round_number < rounds - 1:
            shutil.rmtree(full_db)
            shutil.rmtree(fresh_db)
    return walls, full_db, fresh_db


def first_pass(db: Path, rows: list[dict], paths: dict[str, str]) -> dict:
    """Every query as if it were the first on the index, in one process: `--no-write-back` refines
    each query on its own (no reuse of rows an earlier query refined) and writes nothing back; its
    -v line per query gives the rows that query refined (at most 50 for a top 10, within the
    default 0.5 s budget)."""
    metrics, measured = _quality(db, rows, paths, FIRST_PASS)
    refined = [int(count) for count in REFINED_LINE.findall(measured["stderr"])]
    if len(refined) > len(rows):
        raise RuntimeError(f"{len(refined)} refinement lines for {len(rows)} queries: the -v line changed?")
    refined += [0] * (len(rows) - len(refined))  # no line: every candidate was exact already
    return {**metrics, "rows_refined_mean": sum(refined) / len(rows), "rows_refined_max": max(refined)}


def corpus_first_passes(full_db: Path, db: Path, rows: list[dict], paths: dict[str, str]) -> dict:
    """Full depth, coarse only (`--no-refine`) and the per-query first pass; none writes back."""
    return {
        "full": _quality(full_db, rows, paths)[0],
        "coarse": _quality(db, rows, paths, ("--no-refine",))[0],
        "first": first_pass(db, rows, paths),
    }


def second_pass(db: Path, copy: Path, rows: list[dict], paths: dict[str, str]) -> dict:
    """On a copy of `db` of its own (another corpus's queries would have made rows exact: on --quick
    the docstrings' left networkx nothing to refine): one batch whose queries share what they refine
    and write it back at the end (the batch figure), then the same queries again (the second pass)."""
    shutil.copytree(db, copy)
    waiting_before = _stats(copy)["early_exit"]["waiting_refinement"]
    batch = _quality(copy, rows, paths)[0]
    waiting_after = _stats(copy)["early_exit"]["waiting_refinement"]
    second = _quality(copy, rows, paths)[0]
    written = (waiting_before - waiting_after) / len(rows)
    return {"batch": batch, "second": second, "waiting_before": waiting_before, "written_back_per_query": written}


def calibration_env(steps: int | None, force: bool, share: float | None, open_gate: bool) -> dict:
    """The settings every `recall index` of the run gets, beyond the defaults."""
    env = {}
    if steps:
        env["RECALL_CALIBRATE_STEPS"] = str(steps)
    if share is not None:
        env["RECALL_CALIBRATE_SHARE"] = str(share)
    if force:
        env["RECALL_CALIBRATE_SAVING"] = "0"
    if open_gate:
        env.update(OPEN_GATE)
    return env


def main(
    quick: bool = False,
    rounds: int = 2,
    heal_budget: float | None = None,
    steps: int | None = None,
    force: bool = False,
    share: float | None = None,
    open_gate: bool = False,
    results_name: str = "calibrate",
) -> str:
    for setting in [name for name in os.environ if name.startswith("RECALL_CALIBRATE")]:
        os.environ.pop(setting)  # the defaults are what is measured, plus calibration_env's settings
    info, load = machine_info(), load_check()
    heal_budget = (1.0 if quick else 5.0) if heal_budget is None else heal_budget
    env = calibration_env(steps, force, share, open_gate)
    docs_rows = load_corpus()[: 300 if quick else None]
    second_rows = networkx_corpus(SECOND_CORPUS_QUICK if quick else SECOND_CORPUS_DOCS)
    work = Path(tempfile.mkdtemp(prefix="recall-calibrate-"))
    started_run = time.perf_counter()
    try:
        paths = write_corpus_files(docs_rows, work / "docs")
        second_paths = write_corpus_files(second_rows, work / "networkx")
        corpora = {"docstrings": (docs_rows, paths), "networkx": (second_rows, second_paths)}
        walls, full_db, fresh_db = alternated_index(work / "docs", work, rounds, env)
        fresh_stats = _stats(fresh_db)
        _progress("indexed (rounds done)", started_run)
        # the second corpus arrives later: the calibrated index encodes it with its exits
        _index(work / "networkx", full_db, "--full", env=env)
        _index(work / "networkx", fresh_db, env=env)
        healed_db = work / "healed"
        shutil.copytree(fresh_db, healed_db)  # before any query writes back
        combined_stats = _stats(fresh_db)
        # every first pass before any write-back, so neither corpus's queries find rows made exact
        # by the other's
        quality = {name: corpus_first_passes(full_db, fresh_db, *corpus) for name, corpus in corpora.items()}
        _progress("first passes", started_run)
        for name, corpus in corpora.items():
            quality[name].update(second_pass(fresh_db, work / f"written-{name}", *corpus))
        _progress("second passes", started_run)
        started = time.perf_counter()
        heal = run_measured(recall_cmd("heal", "--db", healed_db, "--budget", heal_budget))
        heal_seconds = time.perf_counter() - started
        if heal["rc"] != 0:  # (it used to be given -q, which heal does not take: nothing was healed)
            raise RuntimeError(f"recall heal failed: {heal['stderr'][-2000:]}")
        healed = {name: first_pass(healed_db, *corpus) for name, corpus in corpora.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data = {
        "machine": info,
        "load_before": load,
        "quick": quick,
        "rounds": rounds,
        "settings": env,
        "force": force,
        "open_gate": open_gate,
        "share": share,
        "steps": steps,
        "docs": len(docs_rows),
        "second_corpus_docs": len(second_rows),
        "walls": walls,
        "calibration": fresh_stats.get("calibration"),
        "skipped_docstrings": fresh_stats["early_exit"]["compute_skipped"],
        "skipped_both": combined_stats["early_exit"]["compute_skipped"],
        "quality": quality,
        "heal_budget_minutes": heal_budget,
        "heal_seconds": heal_seconds,
        "healed": healed,
        "run_seconds": time.perf_counter() - started_run,
    }
    markdown = render(data)
    write_results(results_name, data, markdown)
    return markdown


def _progress(what: str, since: float | None = None) -> None:
    print(f"[calibrate] {what}" + (f": {time.perf_counter() - since:.0f} s into the run" if since else ""), flush=True)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def render(data: dict) -> str:
    walls = data["walls"]
    return "\n\n".join(
        [
            "## calibration on the first index",
            f"Machine: {machine_line(data['machine'])}; load per core before the run "
            f"{data['load_before']['load_per_core']}."
            + (" **Machine was busy: timings not trustworthy.**" if data["load_before"]["busy"] else "")
            + f" Command: `{command_line(data)}`. MiniLM; docstring corpus {data['docs']} documents, then "
            f"networkx docstrings ({data['second_corpus_docs']} documents, indexed afterwards, never seen by "
            f"calibration). {data['rounds']} rounds, arms alternated (--full, fresh). Walls: full "
            f"{', '.join(f'{w:.1f}' for w in walls['full'])} s; fresh "
            f"{', '.join(f'{w:.1f}' for w in walls['calibrated'])} s.",
            settings_line(data),
            calibration_line(data.get("calibration") or {}),
            markdown_table(["figure", "measured", "target"], figure_rows(data)),
            "1st pass: each query as if it were the first on the index (`recall query - --no-write-back`: "
            "nothing written back, no query reuses rows another refined; default refinement, 0.5 s budget). "
            "Batch: one `recall query -` whose queries share what they refine and write it back at the end "
            "(what this table called the first pass before); 2nd pass: the same queries after that write-back; "
            "both on a copy of the index per corpus.",
            "R@10 / MRR@10:",
            markdown_table(
                ["corpus", "full depth", "coarse only", "1st pass", "batch", "2nd pass", "1st pass after heal"],
                [
                    [corpus, *(f"{q[arm]['R@10']:.4f} / {q[arm]['MRR@10']:.4f}" for arm in ARMS)]
                    + [f"{data['healed'][corpus]['R@10']:.4f} / {data['healed'][corpus]['MRR@10']:.4f}"]
                    for corpus, q in data["quality"].items()
                ],
            ),
        ]
    )


ARMS = ("full", "coarse", "first", "batch", "second")


def command_line(data: dict) -> str:
    return (
        "python -m benchmarks.bench_calibrate"
        + (" --quick" if data["quick"] else "")
        + (f" --rounds {data['rounds']}" if data["rounds"] != 2 else "")
        + (f" --steps {data['steps']}" if data.get("steps") else "")
        + (f" --share {data['share']:g}" if data.get("share") is not None else "")
        + (" --force" if data.get("force") else "")
        + (" --open-gate" if data.get("open_gate") else "")
    )


def settings_line(data: dict) -> str:
    """Which calibration settings every `recall index` of the run had, said plainly."""
    settings = " ".join(f"{key}={value}" for key, value in data["settings"].items())
    said = [f"Settings: {settings}." if settings else "Settings: the product's defaults, nothing set."]
    if data.get("force"):
        said.append("--force: healing goes ahead even where the projected saving is smaller than its cost.")
    if data.get("open_gate"):
        said.append(
            "--open-gate: the held-out quality gate is opened (cosine 0.5, no retrieval check), so exits the "
            "default gate would reject are used: what calibration's exits give, not what a default index gets."
        )
    return " ".join(said)


def calibration_line(cal: dict) -> str:
    per_exit = {
        m: {"cosine": info.get("heldout_cosine"), "retrieval": info.get("heldout_retrieval")}
        for m, info in (cal.get("modalities") or {}).items()
    }
    return (
        f"Calibration: {cal.get('status')}"
        + (f" ({cal.get('reason')})" if cal.get("reason") else "")
        + f"; sample {cal.get('sample_units')} units of {cal.get('sample_files')} files; "
        f"healing {cal.get('heal_seconds')} s of a {cal.get('budget_seconds')} s budget; held-out cosine "
        f"and retrieval per exit {per_exit}; exits used "
        f"{ {m: info.get('enabled_exits') for m, info in (cal.get('modalities') or {}).items()} }."
    )


def figure_rows(data: dict) -> list[list[str]]:
    walls = data["walls"]
    ratios = ", ".join(f"{_ratio(c, f):.3f}" for c, f in zip(walls["calibrated"], walls["full"], strict=True))
    rows = [
        ["blocks skipped, fresh index (docstrings)", f"{data['skipped_docstrings']:.1%}", ">= 35%"],
        ["blocks skipped, after the second corpus", f"{data['skipped_both']:.1%}", ""],
        [
            "wall time fresh / --full (calibration included)",
            f"{_ratio(sum(walls['calibrated']), sum(walls['full'])):.3f} (rounds {ratios})",
            "<= 0.80",
        ],
    ]
    for corpus, q in data["quality"].items():
        full, first, healed = q["full"], q["first"], data["healed"][corpus]
        rows += [
            [f"{corpus}: coarse only R@10 / full", f"{_ratio(q['coarse']['R@10'], full['R@10']):.3f}", ">= 0.80"],
            [f"{corpus}: 1st pass R@10 / full", f"{_ratio(first['R@10'], full['R@10']):.3f}", ">= 0.95"],
            [f"{corpus}: 1st pass MRR@10 / full", f"{_ratio(first['MRR@10'], full['MRR@10']):.3f}", ">= 0.93"],
            [
                f"{corpus}: rows refined per query, 1st pass (mean / max)",
                f"{first['rows_refined_mean']:.1f} / {first['rows_refined_max']}",
                "<= 50",
            ],
            [
                f"{corpus}: 2nd pass R@10 / MRR@10 minus full",
                f"{q['second']['R@10'] - full['R@10']:+.3f} / {q['second']['MRR@10'] - full['MRR@10']:+.3f}",
                "within 0.01",
            ],
            [
                f"{corpus}: 1st pass after `heal --budget {data['heal_budget_minutes']:g}` R@10 / MRR@10 of full",
                f"{_ratio(healed['R@10'], full['R@10']):.3f} / {_ratio(healed['MRR@10'], full['MRR@10']):.3f}",
                ">= 0.97 / 0.95",
            ],
        ]
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--heal-budget", type=float, default=None, help="minutes for the extra `recall heal`")
    parser.add_argument("--steps", type=int, default=None, help="pin calibration training steps (reproducible)")
    parser.add_argument("--force", action="store_true", help="use the exits even where the saving would not pay")
    parser.add_argument("--share", type=float, default=None, help="calibration sample share (RECALL_CALIBRATE_SHARE)")
    parser.add_argument(
        "--open-gate", action="store_true", help="open the held-out quality gate: measure the exits it would reject"
    )
    parser.add_argument("--results-name", default="calibrate", help="benchmarks/results/NAME.md and .json")
    arguments = parser.parse_args()
    print(
        main(
            arguments.quick,
            arguments.rounds,
            arguments.heal_budget,
            arguments.steps,
            arguments.force,
            arguments.share,
            arguments.open_gate,
            arguments.results_name,
        )
    )
