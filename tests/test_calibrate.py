"""Calibration: a new index heals its own exits on its first files, once, within one `recall index`."""

import json
import shutil

import lancedb
import pytest
from conftest import Cli, write_files
from test_heal import notes

from recall_cli.early_exit import adapters, calibrate, calibrate_gate, heal, heal_run
from recall_cli.index.indexer import index_locked
from recall_cli.index.options import IndexOptions
from recall_cli.models.minilm.model import MiniLM
from recall_cli.storage import layout

FAST = {
    "RECALL_CALIBRATE": "1",
    "RECALL_CALIBRATE_SAVING": "0",
    "RECALL_CALIBRATE_STEPS": "10",
    "RECALL_CALIBRATE_MODE": "lora",  # these tests cover the LoRA path; MiniLM's default is heads only
    "RECALL_EXIT_POLICY": "",
}


@pytest.fixture
def fast_calibration(monkeypatch):
    for key, value in FAST.items():
        monkeypatch.setenv(key, value)


def calibration_state(db) -> dict:
    from recall_cli.storage.manifest import Manifest

    manifest = Manifest(db, create=False)
    try:
        return calibrate.read_calibration(manifest)
    finally:
        manifest.close()


def rows(db) -> list[dict]:
    table = lancedb.connect(str(db)).open_table("units")
    return table.search().select(["path", "exit_block", "depth", "refined"]).limit(None).to_arrow().to_pylist()


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    base = tmp_path_factory.mktemp("calibrate")
    root, db = base / "files", base / "db"
    write_files(root, notes(64))
    cli = Cli(db)
    original = heal.collect_head_outputs

    def counted(model, modality, data, exits, k0, batch, healed=None):
        BASE_PASSES.append(healed is None)  # a pass of the sample through the base blocks
        return original(model, modality, data, exits, k0, batch, healed)

    with pytest.MonkeyPatch.context() as patch:
        for key, value in FAST.items():
            patch.setenv(key, value)
        patch.setattr(heal, "collect_head_outputs", counted)
        result = cli("index", root)
    assert result.exit_code == 0, result.stderr
    return cli, root, db


BASE_PASSES: list[bool] = []


def test_first_index_calibrates_and_then_skips_blocks(calibrated):
    cli, root, db = calibrated
    state = calibration_state(db)
    assert state["status"] == "done" and state["version"] == 1
    assert state["sample_files"] == calibrate.MIN_FILES and state["sample_units"] == {"text": calibrate.MIN_FILES}
    text = state["modalities"]["text"]
    assert text["enabled_exits"] and set(text["heldout_cosine"]) == {"1", "2", "3", "4", "5"}
    assert layout.current_version(db) == 1
    assert (layout.version_dir(db, 1) / layout.PREDICTOR_FILE).exists()
    written = rows(db)
    assert len(written) == 64
    # the sample files ran at full depth (exact); the files after calibration used the exits
    assert sum(row["exit_block"] == row["depth"] for row in written) >= calibrate.MIN_FILES
    assert any(row["exit_block"] < row["depth"] for row in written)
    stats = json.loads(cli("stats", "--json").stdout)
    assert stats["early_exit"]["compute_skipped"] > 0
    assert stats["calibration"]["status"] == "done"
    shown = cli("stats").stdout
    assert "calibration  v1 from 48 units of 48 files" in shown and "held-out cosine 1: " in shown
    assert "held-out top-" in shown and set(text["heldout_retrieval"]) == {"1", "2", "3", "4", "5"}


def test_calibration_heals_from_the_states_the_first_encode_computed(calibrated):
    # the ridge heads, exit shares and predictor input come from the sample's own full-depth encode:
    # the only pass over the sample is the one through the healed exits (for the gate)
    assert BASE_PASSES == [False]
    assert calibration_state(calibrated[2])["modalities"]["text"]["reused_encode_states"] is True


def test_calibration_happens_once_and_later_files_skip_the_blocks_after_their_exit(
    calibrated, fast_calibration, monkeypatch
):
    cli, root, db = calibrated
    before = calibration_state(db)
    calls = []
    original = MiniLM.block

    def counted(self, modality, index, hidden, mask):  # base and healed copies alike
        calls.append((index, int(hidden.shape[0])))
        return original(self, modality, index, hidden, mask)

    monkeypatch.setattr(MiniLM, "block", counted)
    write_files(root, notes(24, offset=64))
    assert cli("index", root).exit_code == 0
    assert calibration_state(db) == before  # not calibrated again
    assert layout.current_version(db) == 1 and not layout.version_dir(db, 2).exists()
    new_rows = [row for row in rows(db) if int(row["path"].rsplit("n", 1)[1][:3]) >= 64]
    assert len(new_rows) == 24 and any(row["exit_block"] < row["depth"] for row in new_rows)
    # every block call ran one sequence per note still going: blocks after an exit were not run
    assert sum(sequences for _, sequences in calls) == sum(row["exit_block"] for row in new_rows)


