"""Speculative refinement: quality of early exit + refinement against full depth, rows
refined per query, query latency, the second pass after write-back, and the cost of refining one
candidate by exit block (ImageBind test configuration, random weights).

    python -m benchmarks.run --only speculative [--quick]
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from .bench_core import batch_query, load_corpus, query_latency, retrieval_metrics, write_corpus_files
from .common import machine_info, machine_line, markdown_table, recall_cmd, run_measured, write_results

MIX = "mix:2=0.4,4=0.4,6=0.2"  # 60% of full-depth blocks, used when no trained predictor exists


def _stats(db: Path) -> dict:
    return json.loads(run_measured(recall_cmd("stats", "--db", db, "--json"))["stdout"])["early_exit"]


def _quality(db, rows, paths, extra=()):
    ranked_by_text, measured = batch_query(db, [row["query"] for row in rows], extra)
    ranked = {row["id"]: ranked_by_text.get(row["query"], []) for row in rows}
    return retrieval_metrics(ranked, {row["id"]: paths[row["id"]] for row in rows}), measured["wall"]


def imagebind_cost(name: str = "imagebind-test", repeats: int = 3) -> list[dict]:
    """Seconds to refine one image candidate from each exit block (decode blob + resume)."""
    import torch

    from recall_cli.early_exit import quant
    from recall_cli.early_exit.encode import encode_with_exits, resume
    from recall_cli.early_exit.plan import exit_plan
    from recall_cli.early_exit.policy import FixedPolicy
    from recall_cli.models import load_model

    model = load_model(name, "cpu")
    plan = exit_plan(model, "image")
    image = torch.rand(3, 224, 224)
    out = []
    torch.set_num_threads(1)
    for point in plan.points[:-1]:
        encoded = encode_with_exits(model, "image", [image], FixedPolicy(point), plan)
        blob = quant.encode_blob(encoded.states[0], point)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            resume(model, "image", [quant.decode_blob(blob)], [point], plan)
            times.append(time.perf_counter() - start)
        out.append(
            {
                "model": name,
                "exit_block": point,
                "depth": plan.depth,
                "seconds_per_candidate": min(times),
                "blob_bytes": len(blob),
            }
        )
    return out


HEAL_MINUTES_QUICK, HEAL_MINUTES = 2, 6


def empty_copy(source: Path, target: Path) -> None:
    """An index with the source's model binding and healed adapters but no rows."""
    import sqlite3

    shutil.copytree(source, target)
    shutil.rmtree(target / "units.lance")
    with sqlite3.connect(target / "manifest.sqlite") as conn:
        conn.execute("DELETE FROM files")
        conn.execute("DELETE FROM unit_exits")
        conn.execute("DELETE FROM meta WHERE key = 'full_depth'")  # the copy is not pinned to --full


def main(quick: bool = False) -> str:
    info = machine_info()
    rows = load_corpus()[: 300 if quick else 2000]
    work = Path(tempfile.mkdtemp(prefix="recall-spec-"))
    try:
        paths = write_corpus_files(rows, work / "docs")
        full_db, early_db = work / "db-full", work / "db-early"
        run_measured(recall_cmd("index", work / "docs", "--db", full_db, "--full", "-q"))
        # heal on the collection (teachers: the full-depth rows), then index the same files afresh
        # into an index that carries those adapters, as files arriving after `recall heal` are
        heal_db = work / "db-heal"
        shutil.copytree(full_db, heal_db)
        heal = run_measured(
            recall_cmd("heal", "--db", heal_db, "--budget", HEAL_MINUTES_QUICK if quick else HEAL_MINUTES)
        )
        predictor = heal["rc"] == 0
        if predictor:
            empty_copy(heal_db, early_db)
            run_measured(recall_cmd("index", work / "docs", "--db", early_db, "-q"))
        else:
            run_measured(recall_cmd("index", work / "docs", "--db", early_db, "--exit-policy", MIX, "-q"))
        fresh = work / "db-fresh"
        shutil.copytree(early_db, fresh)
        before = _stats(early_db)
        full_q, _ = _quality(full_db, rows, paths)
        off_q, _ = _quality(early_db, rows, paths, ("--no-refine",))
        first_q, _ = _quality(early_db, rows, paths)
        mid = _stats(early_db)
        second_q, _ = _quality(early_db, rows, paths)
        exact_db = work / "db-exact"
        shutil.copytree(fresh, exact_db)
        exact_q, _ = _quality(exact_db, rows, paths, ("--exact",))
        latency = query_latency(fresh, [row["query"] for row in rows][: 40 if quick else 100], 8 if quick else 20)
        refined_per_query = (before["waiting_refinement"] - mid["waiting_refinement"]) / len(rows)
        cost = imagebind_cost()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    compute = before["blocks_run"] / max(before["blocks_full"], 1)
    policy = (
        "trained predictor (recall heal)"
        if predictor
        else f"fixed exit mix {MIX} (no predictor: `recall heal` rc {heal['rc']})"
    )
    table = [
        ["full depth (--full)", *(full_q[k] for k in ("R@1", "R@10", "MRR@10"))],
        ["early exit, --no-refine", *(off_q[k] for k in ("R@1", "R@10", "MRR@10"))],
        ["early exit + refinement (default budget), 1st pass", *(first_q[k] for k in ("R@1", "R@10", "MRR@10"))],
        ["same, 2nd pass after write-back", *(second_q[k] for k in ("R@1", "R@10", "MRR@10"))],
        ["early exit + --exact", *(exact_q[k] for k in ("R@1", "R@10", "MRR@10"))],
    ]
    data = {
        "machine": info,
        "quick": quick,
        "docs": len(rows),
        "policy": policy,
        "full": full_q,
        "no_refine": off_q,
        "refined_first": first_q,
        "refined_second": second_q,
        "exact": exact_q,
        "latency": latency,
        "rows_refined_per_query": refined_per_query,
        "compute_fraction": compute,
        "imagebind_cost": cost,
        "stats_before": before,
        "stats_after_first": mid,
    }
    ratio_r10 = first_q["R@10"] / max(full_q["R@10"], 1e-9)
    ratio_mrr = first_q["MRR@10"] / max(full_q["MRR@10"], 1e-9)
    markdown = "\n\n".join(
        [
            "## speculative refinement",
            f"Machine: {machine_line(info)}. "
            f"Command: `python -m benchmarks.run --only speculative{' --quick' if quick else ''}`. "
            f"Docstring corpus, {len(rows)} documents/queries, MiniLM. Early-exit index: {policy}; "
            f"index-time encoder compute {compute:.1%} of full depth.",
            markdown_table(["pipeline", "R@1", "R@10", "MRR@10"], table),
            f"Refined pipeline vs full depth: R@10 {ratio_r10:.1%}, MRR {ratio_mrr:.1%}. Rows refined per query "
            f"(first pass, default budget): {refined_per_query:.1f}.",
            markdown_table(
                ["latency", "p50", "p95"],
                [
                    ["cold process (s)", latency["cold_p50_s"], latency["cold_p95_s"]],
                    ["batch, in process (ms)", latency["batch_p50_ms"], latency["batch_p95_ms"]],
                ],
            ),
            "Refinement cost per candidate (one image, one CPU thread, random weights):",
            markdown_table(
                ["model", "exit block", "depth", "s / candidate", "cache bytes"],
                [[c["model"], c["exit_block"], c["depth"], c["seconds_per_candidate"], c["blob_bytes"]] for c in cost],
            ),
        ]
    )
    write_results("speculative", data, markdown)
    return markdown
