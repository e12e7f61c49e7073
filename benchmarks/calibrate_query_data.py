"""Encodings for bench_calibrate_query.py, computed once and cached: for every document of a
corpus (its first chunk, as one unit), the superficial embedding at k0, the mean head output at
every exit, the full-depth embedding, and up to TOKENS_PER_UNIT token states per block (the
docstring corpus only, where calibration samples); the corpus's queries at full depth."""

from __future__ import annotations

from pathlib import Path


def encode_documents(model, texts: list[str], depth: int, k0: int, tokens: bool, batch: int = 32) -> dict:
    import torch

    from recall_cli.early_exit.calibrate_sample import _token_rows
    from recall_cli.early_exit.encode import item_mean_head

    means: dict[int, list] = {e: [] for e in range(k0, depth)}
    superficial, full, token_rows = [], [], []
    with torch.inference_mode():
        for start in range(0, len(texts), batch):
            b = model.tokenize("text", texts[start : start + batch])
            passed = {}
            for block in range(1, depth + 1):
                b = model.run_blocks(b, block - 1, block)
                if block == k0:
                    superficial.append(model.embed(b, k0).float().cpu())
                if block < depth and block >= k0:
                    means[block].append(item_mean_head(model, b, block).cpu())
                passed[block] = b
            full.append(model.embed(b, depth).float().cpu())
            if tokens:
                token_rows += _token_rows({e: passed[e] for e in range(k0, depth + 1)}, b.n_items, 0)
    out = {
        "superficial": torch.cat(superficial),
        "means": {e: torch.cat(v) for e, v in means.items()},
        "full": torch.nn.functional.normalize(torch.cat(full), dim=-1),
    }
    if tokens:
        out["tokens"] = token_rows
    return out


def corpus_encodings(name: str, rows: list[dict], cache: Path, tokens: bool) -> dict:
    """Cached encodings of one corpus (cache/name.pt)."""
    import torch

    from benchmarks.bench_calibrate_gate import full_depth
    from recall_cli.early_exit.plan import exit_plan
    from recall_cli.models import load_model

    path = Path(cache) / f"{name}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    torch.set_num_threads(1)
    model = load_model("minilm")
    plan = exit_plan(model, "text")
    data = encode_documents(model, [row["doc"] for row in rows], plan.depth, plan.k0, tokens)
    data["queries"] = full_depth(model, plan.depth, [row["query"] for row in rows])
    data["ids"] = [row["id"] for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


if __name__ == "__main__":
    import sys

    from benchmarks.bench_calibrate import SECOND_CORPUS_DOCS, networkx_corpus
    from benchmarks.bench_core import load_corpus

    cache = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/recall-calibrate-query")
    corpus_encodings("docstrings", load_corpus(), cache, tokens=True)
    corpus_encodings("networkx", networkx_corpus(SECOND_CORPUS_DOCS), cache, tokens=False)
    print("cached in", cache)
