"""Early exit: blocks after an item's exit never run, coarse embeddings and caches are stored per
row, `--full`, the predictor (labels, training, save/load) and the cache budget."""

import json
import os

import lancedb
import pytest
import torch
from conftest import count_blocks, write_files

from recall_cli.early_exit import quant
from recall_cli.early_exit.cache import enforce_budget, eviction_order, parse_size
from recall_cli.early_exit.encode import encode_with_exits, resume
from recall_cli.early_exit.plan import ExitPlan, exit_plan
from recall_cli.early_exit.policy import (
    POLICY_ENV,
    ExitPolicy,
    FixedPolicy,
    FullDepthPolicy,
    PredictorPolicy,
    parse_policy,
)
from recall_cli.early_exit.predictor import exit_labels, save_predictors, train_predictor
from recall_cli.models.base import Batch, LayeredEncoder
from recall_cli.storage import layout
from recall_cli.storage.manifest import exit_groups


@pytest.fixture(scope="module")
def minilm():
    from recall_cli.models import load_model

    return load_model("minilm", "cpu")


class ListPolicy(ExitPolicy):
    """Exits given in advance, item by item."""

    def __init__(self, exits_list):
        self.exits_list = list(exits_list)

    def choose(self, modality, plan, superficial):
        assert superficial.shape[0] == len(self.exits_list)
        return self.exits_list


class Toy(LayeredEncoder):
    """A tiny layered encoder with multi-sequence items (like video clips); block i adds i+1."""

    name, version, dim, modalities = "toy", "toy@1", 4, ("video",)

    def file_units(self, path, modality):
        raise NotImplementedError

    def text_unit(self, text):
        raise NotImplementedError

    def depth(self, modality):
        return 8

    def tokenize(self, modality, data):
        counts = [int(d) for d in data]  # item i has data[i] sequences
        owner = torch.repeat_interleave(torch.arange(len(data)), torch.tensor(counts))
        hidden = torch.randn(len(owner), 5, self.dim)
        mask = torch.ones(len(owner), 5, dtype=torch.bool)
        return Batch(modality, hidden, mask, owner, len(data))

    def block(self, modality, index, hidden, mask):
        return hidden + (index + 1)

    def head(self, modality, hidden, mask, exit_block):
        return hidden.mean(1)


def test_blocks_after_each_items_exit_never_run_multi_sequence_items(monkeypatch):
    toy = Toy()
    calls = count_blocks(toy, monkeypatch)
    plan = exit_plan(toy, "video")
    assert plan == ExitPlan(8, 1, (1, 2, 3, 4, 5, 6, 7, 8))
    sequences = [3, 1, 2, 2, 1]
    chosen = [3, 1, 8, 3, 5]
    out = encode_with_exits(toy, "video", sequences, ListPolicy(chosen))
    assert out.exits == chosen
    for index in range(8):  # block i ran exactly on the sequences of items with exit > i
        ran = sum(n for i, n in calls if i == index)
        assert ran == sum(seqs for seqs, e in zip(sequences, chosen, strict=True) if e > index), index
    assert sum(n for _, n in calls) == sum(s * e for s, e in zip(sequences, chosen, strict=True))
    # every sequence of an item that stopped early is kept for the cache; full depth keeps none
    assert [len(s) if s is not None else None for s in out.states] == [3, 1, None, 2, 1]


def test_minilm_early_exit_counts_blocks_and_stores_the_coarse_embedding(minilm, monkeypatch):
    texts = [f"note {i}: " + "word " * (3 + 5 * i) for i in range(6)]
    chosen = [1, 6, 2, 4, 2, 6]
    full = minilm.encode("text", texts)
    reference = {}
    with torch.inference_mode():  # head at L on the whole batch, computed the plain way
        batch = minilm.tokenize("text", texts)
        for L in range(1, 7):
            batch = minilm.run_blocks(batch, L - 1, L)
            reference[L] = minilm.embed(batch, L)
    calls = count_blocks(minilm, monkeypatch)
    out = encode_with_exits(minilm, "text", texts, ListPolicy(chosen))
    for index in range(6):
        assert sum(n for i, n in calls if i == index) == sum(1 for e in chosen if e > index)
    for i, exit_block in enumerate(chosen):
        assert torch.allclose(out.vectors[i], reference[exit_block][i], atol=1e-5)
        if exit_block == 6:
            assert torch.allclose(out.vectors[i], full[i], atol=1e-5) and out.states[i] is None
        else:
            real_tokens = len(minilm.tokenizer.encode(texts[i]).ids)
            assert out.states[i][0].shape == (real_tokens, 384)  # padding removed


