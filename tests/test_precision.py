"""Precision by default: bfloat16 where the CPU computes it natively, checked against fp32 on the
first index run (fp32 when the check fails, and `recall stats` says which and why); an index
encoded in bf16 still caches, refines and skips blocks as one in fp32 does."""

from __future__ import annotations

import json

import lancedb
import numpy as np
import pytest
import torch
from conftest import count_blocks, write_files

from recall_cli.early_exit import refine
from recall_cli.early_exit.encode import encode_with_exits
from recall_cli.early_exit.policy import parse_policy
from recall_cli.early_exit.quant import blob_info
from recall_cli.errors import RecallError
from recall_cli.index import precision
from recall_cli.models import device, load_model

NOTES = {
    "kayak.md": "Paddling the red kayak across the calm lake at sunset, then camping on the shore.",
    "pie.txt": "Grandma's apple pie recipe: flour, butter, sliced apples, cinnamon and sugar.",
    "train.md": "Train timetable from Berlin to Munich with hourly departures and platform numbers.",
    "dog.md": "Our dog loves playing fetch on the beach and swimming after the ball in the waves.",
}
CPU_WITH_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
CPU_WITHOUT = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n"


@pytest.fixture
def cpu(tmp_path, monkeypatch):
    """Choose the CPU's flags; the precision left to `auto` (the suite pins fp32 otherwise)."""
    monkeypatch.delenv(device.DTYPE_ENV, raising=False)
    cpuinfo = tmp_path / "cpuinfo"

    def with_flags(text: str):
        cpuinfo.write_text(text)
        monkeypatch.setattr(device, "CPUINFO", cpuinfo)

    with_flags(CPU_WITH_BF16)
    return with_flags


def stats(cli) -> dict:
    return json.loads(cli("stats", "--json").stdout)


def stored_rows(db) -> dict:
    rows = lancedb.connect(str(db)).open_table("units").to_arrow().to_pylist()
    return {row["path"].rsplit("/", 1)[-1]: row for row in rows}


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def fp32_vectors() -> dict:
    model = load_model("minilm", "cpu", "fp32")
    return {name: model.encode_texts([text]).numpy()[0] for name, text in NOTES.items()}


def test_auto_is_bf16_only_where_the_cpu_computes_it_natively(cpu, monkeypatch):
    chosen = device.choose_precision("cpu")
    assert (chosen.name, chosen.automatic) == ("bf16", True) and "avx512_bf16" in chosen.reason
    cpu(CPU_WITH_BF16.replace("avx512_bf16", "amx_bf16 amx_tile"))
    assert device.choose_precision("cpu").name == "bf16"
    cpu(CPU_WITHOUT)
    assert device.choose_precision("cpu").name == "fp32" and device.pick_dtype("cpu") == torch.float32
    assert device.choose_precision("cuda").name == "fp16"
    monkeypatch.setattr(device, "CPUINFO", device.CPUINFO.parent / "missing")  # no /proc: fp32
    assert device.choose_precision("cpu").name == "fp32"
    monkeypatch.setenv(device.DTYPE_ENV, "bf16")  # asked for: used as asked, not "automatic"
    assert device.choose_precision("cpu") == device.Precision("bf16", "asked for ($RECALL_DTYPE bf16)", False)
    assert device.choose_precision("cpu", "fp32").name == "fp32"
    with pytest.raises(RecallError, match="unknown precision 'fp8'"):
        device.choose_precision("cpu", "fp8")


def test_first_index_checks_bf16_against_fp32_and_stats_say_so(cpu, cli, tmp_path):
    write_files(tmp_path / "notes", NOTES)
    assert cli("index", tmp_path / "notes", "--full").exit_code == 0
    used = stats(cli)["precision"]
    assert used["name"] == "bf16" and "checked: cosine 0.99" in used["reason"]
    assert "precision    bf16 (auto: this CPU computes bfloat16 natively (avx512_bf16)" in cli("stats").stdout
    exact = fp32_vectors()
    rows = stored_rows(cli.db)
    # bf16 embeddings: close to fp32, but not the fp32 numbers themselves
    assert all(0.999 <= cosine(rows[name]["vector"], exact[name]) < 1 - 1e-7 for name in NOTES)


def test_a_failed_check_falls_back_to_fp32_for_good(cpu, cli, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "CHECK_THRESHOLD", 1.01)  # no cosine reaches it: bf16 "inexact"
    write_files(tmp_path / "notes", dict(list(NOTES.items())[:2]))
    assert cli("index", tmp_path / "notes", "--full").exit_code == 0
    used = stats(cli)["precision"]
    assert used["name"] == "fp32" and "failed its check" in used["reason"]
    # a later run encodes in fp32 too, without checking again
    monkeypatch.setattr(precision, "sample_cosine", lambda *args: pytest.fail("checked twice"))
    write_files(tmp_path / "notes", NOTES)
    assert cli("index", tmp_path / "notes").exit_code == 0
    exact = fp32_vectors()
    rows = stored_rows(cli.db)
    assert all(cosine(rows[name]["vector"], exact[name]) > 1 - 1e-6 for name in NOTES)
    assert stats(cli)["precision"]["name"] == "fp32"


def test_int4_cache_and_refinement_resume_from_a_bf16_index(cpu, cli, tmp_path):
    write_files(tmp_path / "notes", NOTES)
    assert cli("index", tmp_path / "notes", "--exit-policy", "mix:2=0.5,4=0.5").exit_code == 0
    assert stats(cli)["precision"]["name"] == "bf16"
    before = stored_rows(cli.db)
    assert {row["exit_block"] for row in before.values()} == {2, 4}
    assert all(blob_info(row["cache"])["dtype"] == "bfloat16" for row in before.values())
    assert refine.refine_idle(cli.db, lambda: False, 60.0)
    after = stored_rows(cli.db)
    exact = fp32_vectors()
    for name, row in after.items():  # resumed from the bf16 INT4 state: the full-depth embedding
        assert row["refined"] and row["cache"] is None and row["exit_block"] == before[name]["exit_block"]
        assert cosine(row["vector"], exact[name]) > 0.99
    assert stats(cli)["early_exit"]["waiting_refinement"] == 0


def test_bf16_encode_still_runs_only_the_blocks_before_each_exit(cpu, monkeypatch):
    model = load_model("minilm", "cpu")
    assert model.dtype == torch.bfloat16
    calls = count_blocks(model, monkeypatch)
    texts = [f"note {i}: " + "word " * (3 + 4 * i) for i in range(8)]
    out = encode_with_exits(model, "text", texts, parse_policy("mix:2=0.5,4=0.25,6=0.25"))
    for index in range(6):  # block i ran on exactly the items whose exit is past it
        assert sum(n for i, n in calls if i == index) == sum(1 for e in out.exits if e > index), index
    assert sorted(set(out.exits)) == [2, 4, 6]
    assert all(s[0].dtype == torch.bfloat16 for s in out.states if s is not None)
