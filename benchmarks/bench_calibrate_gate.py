"""Does calibration's held-out gate predict retrieval?  One calibration-sized sample of the
docstring corpus is healed (pinned steps: the same result on any machine), then each exit's
held-out figures (cosine, held-out retrieval: calibrate_gate.py) are set beside what that exit
really gives on the rest of the corpus with the benchmark's queries: coarse R@10, and a first
pass that refines the top 50 to full depth, both as a share of full-depth R@10.  Quality only (no
timings), so the figures do not depend on load; prints JSON lines, writes nothing.

    python -m benchmarks.bench_calibrate_gate [--steps 200] [--share 0.1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import time

from .bench_core import load_corpus


def full_depth(model, depth: int, texts: list[str]):
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), 64):
            batch = model.run_blocks(model.tokenize("text", texts[start : start + 64]), 0, depth)
            out.append(model.embed(batch, depth).float().cpu())
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def ranked_shares(queries, documents, exact) -> tuple[float, float]:
    """(coarse R@10, R@10 after refining the top 50 to full depth); query i's answer is document i."""
    import torch

    top = (queries @ documents.T).topk(50, dim=1).indices
    gold = torch.arange(len(queries))[:, None]
    coarse = float((top[:, :10] == gold).any(1).float().mean())
    refined_scores = (queries[:, None, :] * exact[top]).sum(-1)
    refined = top.gather(1, refined_scores.argsort(dim=1, descending=True)[:, :10])
    return coarse, float((refined == gold).any(1).float().mean())


def main(steps: int, share: float, quick: bool) -> dict:
    from recall_cli.early_exit import calibrate, calibrate_gate, calibrate_sample
    from recall_cli.early_exit.heal import Healer, HealOptions, collect_head_outputs
    from recall_cli.early_exit.plan import exit_plan
    from recall_cli.models import load_model

    rows = load_corpus()[: 400 if quick else None]
    model = load_model("minilm")
    plan = exit_plan(model, "text")
    docs = [row["doc"] for row in rows]
    teacher, queries = full_depth(model, plan.depth, docs), full_depth(model, plan.depth, [r["query"] for r in rows])
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    count = max(calibrate.MIN_FILES, int(share * len(rows)))
    chosen, rest = order[:count], order[count:]
    kept = calibrate_sample.Collected(
        [docs[i] for i in chosen], [teacher[i].numpy() for i in chosen], [str(i) for i in chosen]
    )
    sample = calibrate_sample.heal_sample(kept, 0)
    healer = Healer(model, "text", HealOptions(steps=steps, target_compute=calibrate.TARGET_COMPUTE, seed=0))
    started = time.perf_counter()
    healed, report = healer.heal(sample, time.time() + 3600, version=0)
    print(json.dumps({"sample": count, "held_out": len(sample.held), "steps": steps}), flush=True)
    exits, _ = collect_head_outputs(healed.model, "text", [docs[i] for i in rest], healer.exits, plan.k0, 32, healed)
    full_r10, _ = ranked_shares(queries[rest], teacher[rest], teacher[rest])
    result = {"sample": count, "steps": steps, "heal_seconds": time.perf_counter() - started, "full_R@10": full_r10}
    for e in healer.exits:
        coarse, first = ranked_shares(queries[rest], exits[e], teacher[rest])
        result[str(e)] = {
            "heldout_cosine": report["cosine"][str(e)]["heldout_mean"],
            "train_cosine": report["cosine"][str(e)]["train_mean"],
            "heldout_retrieval": calibrate_gate.heldout_retrieval(
                healer.healed_outputs[e], sample.teacher, sample.held
            ),
            "coarse_R@10_of_full": coarse / full_r10,
            "first_pass_R@10_of_full": first / full_r10,
        }
        print(json.dumps({"exit": e, **result[str(e)]}), flush=True)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--share", type=float, default=0.1, help="share of the corpus in the sample")
    parser.add_argument("--quick", action="store_true", help="the first 400 documents only")
    arguments = parser.parse_args()
    main(arguments.steps, arguments.share, arguments.quick)
