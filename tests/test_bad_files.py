"""Issue 8, bad files: every kind of broken, odd or hostile file is recorded with a one-line reason,
never stops the run, never prints a traceback, and is retried by `index --retry-failed`."""

from __future__ import annotations

import base64
import json
import os

import pytest
from badfiles import BAD, GOOD, make_bad_corpus, permissions_bind, remove_tree, run_recall_as_user, write_long_m4a
from conftest import Cli, write_files

from recall_cli.index.indexer import IndexOptions, index_roots

MODEL = "imagebind-test"  # embeds text, images, video and sound; no weights to download


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """The bad corpus indexed once by a process that file permissions bind."""
    home = tmp_path_factory.mktemp("bad")
    try:
        reason = permissions_bind(home)
        if reason:
            pytest.skip(reason)
        root = make_bad_corpus(home / "files")
        db = home / "db"
        first = run_recall_as_user("index", root, "--db", db, "--model", MODEL, "--json", home=home)
        yield home, root, db, first
    finally:
        remove_tree(home)


def stats(home, db) -> dict:
    result = run_recall_as_user("stats", "--db", db, "--json", home=home)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_each_bad_file_gets_a_one_line_reason_and_the_rest_is_indexed(indexed):
    home, root, db, first = indexed
    stderr = first.stderr.decode()
    assert first.returncode == 3, stderr  # documented: 3 = finished, some files failed
    assert "Traceback" not in stderr
    assert all(line.startswith("recall: ") for line in stderr.splitlines()), stderr
    summary = json.loads(first.stdout)
    failures = {os.path.relpath(item["path"], root): item["error"] for item in stats(home, db)["failures"]}
    assert set(failures) == set(BAD), failures
    for name, words in BAD.items():
        assert words in failures[name], (name, failures[name])
        assert "\n" not in failures[name] and len(failures[name]) < 200
    assert summary["failed"] == len(BAD)

    # every good file, odd names included, is found, and -0 gives its exact bytes
    listed = run_recall_as_user("query", "a note", "--db", db, "-n", "100", "-0", home=home)
    assert listed.returncode == 0, listed.stderr
    found = {os.fsdecode(raw) for raw in listed.stdout.split(b"\0") if raw}
    assert found == {str(root / name) for name in GOOD}
    assert all(os.path.exists(path) for path in found)


def test_text_output_escapes_odd_names_and_json_carries_their_bytes(indexed):
    home, root, db, _ = indexed
    table = run_recall_as_user("query", "latin-1 bytes", "--db", db, "-n", "100", home=home).stdout.decode()
    lines = table.splitlines()
    assert any(line.endswith("/name\\nwith newline.txt") for line in lines), table
    assert any(line.endswith("/caf\\xe9-latin1.txt") for line in lines), table
    assert len(lines) == len(GOOD)  # one line per result: no name broke a line

    results = json.loads(run_recall_as_user("query", "latin-1", "--db", db, "-n", "100", "--json", home=home).stdout)
    latin = next(item for item in results if "path_bytes" in item)
    assert base64.b64decode(latin["path_bytes"]) == os.fsencode(root) + b"/caf\xe9-latin1.txt"
    assert latin["path"].endswith("caf\ufffd-latin1.txt")

    text = run_recall_as_user("stats", "--db", db, home=home).stdout.decode()
    assert "self-loop: symlink loop" in text and "\x1b" not in text


def test_unchanged_failures_wait_for_retry_failed(indexed):
    home, root, db, _ = indexed
    again = run_recall_as_user("index", root, "--db", db, "--model", MODEL, "--json", home=home)
    assert again.returncode == 3  # the failures still stand ...
    assert json.loads(again.stdout)["units_encoded"] == 0  # ... but nothing was tried again

    os.chmod(root / "locked.txt", 0o644)  # the user fixes the permissions (mtime unchanged)
    retried = run_recall_as_user("index", root, "--db", db, "--model", MODEL, "--retry-failed", "--json", home=home)
    summary = json.loads(retried.stdout)
    assert summary["failed"] == len(BAD) - 1, retried.stderr
    assert "locked.txt" not in {os.path.basename(item["path"]) for item in stats(home, db)["failures"]}
    found = run_recall_as_user("query", "private words", "--db", db, "-l", home=home).stdout
    assert os.fsencode(root / "locked.txt") in found.splitlines()


def test_files_that_vanish_or_change_between_scan_and_encode(tmp_path):
    root = tmp_path / "files"
    write_files(
        root,
        {
            "a-first.txt": "the first note",
            "b-vanishes.txt": "a note deleted mid-run",
            "c-changes.txt": "old words about winter",
        },
    )
    db = tmp_path / "db"

    def meddle(done: int, total: int) -> None:
        if done == 1:  # the scan is over: both files were planned from it
            (root / "b-vanishes.txt").unlink()
            (root / "c-changes.txt").write_text("new words about summer holidays at the sea")

    summary = index_roots([str(root)], db, IndexOptions(model=MODEL), progress=meddle)
    assert summary.failed == 0, summary.failures  # a vanished file is not a failure
    found = Cli(db)("query", "summer", "--json", "-n", "10")
    paths = {row["path"]: row for row in json.loads(found.stdout)}
    assert set(paths) == {str(root / "a-first.txt"), str(root / "c-changes.txt")}
    assert "summer" in paths[str(root / "c-changes.txt")]["snippet"]  # what was read is what is stored

    again = index_roots([str(root)], db, IndexOptions(model=MODEL))  # converges: no errors, nothing lost
    assert again.failed == 0 and again.removed == 0


def test_long_compressed_audio_is_read_by_seeking_and_matches_a_whole_decode(tmp_path, monkeypatch):
    """Past LONG_AUDIO_SECONDS an m4a is read clip by clip (a 3-hour file decoded whole would be
    gigabytes of samples); the clips equal those cut from a whole decode."""
    from recall_cli.models.imagebind.media import audio

    path = tmp_path / "talk.m4a"
    write_long_m4a(path, audio.LONG_AUDIO_SECONDS + 60)
    by_seeking = audio.load_audio(path)
    monkeypatch.setattr(audio, "LONG_AUDIO_SECONDS", 10**9)
    whole = audio.load_audio(path)
    assert by_seeking.shape == whole.shape and by_seeking.shape[0] > 3
    assert float((by_seeking - whole).abs().max()) < 1e-3 * float(whole.abs().max())
