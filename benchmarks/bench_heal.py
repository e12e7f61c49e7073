"""Healing on the docstring corpus (MiniLM), in one run:

* coarse-only retrieval (queries at full depth, documents at exit L) before and after `recall heal`,
  for every exit, against full depth (R@1, R@10, MRR@10; a file scores by its best chunk);
* the predictor's exit distribution, its mean blocks per unit and the coarse quality under it;
* heal wall time, adapter bytes, and what progressive sharing saves against one adapter set per exit;
* refinement exactness: the embedding resumed from the INT4-cached (un-adapted) state against the
  true full-depth embedding, minimum over every unit.

No query reaches training: `recall heal` sees only the indexed documents.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from .bench_core import load_corpus, retrieval_metrics, write_corpus_files
from .common import machine_info, machine_line, markdown_table, recall_cmd, run_measured, write_results


def file_rankings(unit_vectors: torch.Tensor, unit_paths: list[str], queries: torch.Tensor, k: int = 10):
    """Per query: files ranked by their best unit's score."""
    paths = sorted(set(unit_paths))
    column = {path: i for i, path in enumerate(paths)}
    owner = torch.tensor([column[path] for path in unit_paths])
    scores = queries @ unit_vectors.T
    per_file = torch.full((len(queries), len(paths)), -2.0)
    per_file.scatter_reduce_(1, owner.expand(len(queries), -1), scores, reduce="amax")
    top = per_file.topk(min(k, len(paths)), dim=-1).indices
    return [[paths[i] for i in row] for row in top.tolist()]


def quality(unit_vectors, unit_paths, query_vectors, rows, truth) -> dict:
    ranked = file_rankings(unit_vectors, unit_paths, query_vectors)
    return retrieval_metrics({row["id"]: r for row, r in zip(rows, ranked, strict=True)}, truth)