def test_full_depth_policy_runs_no_superficial_pass(minilm, monkeypatch):
    calls = count_blocks(minilm, monkeypatch)
    out = encode_with_exits(minilm, "text", ["a", "b c d"], FullDepthPolicy())
    assert out.exits == [6, 6] and [i for i, _ in calls] == list(range(6))


def test_imagebind_test_video_cache_holds_every_clip(monkeypatch):
    from recall_cli.models import load_model

    model = load_model("imagebind-test", "cpu")
    calls = count_blocks(model, monkeypatch)
    torch.manual_seed(0)
    videos = [torch.rand(3, 3, 2, 224, 224), torch.rand(2, 3, 2, 224, 224)]  # 3 clips, 2 clips
    out = encode_with_exits(model, "video", videos, ListPolicy([1, 2]))
    assert [i for i, _ in calls] == [0, 1] and [n for _, n in calls] == [5, 2]
    blob = quant.encode_blob(out.states[0], 1)
    assert quant.blob_info(blob)["lengths"] == [257, 257, 257] and quant.blob_info(blob)["block"] == 1
    resumed = resume(model, "video", [quant.decode_blob(blob)], [1])
    exact = resume(model, "video", [out.states[0]], [1])
    full = model.encode("video", videos[:1])
    assert torch.allclose(exact, full, atol=1e-4)
    assert float((resumed * exact).sum()) > 0.99


def test_policies_parse_and_snap(tmp_path):
    plan = ExitPlan(32, 4, (4, 8, 12, 16, 20, 24, 28, 32))
    sup = torch.zeros(10, 8)
    assert parse_policy("fixed:5").choose("image", plan, sup) == [8] * 10
    mixed = parse_policy("mix:4=0.5,32=0.5").choose("image", plan, sup)
    assert sorted(set(mixed)) == [4, 32] and mixed.count(4) == 5
    assert isinstance(parse_policy("auto", tmp_path), FullDepthPolicy)  # nothing healed yet
    from recall_cli.errors import RecallError

    with pytest.raises(RecallError):
        parse_policy("predictor", tmp_path)
    with pytest.raises(RecallError):
        parse_policy("sometimes")


def test_index_records_exit_block_and_cache_per_row_and_stats(cli, db_dir, tmp_path):
    root = tmp_path / "files"
    write_files(
        root, {"a.md": "alpha notes about kayaks", "b.txt": "beta notes on trains " * 5, "c.txt": "gamma " * 400}
    )  # c: two chunks
    result = cli("index", root, "--json", "--exit-policy", "fixed:3")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["blocks_run"] == 3 * summary["units_encoded"] and summary["cache_bytes"] > 0
    rows = lancedb.connect(str(db_dir)).open_table("units").to_arrow().to_pylist()
    assert len(rows) == 4
    for row in rows:
        assert row["exit_block"] == 3 and row["depth"] == 6 and not row["refined"]
        info = quant.blob_info(row["cache"])
        assert info["dim"] == 384 and len(info["lengths"]) == 1 and info["lengths"][0] > 2
    stats = json.loads(cli("stats", "--json").stdout)["early_exit"]
    assert stats["exit_histogram"] == {"text": {"3": 4}} and stats["depth"] == {"text": 6}
    assert stats["compute_skipped"] == pytest.approx(0.5)
    assert stats["waiting_refinement"] == 4 and stats["cache_units"] == 4
    assert stats["cache_bytes"] == sum(len(row["cache"]) for row in rows)
    assert stats["cache_budget"] == 2 << 30 and not stats["full_depth_index"]
    human = cli("stats").stdout
    assert "50.0% of encoder blocks skipped" in human and "4 units waiting" in human
    # a moved file keeps its exit records
    os.rename(root / "a.md", root / "a2.md")
    assert cli("index", root, "--exit-policy", "fixed:3").exit_code == 0
    assert json.loads(cli("stats", "--json").stdout)["early_exit"]["exit_histogram"] == {"text": {"3": 4}}


