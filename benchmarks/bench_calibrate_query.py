"""Calibration on the first index, the query side: does the query help where the doc-side heads
stop?  Two levers, measured as bench_calibrate measures (R@10 / MRR@10 as a share of full depth,
the docstring corpus and networkx's docstrings, which calibration never sees), in process:

1. **Which rows the first pass refines.**  A row from a shallow exit has a noisier coarse score.
   From the calibration sample's held-out files, with the training files' full-depth vectors as
   proxy queries (never the benchmark's queries), each exit's residual (full-depth score - coarse
   score) is measured on query-like pairs (each proxy's nearest held-out files by full score).
   Arms: `groups` (candidates.py before this study: every exit group's best by its share, merged
   by rank / share, the first 50 waiting rows of that order refined), `groups50` (the same, its
   pool widened until 50 rows wait), `top` (the 50 waiting rows with the best coarse score: what
   candidates.to_refine does now), `top_same` (as many as `groups` refines), `margin_q`
   (coarse score + that exit's q-quantile residual), `scaled` (coarse score x that exit's median
   full / coarse ratio), `zscore` (each exit group's scores standardised by their own mean and
   spread for the query).  At most 50 refined rows per query in every arm.  `top_leveled`: `top`
   with the rows left waiting scored on the scale of the rows refined beside them (each exit's
   coarse score less the median coarse - full gap of its rows the query refined).  Measured: within
   0.004 of `top` on both corpora at shares 0.1-0.3 (the top 10 are refined rows nearly always);
   tried in the product too, with the keyword side's hits joining the refinement (hybrid queries,
   30% sample, gate opened): networkx first-pass MRR@10 0.910 of full against 0.907 without,
   docstrings R@10 0.981 against 0.991, so the product ranks waiting rows by their coarse score.
2. **Heads fitted for scores.**  `product` heads are calibration's (heal.Healer, mode heads: token
   ridge or pooled, the held-out files decide); `score` heads minimise the error of q . (W h) over
   proxy queries q: a generalized ridge (G W M + lambda W = X'Y M, G the token Gram matrix, M the
   proxies' second moment mixed with the identity), strengths chosen on the held-out files by the
   proxies' score error.  Coarse R@10 also with each exit's scores calibrated (`scaled`, `margin`).
3. A sweep of the predictor's compute target (choose_labels) for >= 35% of blocks skipped.

The index is both corpora together, as in bench_calibrate: the sample files (a seeded share of the
docstrings) at full depth, every other document at the exit the predictor gives it.  One unit per
document (its first 256-token chunk; the product chunks long files), refined rows take their exact
full-depth vector (the product resumes from INT4: nearly the same), every query is a first pass on
a fresh index (the bench writes back between its queries).  Quality only: no timings, so load does
not change a figure.  Prints and appends JSON lines (--out).

    python -m benchmarks.bench_calibrate_query [--share 0.3] [--targets 0.40,0.45,0.5] [--out F]

    python -m benchmarks.bench_calibrate_query --share 0.3 0.1 --targets 0.35,0.40,0.45,0.50,0.55

One core (it sets torch to one thread).  Measured on a busy 2-core machine: 40 CPU s the first time
to encode both corpora (cached in --cache), then 47 CPU s per share for five targets.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .calibrate_query_data import corpus_encodings

WANTED, REFINE_AT_MOST, POOL = 10, 50, 40  # -n 10; the bound; candidates.py's pool for 10
PROXY_TOP = 3  # a proxy query's nearest held-out files (by full-depth score): the query-like pairs


# ---------------------------------------------------------------------------------------------
# heads
# ---------------------------------------------------------------------------------------------


def product_heads(model, sample):
    from recall_cli.early_exit.heal import Healer, HealOptions

    healer = Healer(model, "text", HealOptions(mode="heads", seed=0))
    healed, report = healer.heal(sample, 1e12, version=0)
    maps = {e: healed.heads.head(e) for e in healer.exits}
    return (lambda e, means: F.normalize(maps[e](means).detach(), dim=-1)), report


def score_heads(sample, depth: int, proxies: torch.Tensor):
    """Generalized ridge per exit (see the module docstring), on the training units' token states
    and on their pooled outputs; the design, the mix of M with the identity and the strength are
    chosen on the held-out files by the proxies' squared score error on query-like pairs."""
    moment = (proxies.T @ proxies / len(proxies)).double()
    moment = moment / moment.trace() * len(moment)
    held_teacher = sample.teacher[sample.held].double()
    full = proxies.double() @ held_teacher.T
    top = full.topk(min(PROXY_TOP, len(sample.held)), dim=1).indices
    weights, report = {}, {}
    for e in sorted(sample.base_outputs):
        pooled = _with_bias(sample.base_outputs[e])
        designs = {
            "tokens": (
                _with_bias(torch.cat([sample.token_states[i][e] for i in sample.train])),
                torch.cat([sample.token_states[i][depth] for i in sample.train]).double(),
            ),
            "items": (pooled[sample.train], sample.teacher[sample.train].double()),
        }
        best = None
        for design, (x, y) in designs.items():
            g_values, g_vectors = torch.linalg.eigh(x.T @ x)
            scale = float(g_values.sum() / len(g_values))
            for mix in (0.1, 0.3, 1.0):  # 1.0: plain ridge
                m = (1 - mix) * moment + mix * torch.eye(len(moment), dtype=moment.dtype)
                m_values, m_vectors = torch.linalg.eigh(m)
                cross = g_vectors.T @ (x.T @ y) @ m_vectors * m_values[None, :]
                for alpha in (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0):
                    denominator = g_values[:, None] * m_values[None, :] + alpha * scale
                    w = g_vectors @ (cross / denominator) @ m_vectors.T
                    out = F.normalize(pooled[sample.held] @ w, dim=-1)
                    coarse = proxies.double() @ out.T
                    error = float((coarse.gather(1, top) - full.gather(1, top)).pow(2).mean())
                    if best is None or error < best[0]:
                        cos = float((out * held_teacher).sum(-1).mean())
                        best = (error, w, {"fit": design, "mix": mix, "alpha": alpha, "heldout_cos": round(cos, 4)})
        weights[e], report[e] = best[1], best[2]

    def head(e, means):
        return F.normalize(_with_bias(means) @ weights[e], dim=-1).float()

    return head, report