def main(quick: bool = False, budget_minutes: float | None = None) -> str:
    import lancedb

    from recall_cli.early_exit import quant
    from recall_cli.early_exit.adapters import load_healed
    from recall_cli.early_exit.encode import item_states, resume
    from recall_cli.early_exit.heal import collect_head_outputs
    from recall_cli.early_exit.plan import exit_plan
    from recall_cli.early_exit.policy import parse_policy
    from recall_cli.models import load_model

    info = machine_info()
    rows = load_corpus()
    if quick:
        rows = rows[:300]
    budget = budget_minutes or (2.0 if quick else 8.0)
    with tempfile.TemporaryDirectory(prefix="recall-heal-") as folder:
        work = Path(folder)
        paths = write_corpus_files(rows, work / "docs")
        truth = {row["id"]: paths[row["id"]] for row in rows}
        db = work / "db"
        indexed = run_measured(recall_cmd("index", work / "docs", "--db", db, "--full", "-q"))
        healed_run = run_measured(recall_cmd("heal", "--db", db, "--budget", budget, "--json"))
        assert healed_run["rc"] == 0, healed_run["stderr"]
        report = json.loads(healed_run["stdout"])

        model = load_model("minilm")
        table = lancedb.connect(str(db)).open_table("units").to_arrow().to_pylist()
        unit_paths = [row["path"] for row in table]
        texts = [row["snippet"] for row in table]  # whole chunks (SNIPPET_CHARS covers a chunk)
        full = torch.tensor([row["vector"] for row in table])
        queries = model.encode_texts([row["query"] for row in rows]).cpu()
        plan = exit_plan(model, "text")
        healed = load_healed(db, model, "text")
        points = healed.exits
        raw, superficial = collect_head_outputs(model, "text", texts, points, plan.k0, 32)
        fixed, _ = collect_head_outputs(model, "text", texts, points, plan.k0, 32, healed=healed)

        table_rows = [["full depth (6 blocks)", *quality(full, unit_paths, queries, rows, truth).values()]]
        per_exit = {}
        for e in points:
            before = quality(torch.nn.functional.normalize(raw[e], dim=-1), unit_paths, queries, rows, truth)
            after = quality(fixed[e], unit_paths, queries, rows, truth)
            per_exit[e] = {"before": before, "after": after}
            table_rows.append(
                [
                    f"exit {e}: raw / healed",
                    f"{before['R@1']:.3f} / {after['R@1']:.3f}",
                    f"{before['R@10']:.3f} / {after['R@10']:.3f}",
                    f"{before['MRR@10']:.3f} / {after['MRR@10']:.3f}",
                    before["queries"],
                ]
            )

        predictor = parse_policy("predictor", db, "minilm")
        chosen = predictor.choose("text", plan, superficial)
        mixed = torch.stack([full[i] if e == plan.depth else fixed[e][i] for i, e in enumerate(chosen)])
        policy_quality = quality(mixed, unit_paths, queries, rows, truth)
        mean_blocks = sum(chosen) / len(chosen)
        histogram = {str(p): chosen.count(p) for p in plan.points}

        # refinement exactness: INT4 state after k0 (un-adapted) resumed through the base blocks
        states = []
        with torch.inference_mode():
            for start in range(0, len(texts), 32):
                batch = model.run_blocks(model.tokenize("text", texts[start : start + 32]), 0, plan.k0)
                states.extend(item_states(batch, list(range(batch.n_items))))
        decoded = [quant.decode_blob(quant.encode_blob(s, plan.k0)) for s in states]
        resumed = resume(model, "text", decoded, [plan.k0] * len(decoded))
        resume_cos = (resumed * full).sum(-1)

    text = report["modalities"]["text"]
    stages = text["stages"]
    k0 = text["k0"]
    head_params = model.dim * model.dim + model.dim
    per_block_params = (
        ((stages[0]["trainable_params"] - head_params) // (stages[0]["new_blocks"][1] - stages[0]["new_blocks"][0]))
        if stages
        else 0
    )
    progressive_blocks = max(points) - k0
    separate_blocks = sum(e - k0 for e in points if e > k0)
    progressive_grad = sum(s["steps"] * (s["new_blocks"][1] - s["new_blocks"][0]) for s in stages)
    separate_grad = sum(s["steps"] * (s["exit"] - k0) for s in stages)
    full_quality = quality(full, unit_paths, queries, rows, truth)
    data = {
        "machine": info,
        "docs": len(rows),
        "units": len(table),
        "heal_budget_minutes": budget,
        "index_full_seconds": indexed["wall"],
        "heal_seconds": healed_run["wall"],
        "heal_report": report,
        "full": full_quality,
        "per_exit": per_exit,
        "predictor": {
            "quality": policy_quality,
            "mean_blocks": mean_blocks,
            "fraction_of_depth": mean_blocks / plan.depth,
            "histogram": histogram,
        },
        "refinement_resume_cosine": {"min": float(resume_cos.min()), "mean": float(resume_cos.mean())},
        "progressive": {
            "lora_params_per_block": per_block_params,
            "lora_blocks_progressive": progressive_blocks,
            "lora_blocks_separate": separate_blocks,
            "grad_block_steps_progressive": progressive_grad,
            "grad_block_steps_separate": separate_grad,
        },
    }
    ratio = policy_quality["R@10"] / full_quality["R@10"]
    markdown = "\n\n".join(
        [
            "## Healing (minilm, docstrings)",
            f"Machine: {machine_line(info)}. "
            f"Command: `python -m benchmarks.run --only heal{' --quick' if quick else ''}`; "
            f"{len(rows)} documents, {len(table)} units, `recall heal --budget {budget}` "
            f"({healed_run['wall']:.0f} s wall, adapters {report['adapter_bytes'] / 1024:.0f} KiB).",
            "Coarse-only retrieval, queries at full depth (before / after healing):",
            markdown_table(["documents at", "R@1", "R@10", "MRR@10", "queries"], table_rows),
            markdown_table(
                ["policy", "R@1", "R@10", "MRR@10", "mean blocks", "of full depth", "R@10 / full"],
                [
                    [
                        "predictor (healed)",
                        policy_quality["R@1"],
                        policy_quality["R@10"],
                        policy_quality["MRR@10"],
                        mean_blocks,
                        mean_blocks / plan.depth,
                        ratio,
                    ]
                ],
            ),
            f"Predictor exits (units): {histogram}; held-out accuracy "
            f"{text['predictor'].get('heldout_accuracy')}, label threshold {text['label_threshold']:.3f}.",
            f"Refinement from the cached un-adapted state (INT4, block {k0}): cosine with true full depth "
            f"min {float(resume_cos.min()):.4f}, mean {float(resume_cos.mean()):.4f} over {len(table)} units.",
            f"Progressive sharing: one LoRA set on {progressive_blocks} blocks "
            f"({progressive_blocks * per_block_params} LoRA parameters) instead of {separate_blocks} block-adapters "
            f"({separate_blocks * per_block_params}) for one set per exit; backward passes through "
            f"{progressive_grad} block-steps instead of {separate_grad} for the same steps.",
        ]
    )
    write_results("heal", data, markdown)
    return markdown


if __name__ == "__main__":
    import sys

    print(main(quick="--quick" in sys.argv))
