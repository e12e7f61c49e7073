"""One index holds images, video, audio and text embedded with ImageBind (test configuration);
a text query ranks every modality together."""

import json
import os

import lancedb
import numpy as np
from conftest import write_files
from PIL import Image
from test_media import aac_file, make_video, write_tone


def make_collection(root):
    write_files(
        root, {"notes/trip.md": "A red kayak on the lake at sunset.", "notes/todo.txt": "buy milk, call the plumber"}
    )
    rng = np.random.default_rng(0)
    (root / "photos").mkdir()
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(root / "photos/lake.jpg")
    Image.new("RGB", (256, 256), "orange").save(root / "photos/sunset.png")
    (root / "video").mkdir()
    make_video(root / "video/clip.mp4", 3.0)
    (root / "sounds").mkdir()
    tone = write_tone(root / "sounds/tone.wav", 2.5)
    write_tone(root / "sounds/tone.flac", 1.5)
    aac_file(root / "sounds/voice.m4a", tone)
    Image.new("RGB", (10, 10)).save(root / "photos/broken.jpg")
    (root / "photos/broken.jpg").write_bytes((root / "photos/broken.jpg").read_bytes()[:40])  # truncated


def test_all_modalities_in_one_index_and_one_ranking(cli, db_dir, tmp_path):
    root = tmp_path / "collection"
    make_collection(root)
    result = cli("index", root, "--model", "imagebind-test", "--json")
    assert result.exit_code == 3, result.stderr  # the truncated JPEG fails, the rest is indexed
    summary = json.loads(result.stdout)
    assert summary["added"] == 8 and summary["failed"] == 1
    assert summary["failures"][0]["path"].endswith("broken.jpg")

    rows = lancedb.connect(str(db_dir)).open_table("units").to_arrow().to_pylist()
    by_modality = {}
    for row in rows:
        by_modality.setdefault(row["modality"], set()).add(os.path.basename(row["path"]))
        assert row["model"] == "imagebind-test" and row["exit_block"] == row["depth"]
    assert by_modality == {
        "text": {"trip.md", "todo.txt"},
        "image": {"lake.jpg", "sunset.png"},
        "video": {"clip.mp4"},
        "audio": {"tone.wav", "tone.flac", "voice.m4a"},
    }

    ranked = json.loads(cli("query", "a red kayak", "--json", "-n", "20").stdout)
    assert {result["modality"] for result in ranked} == {"text", "image", "video", "audio"}
    scores = [result["score"] for result in ranked]
    assert scores == sorted(scores, reverse=True) and len(ranked) == 8
    only_audio = json.loads(cli("query", "a red kayak", "--json", "--type", "audio").stdout)
    assert {os.path.basename(r["path"]) for r in only_audio} == {"tone.wav", "tone.flac", "voice.m4a"}

    stats = json.loads(cli("stats", "--json").stdout)
    assert set(stats["by_modality"]) == {"text", "image", "video", "audio"}
    assert stats["model"] == "imagebind-test"
