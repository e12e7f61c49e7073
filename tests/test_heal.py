"""`recall heal`: LoRA-healed exits (peft), the predictor, versions, stale refresh, exact refinement."""

import json
import os

import lancedb
import pytest
from conftest import Cli, write_files

from recall_cli.early_exit import adapters, heal, heal_run, quant
from recall_cli.early_exit.encode import resume
from recall_cli.early_exit.policy import PredictorPolicy, parse_policy
from recall_cli.models import load_model
from recall_cli.storage import layout
from recall_cli.storage.lock import HealLock

TOPICS = [
    "kayak trips on mountain lakes",
    "baking sourdough bread",
    "train timetables in Europe",
    "tax returns and receipts",
    "garden tomatoes and compost",
    "jazz piano chords",
    "python list comprehensions",
    "marathon training plans",
    "birdwatching in spring",
    "repairing a bicycle chain",
    "knitting wool sweaters",
    "astronomy and telescopes",
]


def notes(count: int, offset: int = 0) -> dict[str, str]:
    out = {}
    for i in range(offset, offset + count):
        topic = TOPICS[i % len(TOPICS)]
        out[f"n{i:03d}.md"] = f"Note {i} about {topic}. " + " ".join(
            f"Detail {j} on {topic} with remark {i * 7 + j}." for j in range(3 + i % 4)
        )
    return out


@pytest.fixture(scope="module")
def healed_index(tmp_path_factory):
    base = tmp_path_factory.mktemp("heal")
    root, db = base / "files", base / "db"
    write_files(root, notes(48))
    cli = Cli(db)
    # half the collection indexed with a raw (unhealed) exit, so there is something stale later
    assert cli("index", root, "--exit-policy", "fixed:3").exit_code == 0
    result = cli("heal", "--budget", "0.4", "--exits", "1,2,3", "--json")
    assert result.exit_code == 0, result.stderr
    return cli, root, db, json.loads(result.stdout)


def test_heal_writes_a_version_with_peft_lora_heads_and_predictor(healed_index):
    cli, root, db, report = healed_index
    assert report["version"] == 1 and layout.current_version(db) == 1
    folder = layout.version_dir(db, 1)
    for name in ("lora.safetensors", "heads.safetensors", "predictor.safetensors", "heal.json"):
        assert (folder / name).stat().st_size > 0
    text = report["modalities"]["text"]
    assert text["exits"] == [1, 2, 3] and text["k0"] == 1
    assert [stage["new_blocks"] for stage in text["stages"]] == [[1, 2], [2, 3]]  # progressive
    assert 0 <= text["predictor"]["heldout_accuracy"] <= 1
    # healing moved every exit towards the full-depth embedding of the same file
    for e in ("1", "2", "3"):
        assert text["cosine"][e]["train_mean"] > text["raw_cosine"][e]["train_mean"] + 0.2
    assert report["refresh"]["refreshed"] > 0


def test_adapters_are_peft_lora_and_never_touch_the_shared_model(healed_index):
    from peft.tuners.lora import LoraLayer

    cli, root, db, _ = healed_index
    base = load_model("minilm")
    healed = adapters.load_healed(db, base, "text")
    assert any(isinstance(m, LoraLayer) for m in healed.model.bert.modules())
    assert not any(isinstance(m, LoraLayer) for m in base.bert.modules())
    lora_blocks = {name.split(".")[2] for name, _ in healed.model.bert.named_parameters() if "lora_" in name}
    assert lora_blocks == {"1", "2"}  # blocks k0=1 .. deepest exit 3 (exclusive); block 0 never adapted


def test_healed_rows_cache_the_unadapted_state_so_refinement_is_exact(healed_index):
    cli, root, db, _ = healed_index
    write_files(root, notes(6, offset=100))
    assert cli("index", root, "--exit-policy", "fixed:3").exit_code == 0
    rows = [
        r
        for r in lancedb.connect(str(db)).open_table("units").to_arrow().to_pylist()
        if int(os.path.basename(r["path"])[1:4]) >= 100
    ]
    assert rows and all(r["adapter_version"] == 1 and r["exit_block"] == 3 and not r["refined"] for r in rows)
    model = load_model("minilm")
    states = [quant.decode_blob(r["cache"]) for r in rows]
    blocks = [quant.blob_info(r["cache"])["block"] for r in rows]
    assert set(blocks) == {1}  # taken after k0, below every adapter
    resumed = resume(model, "text", states, blocks)
    full = model.encode("text", [r["snippet"] for r in rows])
    assert float((resumed * full).sum(-1).min()) > 0.99  # INT4 error only


def test_stale_rows_are_refreshed_and_deleted_files_are_counted(healed_index):
    cli, root, db, report = healed_index
    table = lancedb.connect(str(db)).open_table("units")
    old = [r for r in table.to_arrow().to_pylist() if int(os.path.basename(r["path"])[1:4]) < 100]
    assert all(r["adapter_version"] == 1 for r in old)  # refreshed by the heal run
    assert {quant.blob_info(r["cache"])["block"] for r in old} == {1}
    assert heal_run.stale_count(db) == 0
    # a second version makes everything stale again; a vanished file stays stale, counted
    heal_run.make_current(db, 2)
    (layout.version_dir(db, 2)).mkdir(exist_ok=True)
    for name in ("lora.safetensors", "heads.safetensors", "predictor.safetensors", "heal.json"):
        (layout.version_dir(db, 2) / name).write_bytes((layout.version_dir(db, 1) / name).read_bytes())
    os.remove(root / "n000.md")
    summary = heal_run.refresh_stale(db)
    assert summary["failed"] >= 1 and summary["refreshed"] == summary["stale_before"] - summary["failed"]
    assert heal_run.stale_count(db) == summary["failed"]
    heal_run.make_current(db, 1)


def test_interrupted_heal_keeps_the_previous_version(healed_index, monkeypatch):
    cli, root, db, _ = healed_index

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    # dies after the adapters were written
    monkeypatch.setattr("recall_cli.early_exit.predictor.save_predictors", crash)
    with pytest.raises(KeyboardInterrupt):
        heal_run.run_heal(db, heal.HealOptions(budget_minutes=0.2, exits=(1, 2)))
    assert layout.current_version(db) == 1
    policy = parse_policy("auto", db, "minilm")
    assert isinstance(policy, PredictorPolicy) and policy.healed_source is not None


def test_heal_refuses_clearly(tmp_path, healed_index):
    cli = Cli(tmp_path / "empty")
    result = cli("heal")
    assert result.exit_code == 2 and "no index" in result.stderr
    _, _, db, _ = healed_index
    with HealLock(db):
        busy = Cli(db)("heal", "--budget", "0.2")
    assert busy.exit_code == 2 and "another `recall heal` is running" in busy.stderr


def test_heal_while_the_index_is_being_written_trains_and_defers_the_refresh(healed_index):
    from recall_cli.storage.lock import WriterLock

    cli, root, db, _ = healed_index
    before = layout.current_version(db)
    with WriterLock(db, "watch"):  # as `recall watch` holds it
        report = heal_run.run_heal(db, heal.HealOptions(budget_minutes=0.2, exits=(1, 2)))
    assert layout.current_version(db) == report["version"] > before
    assert report["refresh"]["refreshed"] == 0 and "being written by recall watch" in report["refresh"]["skipped"]
    assert heal_run.refresh_stale(db)["refreshed"] > 0  # the deferred refresh, later
    heal_run.make_current(db, before)