def _with_bias(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1).double()


# ---------------------------------------------------------------------------------------------
# per-exit score statistics from the sample (proxy queries only)
# ---------------------------------------------------------------------------------------------


def residual_stats(head, sample) -> dict[int, dict]:
    """Per exit, on query-like pairs (each training unit's teacher as a query, its PROXY_TOP nearest
    held-out units by full-depth score): residual quantiles and the median full / coarse ratio."""
    proxies, held_teacher = sample.teacher[sample.train], sample.teacher[sample.held]
    full = proxies @ held_teacher.T
    top = full.topk(min(PROXY_TOP, len(sample.held)), dim=1).indices
    stats = {}
    for e, means in sample.base_outputs.items():
        coarse = proxies @ head(e, means[sample.held]).T
        f, c = full.gather(1, top).flatten(), coarse.gather(1, top).flatten()
        residual = (f - c).numpy()
        stats[e] = {
            "q50": float(np.quantile(residual, 0.5)),
            "q75": float(np.quantile(residual, 0.75)),
            "q90": float(np.quantile(residual, 0.9)),
            "ratio": float(np.median((f / c.clamp(min=1e-3)).numpy())),
            "pairs": len(residual),
        }
    return stats


# ---------------------------------------------------------------------------------------------
# the index and its queries
# ---------------------------------------------------------------------------------------------


def optimistic(scores: np.ndarray, exits: np.ndarray, depth: int, stats: dict, arm: str) -> np.ndarray:
    """Scores of one query's rows under an arm: full-depth rows keep theirs, except under `zscore`
    (each exit group's scores, full depth included, standardised by that group's own mean and
    spread for this query: no sample statistics at all)."""
    out = scores.copy()
    if arm == "zscore":
        for e in np.unique(exits):
            rows = exits == e
            out[rows] = (scores[rows] - scores[rows].mean()) / max(float(scores[rows].std()), 1e-6)
        return out
    for e, s in stats.items():
        rows = exits == e
        if arm == "scaled":
            out[rows] = scores[rows] * s["ratio"]
        elif arm.startswith("margin_"):
            out[rows] = scores[rows] + s[arm.split("_")[1]]
    return out


def product_choice(scores: np.ndarray, exits: np.ndarray, depth: int, pool: int = POOL) -> tuple[list[int], list[int]]:
    """candidates.py for one query: (candidate rows, waiting rows to refine, in its order)."""
    groups = [int(e) for e in np.unique(exits)]
    sizes = [int((exits == e).sum()) for e in groups]
    total = sum(sizes)
    merged = []
    for e, size in zip(groups, sizes, strict=True):
        share = min(size, max(WANTED, math.ceil(pool * size / total)))
        members = np.flatnonzero(exits == e)
        best = members[np.argsort(-scores[members], kind="stable")[:share]]
        merged += [(rank / share, -scores[row], int(row)) for rank, row in enumerate(best)]
    order = [row for *_, row in sorted(merged)]
    waiting = [row for row in order if exits[row] != depth]
    return order, waiting[:REFINE_AT_MOST]


