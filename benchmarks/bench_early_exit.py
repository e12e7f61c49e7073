"""Early exit: throughput early-exit vs full depth, coarse-embedding quality per exit and
with the predictor's policy, INT4 cache error.  `python -m benchmarks.bench_early_exit [--quick]`.

MiniLM on the docstring corpus (one doc per file):
* quality: documents embedded at exit L (the head at block L, no healing, no refinement), queries
  at full depth; R@1 / R@10 / MRR for every exit and for the predictor's policy;
* predictor: labels from the collection only (rule "neighbours": shallowest exit whose 10 nearest
  documents overlap the full-depth ones by >= 0.5; raw exits have cosine ~0.1-0.3 with full depth,
  so the cosine rule, meant for healed exits, labels everything full depth); accuracy on held-out
  files, 5-fold by file so every document gets a held-out prediction; k0 = 1 and 2 compared;
* throughput: the real indexer (`index_roots`, in one process, model loaded once) on the same files,
  `--full` vs early exit with the predictor policy and with a fixed exit mix; ratio next to the
  ideal ratio (full blocks / blocks run);
* INT4: relative error of the dequantised hidden state and cosine between the full-depth embedding
  resumed from the dequantised state and from the exact state, per exit.
ImageBind (random weights, so a fixed exit distribution): the test configuration through the real
indexer on generated PNG images; the Huge vision trunk on a few images, encode only.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .common import CORPUS, alternate, load_check, machine_info, machine_line, markdown_table, write_results

ROUNDS = 4  # every throughput comparison alternates its arms, A B A B; 2 rounds moved a ratio by 5%


def _retrieval(queries, docs) -> dict:

    sims = queries @ docs.T
    target = sims.diagonal()[:, None]
    rank = (sims > target).sum(dim=1) + 1
    return {
        "R@1": float((rank <= 1).float().mean()),
        "R@10": float((rank <= 10).float().mean()),
        "MRR": float((1.0 / rank.float()).mean()),
    }


def _minilm_quality(model, docs, log) -> tuple[dict, dict]:
    """Per-exit embeddings of every doc in one pass, superficial embeddings, INT4 error."""
    import torch

    from recall_cli.early_exit import quant
    from recall_cli.early_exit.encode import encode_with_exits, resume
    from recall_cli.early_exit.policy import FixedPolicy

    depth = model.depth("text")
    per_exit = {L: [] for L in range(1, depth + 1)}
    int4 = {L: {"rel": [], "cos": []} for L in range(1, depth)}
    order = sorted(range(len(docs)), key=lambda i: len(docs[i]))
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            batch = model.tokenize("text", [docs[i] for i in idx])
            for L in range(1, depth + 1):
                batch = model.run_blocks(batch, L - 1, L)
                per_exit[L].append((idx, model.embed(batch, L)))
        log(f"  per-exit pass over {len(docs)} docs: {time.perf_counter() - started:.1f} s")
    emb = {}
    for L, parts in per_exit.items():
        out = torch.zeros(len(docs), model.dim)
        for idx, vectors in parts:
            out[idx] = vectors
        emb[L] = out
    # INT4 round trip: 96 docs spread over the length range, every exit
    sample = order[:: max(1, len(order) // 96)][:96]
    sample_docs = [docs[i] for i in sample]
    for L in range(1, depth):
        out = encode_with_exits(model, "text", sample_docs, FixedPolicy(L))
        blobs = [quant.encode_blob(states, L) for states in out.states]
        decoded = [quant.decode_blob(blob) for blob in blobs]
        for exact, approx in zip(out.states, decoded, strict=True):
            int4[L]["rel"].append(quant.relative_error(exact[0], approx[0]))
        exact_full = resume(model, "text", out.states, out.exits)
        approx_full = resume(model, "text", decoded, out.exits)
        cos = (exact_full * approx_full).sum(-1)
        int4[L]["cos"] = cos.tolist()
        int4[L]["bytes_per_doc"] = sum(map(len, blobs)) / len(blobs)
        int4[L]["tokens_per_doc"] = sum(quant.blob_info(b)["tokens"] for b in blobs) / len(blobs)
    return emb, int4


def _predictor_study(emb, superficials, points, log, seed=0) -> dict:
    """Labels from the collection (neighbours rule), 5-fold by file; accuracy and the policy's
    per-document exits (each predicted by a predictor that never saw that document)."""
    import torch

    from recall_cli.early_exit.predictor import exit_labels, train_predictor

    full = emb[points[-1]]
    labels = exit_labels({L: emb[L] for L in points[:-1]}, full, points, rule="neighbours", threshold=0.5, k=10)
    n = len(labels)
    out = {"label_histogram": {str(p): labels.count(p) for p in points}}
    for k0, superficial in superficials.items():
        folds = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) % 5
        predicted = [points[-1]] * n
        accs = []
        for fold in range(5):
            train = (folds != fold).nonzero().flatten()
            held = (folds == fold).nonzero().flatten()
            predictor, report = train_predictor(
                superficial[train], [labels[i] for i in train], points, holdout=0.0, epochs=300, seed=seed
            )
            chosen = predictor.predict(superficial[held])
            chosen = [max(c, k0) for c in chosen]
            for i, c in zip(held.tolist(), chosen, strict=True):
                predicted[i] = c
            accs.append(sum(int(c == labels[i]) for i, c in zip(held.tolist(), chosen, strict=True)) / len(held))
        majority = max(set(labels), key=labels.count)
        out[k0] = {
            "heldout_accuracy": sum(accs) / len(accs),
            "majority_baseline": labels.count(majority) / n,
            "safe": sum(int(p >= label) for p, label in zip(predicted, labels, strict=True)) / n,
            "mean_exit": sum(predicted) / n,
            "predicted": predicted,
        }
        log(
            f"  predictor k0={k0}: held-out accuracy {out[k0]['heldout_accuracy']:.3f} "
            f"(majority {out[k0]['majority_baseline']:.3f}), mean exit {out[k0]['mean_exit']:.2f}"
        )
    out["labels"] = labels
    return out


def _index_pair(files_dir: Path, work: Path, model: str, policies: list[str], log) -> list[dict]:
    """The real indexer on the same files: --full and each early-exit policy, alternated over
    ROUNDS rounds (median seconds, spread, CPU seconds)."""
    from recall_cli.index.indexer import IndexOptions, index_roots
    from recall_cli.models.device import choose_precision

    precision = choose_precision("cpu").name

    warm = work / "warm"  # first use of a model builds/loads it: not part of any timing
    if not warm.exists():
        warm.mkdir(parents=True)
        for path in sorted(files_dir.iterdir())[:2]:
            shutil.copy(path, warm / path.name)
    index_roots(
        [str(warm)], work / f"db-warm-{model}", IndexOptions(model=model, dtype=precision, exit_policy="fixed:1")
    )
    shutil.rmtree(warm)

    def arm(spec: str):
        name = "predictor" if spec.startswith("predictor:") else spec

        def run() -> dict:
            db = work / f"db-{model}"
            shutil.rmtree(db, ignore_errors=True)
            if spec.startswith("predictor:"):  # a trained predictor file to copy into the index first
                db.mkdir(parents=True)
                shutil.copy(spec.split(":", 1)[1], db / "predictor.safetensors")
            # the default precision, named: a fresh index would otherwise check it against fp32 first
            options = IndexOptions(
                model=model, dtype=precision, full=(name == "full"), exit_policy=None if name == "full" else name
            )
            summary = index_roots([str(files_dir)], db, options)
            return {
                "policy": name,
                "units": summary.units_encoded,
                "files": summary.added,
                "blocks_run": summary.blocks_run,
                "blocks_full": summary.blocks_full,
                "cache_bytes": summary.cache_bytes,
            }

        return name, run

    measured = alternate(dict(arm(spec) for spec in ["full", *policies]), ROUNDS, log)
    return [{**r, "files_per_s": r["files"] / r["seconds"]} for r in measured.values()]


def _throughput_rows(label: str, results: list[dict]) -> list[list]:
    full = results[0]
    rows = []
    for r in results:
        ideal = r["blocks_full"] / max(r["blocks_run"], 1)
        rows.append(
            [
                label,
                r["policy"],
                r["files"],
                round(r["seconds"], 2),
                f"{r['spread']:.0%}",
                round(r["cpu_seconds"] / max(r["files"], 1), 3),
                round(r["files_per_s"], 2),
                round(full["seconds"] / r["seconds"], 3),
                round(ideal, 3),
                round(r["cache_bytes"] / max(r["files"], 1) / 1024, 1),
            ]
        )
    return rows


def _huge_encode_only(n_images: int, mix: str, log) -> dict:
    """ImageBind-Huge vision trunk, random weights: encode_units full vs a fixed exit mix."""
    import torch

    from recall_cli.early_exit.policy import parse_policy
    from recall_cli.index.pipeline import encode_units
    from recall_cli.models.base import Unit
    from recall_cli.models.imagebind.model import HUGE_CONFIG, ImageBindEncoder

    started = time.perf_counter()
    model = ImageBindEncoder(
        HUGE_CONFIG,
        "imagebind-huge",
        "imagebind-huge@random",
        torch.device("cpu"),
        torch.float32,
        source=lambda kind: None,
        seed=0,
    )
    model.trunk("image")
    log(f"  huge vision trunk built in {time.perf_counter() - started:.1f} s")
    torch.manual_seed(0)
    units = [Unit("image", torch.rand(3, 224, 224)) for _ in range(n_images)]
    encode_units(model, units[:1], full=True)  # warm-up
    out = {}
    for name, kwargs in (("full", {"full": True}), (mix, {"policy": parse_policy(mix)})):
        t = time.perf_counter()
        encoded = encode_units(model, units, **kwargs)
        seconds = time.perf_counter() - t
        run = sum(e.exit_block for e in encoded)
        total = sum(e.depth for e in encoded)
        cache = [len(e.cache) for e in encoded if e.cache]
        out[name] = {
            "seconds": seconds,
            "blocks_run": run,
            "blocks_full": total,
            "cache_bytes_per_image": (sum(cache) / len(cache)) if cache else 0,
            "images": n_images,
        }
        log(f"  huge {name}: {n_images} images {seconds:.1f} s, blocks {run}/{total}")
    del model
    return out


def main(quick: bool = False) -> str:
    import torch

    from recall_cli.early_exit.plan import exit_plan
    from recall_cli.early_exit.predictor import save_predictors, train_predictor
    from recall_cli.models import load_model

    def log(message):
        print(message, file=sys.stderr, flush=True)

    info = machine_info()
    load = load_check(log)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    records = [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]
    if quick:
        records = records[:300]
    docs = [r["doc"] for r in records]
    queries = [r["query"] for r in records]
    data: dict = {"machine": info, "load_before": load, "quick": quick, "corpus": str(CORPUS), "documents": len(docs)}
    model = load_model("minilm", "cpu")
    depth = model.depth("text")
    points = exit_plan(model, "text").points

    log("minilm: per-exit quality and INT4 error")
    emb, int4 = _minilm_quality(model, docs, log)
    q = model.encode_texts(queries)
    per_exit = {L: _retrieval(q, emb[L]) for L in range(1, depth + 1)}
    # superficial embeddings for k0 = 1 and 2 are the exit-1 and exit-2 embeddings
    study = _predictor_study(emb, {1: emb[1], 2: emb[2]}, points, log)
    chosen_k0 = exit_plan(model, "text").k0
    predicted = study[chosen_k0]["predicted"]
    policy_docs = torch.stack([emb[L][i] for i, L in enumerate(predicted)])
    policy_quality = _retrieval(q, policy_docs)
    data.update(
        per_exit=per_exit,
        predictor={k: v for k, v in study.items() if k not in ("labels",)},
        policy_quality=policy_quality,
        int4={
            L: {
                "rel_error_mean": sum(v["rel"]) / len(v["rel"]),
                "rel_error_max": max(v["rel"]),
                "resumed_cos_mean": sum(v["cos"]) / len(v["cos"]),
                "resumed_cos_min": min(v["cos"]),
                "bytes_per_doc": v["bytes_per_doc"],
                "tokens_per_doc": v["tokens_per_doc"],
            }
            for L, v in int4.items()
        },
    )
    for k in (1, 2):
        data["predictor"][k].pop("predicted", None)

    work = Path(tempfile.mkdtemp(prefix="recall-bench-ee-"))
    try:
        log("minilm: indexing throughput")
        files = work / "docs"
        files.mkdir()
        n_files = 120 if quick else 200
        for r in records[:n_files]:
            (files / f"{r['id']}.txt").write_text(r["doc"], encoding="utf-8")
        # the predictor the policy uses: trained on the documents *not* being indexed here
        rest = list(range(n_files, len(records)))
        if len(rest) < 50:
            rest = list(range(len(records)))
        predictor, report = train_predictor(
            emb[chosen_k0][rest], [study["labels"][i] for i in rest], points, holdout=0.2, seed=0
        )
        predictor_path = work / "predictor.safetensors"
        save_predictors(predictor_path, "minilm", {"text": predictor}, {"text": exit_plan(model, "text")})
        data["throughput_predictor_report"] = report
        minilm_runs = _index_pair(
            files, work, "minilm", [f"predictor:{predictor_path}", "mix:2=0.25,3=0.25,4=0.25,6=0.25"], log
        )
        data["minilm_throughput"] = minilm_runs

        log("imagebind-test: indexing throughput (fixed exit mix)")
        import numpy as np
        from PIL import Image

        images = work / "images"
        images.mkdir()
        rng = np.random.default_rng(0)
        n_images = 24 if quick else 64
        for i in range(n_images):
            Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(images / f"img{i:03d}.png")
        test_runs = _index_pair(images, work, "imagebind-test", ["mix:1=0.5,2=0.5"], log)
        data["imagebind_test_throughput"] = test_runs

        huge = None
        if not quick:
            log("imagebind-huge (random weights): vision encode only, fixed exit mix")
            huge = _huge_encode_only(4, "mix:8=0.25,16=0.25,24=0.25,32=0.25", log)
            data["imagebind_huge_encode"] = huge
    finally:
        shutil.rmtree(work, ignore_errors=True)
    after = data["load_after"] = load_check(log)
    timed_runs = [*minilm_runs, *test_runs]
    busy = not (load["quiet"] and after["quiet"]) or any(r["busy"] for r in timed_runs)

    # ---- Markdown ----
    md = [
        "# Early exit\n",
        f"Machine: {machine_line(info)}. {len(docs)} docstring documents{' (quick)' if quick else ''}. "
        f"Other processes' share of the cores before: {load['busy_share']:.0%} (loadavg {load['loadavg_1m']}); "
        f"after: {after['busy_share']:.0%}; worst during a timed run: "
        f"{max(r['others_share'] for r in timed_runs):.0%}.\n",
    ]
    md.append(f"## Indexing throughput: early exit vs full depth (same files, arms alternated, {ROUNDS} rounds)\n")
    if busy:
        md.append("**BUSY: other work shared the CPU during these timings; do not publish them.**\n")
    rows = _throughput_rows("minilm docstrings", minilm_runs) + _throughput_rows("imagebind-test PNG", test_runs)
    if huge:
        full = huge["full"]
        for name, r in huge.items():
            rows.append(
                [
                    "imagebind-huge vision (encode only)",
                    name,
                    r["images"],
                    round(r["seconds"], 2),
                    "one run",
                    "-",
                    round(r["images"] / r["seconds"], 3),
                    round(full["seconds"] / r["seconds"], 3),
                    round(r["blocks_full"] / r["blocks_run"], 3),
                    round(r["cache_bytes_per_image"] / 1024, 1),
                ]
            )
    md.append(
        markdown_table(
            [
                "corpus",
                "policy",
                "files",
                "seconds (median)",
                "spread",
                "CPU s/file",
                "files/s",
                "speed-up (measured)",
                "ideal (full/run blocks)",
                "cache KiB/file",
            ],
            rows,
        )
    )
    md.append(
        "\nThe ideal ratio counts transformer blocks only; the gap to it is everything else "
        "(decoding, tokenising, the superficial head and predictor, regrouping, INT4 packing, "
        "LanceDB writes of the cache).\n"
    )
    md.append("## Coarse-embedding quality (MiniLM, no healing, no refinement)\n")
    md.append("Queries at full depth, documents at exit L.\n")
    qrows = [[f"exit {L}", round(m["R@1"], 3), round(m["R@10"], 3), round(m["MRR"], 3)] for L, m in per_exit.items()]
    mean_exit = study[chosen_k0]["mean_exit"]
    qrows.append(
        [
            f"predictor policy (k0={chosen_k0}, mean exit {mean_exit:.2f})",
            round(policy_quality["R@1"], 3),
            round(policy_quality["R@10"], 3),
            round(policy_quality["MRR"], 3),
        ]
    )
    md.append(markdown_table(["documents at", "R@1", "R@10", "MRR"], qrows))
    md.append("\n## Pre-exit predictor (labels from the collection: neighbours rule; 5-fold by file)\n")
    md.append(f"Label histogram: {study['label_histogram']}\n")
    md.append(
        markdown_table(
            ["k0", "held-out accuracy", "majority baseline", "safe (pred >= label)", "mean exit"],
            [
                [
                    k,
                    round(study[k]["heldout_accuracy"], 3),
                    round(study[k]["majority_baseline"], 3),
                    round(study[k]["safe"], 3),
                    round(study[k]["mean_exit"], 2),
                ]
                for k in (1, 2)
            ],
        )
    )
    md.append("\n## INT4 activation cache (group 32, asymmetric, fp16 scale+min)\n")
    md.append(
        markdown_table(
            [
                "exit",
                "rel. error mean",
                "rel. error max",
                "resumed cos mean",
                "resumed cos min",
                "tokens/doc",
                "KiB/doc",
            ],
            [
                [
                    L,
                    round(v["rel_error_mean"], 4),
                    round(v["rel_error_max"], 4),
                    round(v["resumed_cos_mean"], 5),
                    round(v["resumed_cos_min"], 5),
                    round(v["tokens_per_doc"], 1),
                    round(v["bytes_per_doc"] / 1024, 1),
                ]
                for L, v in data["int4"].items()
            ],
        )
    )
    markdown = "\n".join(md)
    write_results("early_exit", json.loads(json.dumps(data, default=str)), markdown)
    return markdown


if __name__ == "__main__":
    print(main(quick="--quick" in sys.argv))