def test_a_failed_quality_gate_leaves_the_index_at_full_depth_and_a_rebuild_calibrates_again(
    tmp_path, fast_calibration, monkeypatch
):
    monkeypatch.setenv("RECALL_CALIBRATE_GATE_CANDIDATES", "1.01")  # no held-out retrieval reaches it
    root, db = tmp_path / "files", tmp_path / "db"
    write_files(root, notes(56))
    cli = Cli(db)
    assert cli("index", root).exit_code == 0
    state = calibration_state(db)
    assert state["status"] == "rejected" and "text: no exit reached held-out cosine" in state["reason"]
    assert layout.current_version(db) == 0
    assert all(row["exit_block"] == row["depth"] for row in rows(db))
    shown = cli("stats").stdout
    assert "calibration  not used, full depth: text: no exit reached held-out cosine 0.60 with top-" in shown
    assert ">= 1.01" in shown
    assert "0.0% of encoder blocks skipped" in shown
    write_files(root, notes(8, offset=56))  # rejected once: later runs stay at full depth, untried
    assert cli("index", root).exit_code == 0
    assert calibration_state(db) == state and all(row["exit_block"] == row["depth"] for row in rows(db))
    monkeypatch.delenv("RECALL_CALIBRATE_GATE_CANDIDATES")  # a rebuilt index is a new index: it calibrates again
    assert cli("index", root, "--rebuild").exit_code == 0
    rebuilt = calibration_state(db)
    assert rebuilt["status"] == "done" and rebuilt["at"] > state["at"] and layout.current_version(db) == 1
    assert any(row["exit_block"] < row["depth"] for row in rows(db))


def test_a_run_interrupted_while_collecting_or_healing_resumes(tmp_path, fast_calibration, monkeypatch):
    root, db = tmp_path / "files", tmp_path / "db"
    write_files(root, notes(60))
    applied = []

    def stop_after_20():
        applied.append(1)
        return len(applied) > 20

    # 1. stopped while the sample files are being indexed: their rows stay, exact
    layout.prepare_index_dir(db)
    summary = index_locked(db, [str(root)], IndexOptions(), should_stop=stop_after_20)
    assert summary.added == 20 and calibration_state(db)["status"] == "collecting", calibration_state(db)
    assert all(row["refined"] for row in rows(db))

    # 2. interrupted (Ctrl-C) while healing: no adapter version is made current
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    write_files(root, notes(40, offset=60))
    with monkeypatch.context() as patch:
        patch.setattr(heal.Healer, "_train_stage", interrupted)
        assert Cli(db)("index", root).exit_code == 130  # as after Ctrl-C
    assert calibration_state(db)["status"] == "healing" and layout.current_version(db) == 0
    indexed = rows(db)
    assert len(indexed) == 20 + calibrate.MIN_FILES and all(row["refined"] for row in indexed)

    # 3. the next run calibrates from its own first files and indexes the rest with exits
    write_files(root, notes(60, offset=100))
    assert Cli(db)("index", root).exit_code == 0
    state = calibration_state(db)
    assert state["status"] == "done" and layout.current_version(db) == state["version"]
    final = rows(db)
    assert len(final) == 160 and any(row["exit_block"] < row["depth"] for row in final)
    exact_before = {row["path"] for row in indexed}
    assert all(row["refined"] for row in final if row["path"] in exact_before)  # written before: still exact


def test_held_out_retrieval_tells_a_faithful_exit_from_a_useless_one():
    import torch

    torch.manual_seed(0)
    teacher = torch.nn.functional.normalize(torch.randn(60, 16), dim=-1)
    held = list(range(20, 60))
    faithful = calibrate_gate.heldout_retrieval(teacher, teacher, held)
    assert faithful == {"k": 3, "m": 15, "candidates": 1.0, "coarse": 1.0}
    noisy = torch.nn.functional.normalize(teacher + 0.3 * torch.randn(60, 16), dim=-1)
    useless = torch.nn.functional.normalize(torch.randn(60, 16), dim=-1)
    scores = [calibrate_gate.heldout_retrieval(e, teacher, held) for e in (noisy, useless)]
    assert 1.0 > scores[0]["candidates"] > scores[1]["candidates"] and scores[0]["coarse"] > scores[1]["coarse"]
    gate = calibrate_gate.Gate()
    assert gate.passes(faithful, 0.9) and not gate.passes(scores[1], 0.9)


def test_minilm_calibrates_by_default_a_small_index_defers_and_an_index_marked_off_tries_again(tmp_path, monkeypatch):
    from recall_cli.storage.manifest import Manifest

    monkeypatch.delenv("RECALL_CALIBRATE", raising=False)  # the product default (the suite turns it off)
    root, db = tmp_path / "files", tmp_path / "db"
    write_files(root, notes(52))
    cli = Cli(db)
    assert cli("index", root).exit_code == 0  # on: a small new index defers (healing would not pay)
    state = calibration_state(db)
    assert state["status"] == "deferred" and "less than" in state["reason"] and "s of healing" in state["reason"]
    assert "calibration  deferred: " in cli("stats").stdout
    # an index made while MiniLM did not calibrate by default says "off": stats no longer shows it and
    # its next run tries
    old = tmp_path / "old"
    write_files(tmp_path / "one", notes(1))
    assert Cli(old)("index", tmp_path / "one").exit_code == 0
    manifest = Manifest(old)
    calibrate.write_calibration(manifest, {"status": "off", "reason": "minilm's first-run sample ...", "at": 0})
    manifest.close()
    assert "calibration  " not in Cli(old)("stats").stdout
    assert Cli(old)("index", root).exit_code == 0
    assert calibration_state(old)["status"] == "deferred"
    monkeypatch.setenv("RECALL_CALIBRATE", "0")  # off: a new index never tries
    assert Cli(tmp_path / "db3")("index", root).exit_code == 0
    assert calibration_state(tmp_path / "db3") is None