def first_pass(coarse, full, exits, depth, stats, arm, product, leveled=False) -> list[int]:
    """Top WANTED rows after refining at most REFINE_AT_MOST waiting rows chosen by `arm`
    (`product`: product_choice of this query); `leveled`: the rows left waiting scored on the
    refined rows' scale (the product does not: it measured no better)."""
    candidates, refine = product
    if arm == "groups50":  # candidates.py's order, its pool widened until 50 rows wait
        pool = POOL
        while len(refine) < REFINE_AT_MOST and pool < len(coarse):
            pool *= 2
            candidates, refine = product_choice(coarse, exits, depth, pool)
    elif arm != "groups":
        count = len(refine) if arm.endswith("_same") else REFINE_AT_MOST
        arm = arm.removesuffix("_same")
        chooser = optimistic(coarse, exits, depth, stats, arm) if arm != "top" else coarse
        waiting = np.flatnonzero(exits != depth)
        refine = [int(r) for r in waiting[np.argsort(-chooser[waiting], kind="stable")[:count]]]
    pool = sorted(set(candidates) | set(refine))
    final = coarse.copy()
    final[refine] = full[refine]
    refined = set(refine)
    left = np.array([row for row in pool if exits[row] != depth and row not in refined], dtype=int)
    if leveled and len(left):  # each exit's waiting rows less the median coarse - full of its refined rows
        for e in np.unique(exits[left]):
            done = [row for row in refine if exits[row] == e]
            if done:
                final[left[exits[left] == e]] -= float(np.median(coarse[done] - full[done]))
    return [pool[i] for i in np.argsort(-final[pool], kind="stable")[:WANTED]]


def metrics(ranked: list[list[int]], gold: list[int]) -> dict:
    hits = [ranks.index(g) + 1 if g in ranks else 0 for ranks, g in zip(ranked, gold, strict=True)]
    return {
        "R@10": sum(1 for h in hits if h) / len(gold),
        "MRR@10": sum(1 / h for h in hits if h) / len(gold),
    }


def evaluate(queries, gold, coarse_vectors, full_vectors, exits, depth, stats) -> dict:
    coarse_all = (queries @ coarse_vectors.T).numpy()
    full_all = (queries @ full_vectors.T).numpy()
    out = {"full": metrics([list(np.argsort(-f)[:WANTED]) for f in full_all], gold)}
    for arm in ("raw", "scaled", "margin_q50", "zscore"):
        ranked = [list(np.argsort(-optimistic(c, exits, depth, stats, arm))[:WANTED]) for c in coarse_all]
        out[f"coarse_{arm}"] = metrics(ranked, gold)
    products = [product_choice(c, exits, depth) for c in coarse_all]
    out["refined_per_query_groups"] = {"rows": float(np.mean([len(p[1]) for p in products]))}
    arms = ("groups", "top_same", "margin_q75_same", "groups50", "top", "margin_q50", "margin_q75", "margin_q90")
    for arm in arms + ("scaled", "zscore"):
        ranked = [
            first_pass(c, f, exits, depth, stats, arm, p)
            for c, f, p in zip(coarse_all, full_all, products, strict=True)
        ]
        out[f"first_{arm}"] = metrics(ranked, gold)
    ranked = [
        first_pass(c, f, exits, depth, stats, "top", p, leveled=True)
        for c, f, p in zip(coarse_all, full_all, products, strict=True)
    ]
    out["first_top_leveled"] = metrics(ranked, gold)
    return {
        name: {
            key: round(value / out["full"][key], 4) if key in out["full"] and name != "full" else round(value, 4)
            for key, value in m.items()
        }
        for name, m in out.items()
    }


# ---------------------------------------------------------------------------------------------
# one setting
# ---------------------------------------------------------------------------------------------


def build_sample(docs: dict, chosen: list[int]):
    from recall_cli.early_exit import calibrate_sample

    kept = calibrate_sample.Collected(
        [None] * len(chosen), [docs["full"][i].numpy() for i in chosen], [str(i) for i in chosen]
    )
    kept.features = [
        (docs["superficial"][i], {e: m[i] for e, m in docs["means"].items()}, docs["tokens"][i]) for i in chosen
    ]
    return calibrate_sample.heal_sample(kept, 0)