def test_full_flag_gives_refined_rows_without_cache_and_sticks(cli, db_dir, tmp_path, monkeypatch):
    root = tmp_path / "files"
    write_files(root, {"a.md": "alpha notes", "b.txt": "beta notes"})
    assert cli("index", root, "--full").exit_code == 0
    monkeypatch.setenv(POLICY_ENV, "fixed:2")  # ignored: the index is full depth
    write_files(root, {"c.md": "gamma notes"})
    assert cli("index", root).exit_code == 0
    rows = lancedb.connect(str(db_dir)).open_table("units").to_arrow().to_pylist()
    assert len(rows) == 3
    assert all(row["refined"] and row["exit_block"] == 6 and row["cache"] is None for row in rows)
    stats = json.loads(cli("stats", "--json").stdout)["early_exit"]
    assert stats["full_depth_index"] and stats["compute_skipped"] == 0 and stats["cache_bytes"] == 0


def test_cache_budget_releases_deepest_then_oldest(cli, db_dir, tmp_path):
    groups = [("a", 2, 6, 100, 5.0), ("b", 4, 6, 100, 9.0), ("c", 4, 6, 100, 1.0), ("d", 16, 32, 100, 0.0)]
    assert [g[0] for g in eviction_order(groups)] == ["c", "b", "d", "a"]
    assert parse_size("2GiB") == 2 << 30 and parse_size("500k") == 500 << 10
    root = tmp_path / "files"
    write_files(root, {f"n{i}.md": f"note number {i} " * (i + 1) for i in range(6)})
    assert cli("index", root, "--exit-policy", "mix:2=0.5,4=0.5", "--cache-budget", "1").exit_code == 0
    rows = lancedb.connect(str(db_dir)).open_table("units").to_arrow().to_pylist()
    assert all(row["cache"] is None for row in rows) and {row["exit_block"] for row in rows} == {2, 4}
    stats = json.loads(cli("stats", "--json").stdout)["early_exit"]
    assert stats["cache_bytes"] == 0 and stats["cache_budget"] == 1 and stats["waiting_refinement"] == 6


def test_budget_enforcement_keeps_shallow_entries(tmp_path, minilm):
    from recall_cli.storage.manifest import FileRecord, Manifest
    from recall_cli.storage.table import Store

    manifest, store = Manifest(tmp_path), Store(tmp_path, dim=384)  # an index starts with its manifest
    rows = []
    for i, exit_block in enumerate([2, 5, 3]):
        out = encode_with_exits(minilm, "text", [f"text {i}"], FixedPolicy(exit_block))
        rows.append(
            {
                "id": f"p{i}\x1f0",
                "path": f"/p{i}",
                "chunk": 0,
                "modality": "text",
                "vector": out.vectors[0].tolist(),
                "exit_block": exit_block,
                "depth": 6,
                "refined": False,
                "cache": quant.encode_blob(out.states[0], exit_block),
            }
        )
    store.upsert(rows)
    for row in rows:
        manifest.upsert([FileRecord(row["path"], "/", 1, 1, "h", "text", "ok", None, 1)])
        manifest.set_exits(row["path"], *exit_groups([row]))
    size = len(rows[0]["cache"])
    report = enforce_budget(store, manifest, budget=2 * size)
    assert report["released_groups"] == 1
    kept = {row["path"]: row["cache"] is not None for row in store.table.to_arrow().to_pylist()}
    assert kept == {"/p0": True, "/p1": False, "/p2": True}  # exit 5 (deepest) went first
    manifest.close()