def test_a_fresh_minilm_index_skips_blocks_with_nothing_but_recall_index(tmp_path, monkeypatch):
    # the product's defaults (heads, the default gate), but for the saving check: 64 notes are too
    # few for it, as the test above shows
    monkeypatch.delenv("RECALL_CALIBRATE", raising=False)
    monkeypatch.setenv("RECALL_CALIBRATE_SAVING", "0")
    root, db = tmp_path / "files", tmp_path / "db"
    write_files(root, notes(64))
    cli = Cli(db)
    assert cli("index", root).exit_code == 0
    state = calibration_state(db)
    assert state["status"] == "done" and state["modalities"]["text"]["enabled_exits"]
    assert layout.current_version(db) == 1 and any(row["exit_block"] < row["depth"] for row in rows(db))
    shown = cli("stats").stdout
    assert "% of encoder blocks skipped" in shown and "0.0% of encoder blocks skipped" not in shown


def test_minilm_calibration_fits_its_exit_heads_in_closed_form_on_the_first_encodes_token_states(
    tmp_path, fast_calibration, monkeypatch
):
    monkeypatch.delenv("RECALL_CALIBRATE_MODE")  # MiniLM's own mode: heads only
    fits = []
    original = heal.token_ridge_fit

    def counted(token_states, exit_block, depth, pooled, sample):
        fits.append((exit_block, sum(len(token_states[i][exit_block]) for i in sample.train)))
        return original(token_states, exit_block, depth, pooled, sample)

    def trained(*args, **kwargs):
        raise AssertionError("no LoRA step in heads mode")

    monkeypatch.setattr(heal, "token_ridge_fit", counted)
    monkeypatch.setattr(heal.Healer, "_train_stage", trained)
    root, db = tmp_path / "files", tmp_path / "db"
    write_files(root, notes(60))
    assert Cli(db)("index", root).exit_code == 0
    state = calibration_state(db)
    assert state["status"] in ("done", "rejected") and state["modalities"]["text"]["steps"] == 0
    # each exit's head was fitted on many token rows of the training files (not one row per unit)
    assert [e for e, _ in fits] == [1, 2, 3, 4, 5] and all(count > 5 * calibrate.MIN_FILES for _, count in fits)


def test_a_token_level_fit_recovers_a_map_that_one_pooled_row_per_unit_cannot():
    import torch

    torch.manual_seed(0)
    dim, units, tokens = 24, 20, 16  # fewer units than dimensions: the pooled fit is underdetermined
    true_map = torch.randn(dim, dim)
    states = [torch.randn(tokens, dim) for _ in range(units)]
    token_states = [{1: x.half(), 6: (x @ true_map).half()} for x in states]
    pooled = torch.stack([x.mean(0) for x in states])
    teacher = torch.nn.functional.normalize(torch.stack([(x @ true_map).mean(0) for x in states]), dim=-1)
    sample = heal.Sample([None] * units, teacher, [str(i) for i in range(units)], list(range(14)), list(range(14, 20)))
    _, by_tokens = heal.token_ridge_fit(token_states, 1, 6, pooled, sample)
    _, by_units = heal.ridge_fit(pooled, teacher, sample.train, sample.held)
    assert by_tokens["heldout_cos"] > 0.99 > 0.9 > by_units["heldout_cos"]


def test_a_later_heal_starts_from_the_calibrated_adapters(calibrated, tmp_path):
    _, _, db = calibrated
    copy = tmp_path / "db"
    shutil.copytree(db, copy)
    report = heal_run.run_heal(copy, heal.HealOptions(budget_minutes=0.2, steps=10, seed=1))
    assert report["version"] == 2 and report["modalities"]["text"]["warm_start"].endswith("1")
    calibrated_lora = adapters.modality_tensors(layout.version_dir(copy, 1) / layout.LORA_FILE, "text")
    healed_lora = adapters.modality_tensors(layout.version_dir(copy, 2) / layout.LORA_FILE, "text")
    # ten more steps move the adapters a little from where calibration left them (a fresh start
    # would have new random A matrices, as far from them as they are from zero)
    moved = sum(float((healed_lora[n] - calibrated_lora[n]).norm()) for n in calibrated_lora)
    size = sum(float(calibrated_lora[n].norm()) for n in calibrated_lora)
    assert moved < 0.5 * size