def exits_for(head, sample, superficial_rest, points, target: float):
    """The predictor calibration trains (calibrate._predictor, every exit enabled) at `target`."""
    from recall_cli.early_exit import predictor as exit_predictor
    from recall_cli.early_exit.heal import choose_labels

    per_exit = {e: head(e, m) for e, m in sample.base_outputs.items()}
    labels, threshold = choose_labels(per_exit, sample.teacher, points, target)
    predictor, _ = exit_predictor.train_predictor(sample.superficial, labels, points, groups=sample.files, seed=0)
    return predictor, threshold


def run_share(share: float, targets: list[float], cache: Path, out_path: Path | None) -> list[dict]:
    from benchmarks.bench_calibrate import SECOND_CORPUS_DOCS, networkx_corpus
    from benchmarks.bench_core import load_corpus
    from recall_cli.early_exit import calibrate
    from recall_cli.early_exit.plan import exit_plan
    from recall_cli.models import load_model

    torch.set_num_threads(1)
    docs = corpus_encodings("docstrings", load_corpus(), cache, tokens=True)
    second = corpus_encodings("networkx", networkx_corpus(SECOND_CORPUS_DOCS), cache, tokens=False)
    model = load_model("minilm")
    plan = exit_plan(model, "text")
    n_docs = len(docs["full"])
    order = list(range(n_docs))
    random.Random(0).shuffle(order)
    count = max(calibrate.MIN_FILES, int(share * n_docs))
    chosen, in_sample = order[:count], np.zeros(n_docs, dtype=bool)
    in_sample[chosen] = True
    sample = build_sample(docs, chosen)
    proxies = sample.teacher[sample.train]
    full_vectors = torch.cat([docs["full"], second["full"]])
    results = []
    for heads_name in ("product", "score"):
        with torch.no_grad():
            head, head_report = (
                product_heads(model, sample) if heads_name == "product" else score_heads(sample, plan.depth, proxies)
            )
        if heads_name == "product":
            head_report = {
                e: {"fit": r.get("fit", "items"), "heldout_cos": round(r["heldout_cos"], 4)}
                for e, r in ((int(k), v) for k, v in head_report["ridge"].items())
            }
        stats = residual_stats(head, sample)
        for target in targets:
            predictor, threshold = exits_for(head, sample, None, plan.points, target)
            exits_docs = np.where(in_sample, plan.depth, predictor.predict(docs["superficial"]))
            exits_second = np.asarray(predictor.predict(second["superficial"]))
            exits = np.concatenate([exits_docs, exits_second])
            coarse = full_vectors.clone()
            for e in range(plan.k0, plan.depth):
                rows = np.flatnonzero(exits == e)
                if len(rows):
                    means = torch.cat([docs["means"][e], second["means"][e]])[rows]
                    coarse[rows] = head(e, means)
            rest = [i for i in range(n_docs) if not in_sample[i]]
            corpora = {
                "docstrings": (docs["queries"], list(range(n_docs))),
                "docstrings_rest": (docs["queries"][rest], rest),
                "networkx": (second["queries"], list(range(n_docs, n_docs + len(second["full"])))),
            }
            row = {
                "share": share,
                "sample": count,
                "heads": heads_name,
                "target": target,
                "label_threshold": round(threshold, 4),
                "skip": {
                    "docstrings": round(1 - exits_docs.sum() / (n_docs * plan.depth), 4),
                    "docstrings_rest": round(1 - exits_docs[~in_sample].sum() / ((~in_sample).sum() * plan.depth), 4),
                    "networkx": round(1 - exits_second.sum() / (len(exits_second) * plan.depth), 4),
                },
                "exit_counts": {str(e): int((exits == e).sum()) for e in plan.points},
                "head_fit": {str(e): v for e, v in head_report.items()},
                "residual": {str(e): {k: round(v, 4) for k, v in s.items()} for e, s in stats.items()},
            }
            for corpus, (queries, gold) in corpora.items():
                row[corpus] = evaluate(queries, gold, coarse, full_vectors, exits, plan.depth, stats)
            print(json.dumps(row), flush=True)
            if out_path:
                with open(out_path, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
            results.append(row)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--share", type=float, nargs="+", default=[0.3])
    parser.add_argument("--targets", default="0.40,0.45,0.50,0.55")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/recall-calibrate-query"))
    parser.add_argument("--out", type=Path, default=None, help="append the JSON lines here")
    arguments = parser.parse_args()
    for value in arguments.share:
        run_share(value, [float(t) for t in arguments.targets.split(",")], arguments.cache, arguments.out)