def test_exit_labels_and_predictor_training_with_held_out_accuracy(tmp_path):
    points = (1, 2, 3, 4, 5, 6)
    full = torch.nn.functional.normalize(torch.randn(40, 16), dim=-1)
    noise = torch.randn(40, 16)
    per_exit = {p: torch.nn.functional.normalize(full + noise * (6 - p) * 0.15, dim=-1) for p in points[:-1]}
    labels = exit_labels(per_exit, full, points, rule="cosine", threshold=0.95)
    for i, label in enumerate(labels):  # the shallowest exit meeting the threshold
        cos = {p: float(per_exit[p][i] @ full[i]) for p in points[:-1]}
        assert label == next((p for p in points[:-1] if cos[p] >= 0.95), 6)
    neighbour_labels = exit_labels(per_exit, full, points, rule="neighbours", threshold=0.6, k=5)
    assert all(label in points for label in neighbour_labels)

    # a learnable rule: the superficial embedding's first coordinates say how hard the item is
    torch.manual_seed(0)
    n = 600
    hardness = torch.randint(0, 3, (n,))
    superficial = torch.randn(n, 32)
    superficial[:, 0] += hardness * 5.0  # well separated: Bayes accuracy ~0.99
    target = [(2, 4, 6)[int(h)] for h in hardness]
    groups = [i // 3 for i in range(n)]  # three chunks per "file"
    predictor, report = train_predictor(superficial, target, points, groups=groups, epochs=200)
    assert report["heldout_items"] == 120 and report["heldout_accuracy"] > 0.85
    assert report["heldout_accuracy"] > report["majority_baseline"] + 0.3

    plan = ExitPlan(6, 1, points)
    path = tmp_path / layout.PREDICTOR_FILE
    save_predictors(path, "minilm", {"text": predictor}, {"text": plan})
    policy = parse_policy("auto", tmp_path, "minilm")
    assert isinstance(policy, PredictorPolicy)
    assert policy.choose("text", plan, superficial[:50]) == predictor.predict(superficial[:50])
    assert policy.is_full("image")  # no predictor for that modality: full depth


class PaddedToy(Toy):
    """Toy with sequences of different lengths (padding at the end) and a head over real tokens."""

    def tokenize(self, modality, data):
        counts = [int(d) for d in data]
        owner = torch.repeat_interleave(torch.arange(len(data)), torch.tensor(counts))
        generator = torch.Generator().manual_seed(7)
        lengths = torch.randint(1, 9, (len(owner),), generator=generator)
        mask = torch.arange(9)[None, :] < lengths[:, None]
        hidden = torch.randn(len(owner), 9, self.dim, generator=generator) * mask[..., None]
        return Batch(modality, hidden, mask, owner, len(data))

    def head(self, modality, hidden, mask, exit_block):
        weights = mask.to(hidden.dtype)[..., None]
        return (hidden * weights).sum(1) / weights.sum(1)


def test_exits_keep_each_items_own_state_and_embedding_through_the_regroupings():
    # items leave at several points, so the batch is regrouped (padding columns cut) and states
    # are taken from sub-batches: each must still be that item's own real tokens after its blocks
    toy = PaddedToy()
    sequences, chosen = [2, 1, 3, 1, 2, 1], [3, 1, 8, 2, 3, 5]
    out = encode_with_exits(toy, "video", sequences, ListPolicy(chosen))
    batch = toy.tokenize("video", sequences)
    for item, exit_block in enumerate(chosen):
        rows = (batch.owner == item).nonzero().flatten()
        after = batch.hidden[rows]
        for index in range(exit_block):  # block i adds i + 1, as the blocks do it
            after = after + (index + 1)
        mask = batch.mask[rows]
        expected = toy.head("video", after, mask, exit_block)
        assert torch.allclose(out.vectors[item], torch.nn.functional.normalize(expected.mean(0), dim=-1), atol=1e-6)
        if exit_block == 8:
            assert out.states[item] is None
            continue
        assert len(out.states[item]) == len(rows)
        for state, sequence, sequence_mask in zip(out.states[item], after, mask, strict=True):
            assert torch.equal(state, sequence[sequence_mask])


def test_the_predictors_optimiser_steps_like_torchs_adamw_without_loading_torch_dynamo():
    # constructing a torch.optim optimiser imports torch._dynamo (0.7 s): more than the whole fit
    import copy
    import subprocess
    import sys

    from recall_cli.early_exit.predictor import AdamW, ExitPredictor

    torch.manual_seed(0)
    x, y = torch.randn(100, 16), torch.randint(0, 3, (100,))
    ours = ExitPredictor(16, (1, 2, 3), 8)
    theirs = copy.deepcopy(ours)
    own_steps = AdamW(list(ours.parameters()), lr=3e-3, weight_decay=1e-2)
    reference = torch.optim.AdamW(theirs.parameters(), lr=3e-3, weight_decay=1e-2)
    loss = torch.nn.CrossEntropyLoss()
    for _ in range(50):
        for model, optimiser in ((ours, own_steps), (theirs, reference)):
            model.zero_grad()
            loss(model(x), y).backward()
            optimiser.step()
    for mine, torchs in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.allclose(mine, torchs, atol=1e-6)
    code = (
        "import sys, torch\n"
        "from recall_cli.early_exit.predictor import train_predictor\n"
        "train_predictor(torch.randn(40, 8), [1, 2] * 20, (1, 2), epochs=5)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"
