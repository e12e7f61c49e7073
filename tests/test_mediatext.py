"""Photos, audio and video found by their words, dates and places with the default text model:
name words, EXIF, GPS -> place, OCR, audio tags, video containers; the filters; bad metadata;
and an index made before media text gaining it.  One indexed corpus for the module."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from conftest import Cli
from mediafiles import CITIES, photo, song, text_image, video

from recall_cli.storage.layout import MANIFEST_NAME

BELEM = (38.6916, -9.2160)  # 7.6 km west of central Lisbon


def build_corpus(root: Path) -> None:
    photo(root / "trips" / "red_kayak_2019.jpg", "2019:07:14 10:30:00", "Canon", "Canon EOS 5D", CITIES["Lisbon"], 1)
    photo(root / "trips" / "IMG_0002.jpg", "2023:03:01 09:00:00", "Apple", "iPhone 12", CITIES["Paris"], 2)
    photo(root / "trips" / "IMG_0003.jpg", "2022:11:20 18:00:00", "FUJIFILM", "X-T3", CITIES["Tokyo"], 3)
    photo(root / "trips" / "IMG_0004.jpg", "2021:06:05 12:00:00", "Apple", "iPhone 12", CITIES["Porto"], 4)
    photo(root / "trips" / "IMG_0005.jpg", "2021:08:09 16:00:00", "Apple", "iPhone 12", BELEM, 5)
    photo(root / "trips" / "IMG_0007.jpg", "2024:02:03 11:00:00", "Google", "Pixel 7", CITIES["Berlin"], 9)
    photo(root / "trips" / "IMG_0008.jpg", "2024:02:10 15:00:00", "Google", "Pixel 7", CITIES["Reykjavik"], 10)
    undated = photo(root / "trips" / "IMG_0006.jpg", seed=6)  # no EXIF: dated by its file time
    os.utime(undated, (1262304000, 1262304000))  # 2010-01-01
    text_image(root / "shots" / "screenshot_1.png", ["INVOICE 4471", "Total due 120 EUR"])
    text_image(root / "shots" / "receipt.png", ["Corner Bakery", "croissant 2.40"], size=24, background=(250, 240, 200))
    # bad metadata: an impossible date, GPS off the globe
    photo(root / "bad" / "broken_clock.jpg", "0000:00:00 00:00:00", "Canon", "Canon EOS 5D", seed=7)
    photo(root / "bad" / "off_globe.jpg", raw_gps=("N", (95, 0, 0), "E", (10, 0, 0)), seed=8)
    for suffix in (".mp3", ".flac", ".m4a"):
        song(root / "music" / f"track01{suffix}", "Feeling Good", "Nina Simone", "I Put a Spell on You", "1965")
    song(root / "music" / "track02.mp3", "Clair de lune", "Claude Debussy", year="1905")
    video(root / "clips" / "VID_0001.mp4", "2021-05-01T12:00:00.000000Z", "+38.7223-009.1393/")
    (root / "notes.txt").write_text("shopping list: milk, eggs, bread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    build_corpus(root)
    cli = Cli(root.parent / "db")
    result = cli("index", root, "--json")
    assert result.exit_code == 0, result.stderr
    return root, cli, json.loads(result.stdout)


def found(cli, *args) -> list[str]:
    result = cli("query", *args, "--json", "-n", "30")
    assert result.exit_code in (0, 1), result.stderr
    return [Path(row["path"]).name for row in json.loads(result.stdout or "[]")]


def results(cli, *args) -> list[dict]:
    return json.loads(cli("query", *args, "--json", "-n", "30").stdout or "[]")


def test_default_model_skips_no_media(corpus):
    _, cli, summary = corpus
    assert summary["skipped"] == 0 and summary["failed"] == 0
    stats = json.loads(cli("stats", "--json").stdout)
    assert stats["by_modality"]["image"]["files"] == 12
    assert stats["by_modality"]["audio"]["files"] == 4 and stats["by_modality"]["video"]["files"] == 1


def test_name_words_find_a_photo(corpus):
    _, cli, _ = corpus
    assert found(cli, "kayak")[0] == "red_kayak_2019.jpg"


def test_text_in_a_screenshot_is_found_by_ocr(corpus):
    _, cli, _ = corpus
    assert found(cli, "invoice 4471")[0] == "screenshot_1.png"
    assert found(cli, "croissant", "--keyword")[0] == "receipt.png"
    top = results(cli, "invoice 4471")[0]
    assert top["meta"]["ocr_chars"] > 0 and "4471" in top["snippet"]


def test_capture_date_filters_fall_back_to_file_time(corpus):
    _, cli, _ = corpus
    in_2021 = set(found(cli, "photo", "--taken-after", "2021-01-01", "--taken-before", "2021-12-31", "--type", "image"))
    assert in_2021 == {"IMG_0004.jpg", "IMG_0005.jpg"}
    assert set(found(cli, "video", "--taken-after", "2021-05-01", "--taken-before", "2021-05-01")) == {"VID_0001.mp4"}
    old = results(cli, "photo", "--taken-before", "2015-01-01", "--type", "image")
    assert [Path(row["path"]).name for row in old] == ["IMG_0006.jpg"]
    assert old[0]["meta"]["date_source"] == "file"
    kayak = results(cli, "kayak")[0]["meta"]
    assert kayak["date_source"] == "capture" and kayak["taken_at"] == "2019-07-14T10:30:00"


def test_camera_and_artist_filters(corpus):
    _, cli, _ = corpus
    assert set(found(cli, "photo", "--camera", "iphone")) == {"IMG_0002.jpg", "IMG_0004.jpg", "IMG_0005.jpg"}
    assert set(found(cli, "photo", "--camera", "canon eos")) == {"red_kayak_2019.jpg", "broken_clock.jpg"}
    assert set(found(cli, "song", "--artist", "nina simone")) == {"track01.mp3", "track01.flac", "track01.m4a"}
    assert found(cli, "Clair de lune", "--keyword")[0] == "track02.mp3"


def test_gps_becomes_the_nearest_city(corpus):
    _, cli, _ = corpus
    places = {Path(row["path"]).name: row["meta"].get("place", "") for row in results(cli, "photo", "--type", "image")}
    assert places["red_kayak_2019.jpg"].startswith("Lisbon")
    assert places["IMG_0002.jpg"].startswith("Paris")
    assert places["IMG_0003.jpg"].startswith("Tokyo")
    assert places["IMG_0004.jpg"].startswith("Porto")
    assert found(cli, "tokyo", "--keyword") == ["IMG_0003.jpg"]


def test_a_photo_in_a_district_or_suburb_is_named_and_found_by_its_city(corpus):
    """Central Berlin's nearest GeoNames place is the district Mitte, central Reykjavik's is the
    town Kopavogur; the place names the city a person would search for too."""
    _, cli, _ = corpus
    places = {Path(row["path"]).name: row["meta"].get("place", "") for row in results(cli, "photo", "--type", "image")}
    assert "Berlin" in places["IMG_0007.jpg"].split(", ")[:2]
    assert "Reykjavik" in places["IMG_0008.jpg"].split(", ")[:2]
    assert found(cli, "photo", "--near", "Reykjavik") == ["IMG_0008.jpg"]
    assert found(cli, "photo", "--near", "Berlin") == ["IMG_0007.jpg"]
    assert found(cli, "photos taken in Reykjavik")[0] == "IMG_0008.jpg"
    assert found(cli, "reykjavik", "--keyword") == ["IMG_0008.jpg"]


def test_every_test_coordinate_is_named_by_its_city():
    from recall_cli.models.mediatext.places import place_name

    for city, (lat, lon) in CITIES.items():
        assert city in place_name(lat, lon).split(", ")[:2], city


def test_near_finds_everything_within_the_radius_and_nothing_outside(corpus):
    _, cli, _ = corpus
    lisbon = "{},{}".format(*CITIES["Lisbon"])
    assert set(found(cli, "photo", "--near", "Lisbon")) == {"red_kayak_2019.jpg", "IMG_0005.jpg", "VID_0001.mp4"}
    assert set(found(cli, "photo", "--near", f"{lisbon},5")) == {"red_kayak_2019.jpg", "VID_0001.mp4"}
    assert set(found(cli, "photo", "--near", f"{lisbon},10")) == {"red_kayak_2019.jpg", "IMG_0005.jpg", "VID_0001.mp4"}
    assert set(found(cli, "photo", "--near", f"{lisbon},400")) >= {"IMG_0004.jpg"}  # Porto, 274 km
    assert found(cli, "photo", "--near", "Paris, FR") == ["IMG_0002.jpg"]
    bad = cli("query", "photo", "--near", "Xyzzyville")
    assert bad.exit_code == 2 and "no city of that name" in bad.stderr


def test_bad_metadata_is_ignored_with_a_note(corpus):
    _, cli, _ = corpus
    stats = json.loads(cli("stats", "--json").stdout)
    media = stats["media"]
    assert media["capture_date"] == 8 and media["gps"] == 8 and media["ocr_text"] == 2
    notes = {Path(note["path"]).name: note["note"] for note in media["notes"]}
    assert set(notes) == {"broken_clock.jpg", "off_globe.jpg"}
    assert "capture date" in notes["broken_clock.jpg"] and "GPS" in notes["off_globe.jpg"]
    assert "broken_clock.jpg" in found(cli, "photo", "--camera", "canon")  # the camera is still known
    assert "metadata ignored" in cli("stats").stdout


def test_truncated_exif_and_tag_blocks_do_not_fail_the_file(tmp_path):
    from recall_cli.models.mediatext import describe

    good = photo(tmp_path / "a.jpg", "2020:01:01 00:00:00", "Canon", "Canon EOS 5D", CITIES["Paris"])
    data = bytearray(good.read_bytes())
    start = data.index(b"Exif\x00\x00") + 6
    data[start + 8 : start + 40] = b"\xff" * 32  # the IFD's entry count and entries: garbage
    (tmp_path / "b.jpg").write_bytes(bytes(data))
    media = describe(tmp_path / "b.jpg", "image")
    assert "b jpg" in media.text and not media.meta.get("taken_at")
    assert media.meta.get("notes")
    tagged = song(tmp_path / "s.mp3", "Title", "Artist")
    raw = tagged.read_bytes()
    (tmp_path / "t.mp3").write_bytes(raw[:40])  # the ID3 block cut short
    media = describe(tmp_path / "t.mp3", "audio")
    assert "t mp3" in media.text and media.meta.get("notes")


def test_no_ocr_option_and_setting(tmp_path, monkeypatch):
    root = tmp_path / "files"
    text_image(root / "scan.png", ["INVOICE 4471"])
    cli = Cli(tmp_path / "db")
    assert cli("index", root, "--no-ocr").exit_code == 0
    assert found(cli, "4471", "--keyword") == []
    assert found(cli, "scan", "--keyword") == ["scan.png"]  # still indexed, by name
    monkeypatch.setenv("RECALL_OCR", "0")
    from recall_cli.models.mediatext import describe

    assert "4471" not in describe(root / "scan.png", "image").text
    monkeypatch.delenv("RECALL_OCR")
    assert "4471" in describe(root / "scan.png", "image").text


def test_an_older_index_gains_the_text_side_once(tmp_path):
    root = tmp_path / "files"
    photo(root / "red_kayak.jpg", "2019:07:14 10:30:00", "Canon", "Canon EOS 5D", CITIES["Lisbon"])
    (root / "notes.txt").write_text("kayak trip packing list")
    db_dir = tmp_path / "db"
    cli = Cli(db_dir)
    assert cli("index", root).exit_code == 0
    make_pre_media_index(db_dir, root / "red_kayak.jpg")
    assert found(cli, "kayak", "--keyword") == ["notes.txt"]

    upgraded = json.loads(cli("index", root, "--json").stdout)
    assert upgraded["added"] + upgraded["updated"] == 1 and upgraded["skipped"] == 0
    assert set(found(cli, "kayak", "--keyword")) == {"red_kayak.jpg", "notes.txt"}
    assert found(cli, "photo", "--near", "Lisbon") == ["red_kayak.jpg"]
    again = json.loads(cli("index", root, "--json").stdout)
    assert again["unchanged"] == again["scanned"] == 2 and again["updated"] == again["added"] == 0


def make_pre_media_index(db_dir: Path, image: Path) -> None:
    """What a recall before media text left: the photo skipped by the text model, no rows for it,
    a table without the metadata columns, a manifest of schema 2."""
    import lancedb
    import pyarrow as pa

    db = lancedb.connect(str(db_dir))
    data = db.open_table("units").to_arrow()
    keep = [value != str(image) for value in data.column("path").to_pylist()]
    data = data.filter(pa.array(keep))
    data = data.drop_columns(["taken_at", "camera", "lat", "lon", "place", "artist", "meta"])
    db.drop_table("units")
    db.create_table("units", data=data)
    conn = sqlite3.connect(db_dir / MANIFEST_NAME)
    conn.execute(
        "UPDATE files SET status = 'skipped', error = 'minilm does not embed image', units = 0, text_version = 0 "
        "WHERE path = ?",
        (str(image),),
    )
    conn.execute("DELETE FROM media_facts")
    conn.execute("DELETE FROM unit_exits WHERE path = ?", (str(image),))
    conn.commit()
    conn.close()


def test_imagebind_keeps_its_vectors_and_gains_the_text_side(tmp_path):
    import lancedb

    root = tmp_path / "files"
    photo(root / "red_kayak.jpg", "2019:07:14 10:30:00", "Canon", "Canon EOS 5D", CITIES["Lisbon"])
    text_image(root / "shot.png", ["INVOICE 4471"])
    db_dir = tmp_path / "db"
    cli = Cli(db_dir)
    assert cli("index", root, "--model", "imagebind-test").exit_code == 0
    assert found(cli, "4471", "--keyword") == ["shot.png"]  # the text side beside the image embedding

    def vectors():
        rows = lancedb.connect(str(db_dir)).open_table("units").to_arrow().to_pylist()
        return {Path(row["path"]).name: row["vector"] for row in rows}

    before = vectors()
    strip_media_text(db_dir)
    assert found(cli, "4471", "--keyword") == []
    upgraded = json.loads(cli("index", root, "--json").stdout)
    assert upgraded["updated"] == 2 and upgraded["units_encoded"] == 0  # no encode: text side only
    assert vectors() == before
    assert found(cli, "4471", "--keyword") == ["shot.png"]
    assert found(cli, "photo", "--camera", "canon") == ["red_kayak.jpg"]


def strip_media_text(db_dir: Path) -> None:
    """An ImageBind index as a recall before media text left it: media rows without snippet or
    metadata columns, a manifest whose media files were read before the text version."""
    import lancedb
    import pyarrow as pa

    db = lancedb.connect(str(db_dir))
    data = db.open_table("units").to_arrow()
    data = data.drop_columns(["taken_at", "camera", "lat", "lon", "place", "artist", "meta", "words", "name"])
    data = data.set_column(data.schema.get_field_index("snippet"), "snippet", pa.array([""] * len(data)))
    db.drop_table("units")
    db.create_table("units", data=data)
    conn = sqlite3.connect(db_dir / MANIFEST_NAME)
    conn.execute("UPDATE files SET text_version = 0")
    conn.execute("DELETE FROM media_facts")
    conn.commit()
    conn.close()


def test_query_terms_find_the_same_files_as_the_flags(corpus):
    _, cli, _ = corpus
    lisbon = "{},{}".format(*CITIES["Lisbon"])
    cases = [  # (the query with a term, the same query with the flag, what both must find)
        (
            ["photo taken:2021", "-t", "image"],
            ["photo", "--taken-after", "2021-01-01", "--taken-before", "2021-12-31", "-t", "image"],
            {"IMG_0004.jpg", "IMG_0005.jpg"},
        ),
        (
            ["video taken:2021-05-01"],
            ["video", "--taken-after", "2021-05-01", "--taken-before", "2021-05-01"],
            {"VID_0001.mp4"},
        ),
        (
            ["photo taken:2021-06-06..2021-08", "-t", "image"],
            ["photo", "--taken-after", "2021-06-06", "--taken-before", "2021-08-31", "-t", "image"],
            {"IMG_0005.jpg"},
        ),
        (
            ["photo taken:..2014", "-t", "image"],
            ["photo", "--taken-before", "2014-12-31", "-t", "image"],
            {"IMG_0006.jpg"},
        ),
        (["photo near:Lisbon"], ["photo", "--near", "Lisbon"], {"red_kayak_2019.jpg", "IMG_0005.jpg", "VID_0001.mp4"}),
        ([f"photo near:{lisbon},5"], ["photo", "--near", f"{lisbon},5"], {"red_kayak_2019.jpg", "VID_0001.mp4"}),
        (['photo near:"Paris, FR"'], ["photo", "--near", "Paris, FR"], {"IMG_0002.jpg"}),
        (["photo camera:iphone"], ["photo", "--camera", "iphone"], {"IMG_0002.jpg", "IMG_0004.jpg", "IMG_0005.jpg"}),
        (
            ['song artist:"nina simone"'],
            ["song", "--artist", "nina simone"],
            {"track01.mp3", "track01.flac", "track01.m4a"},
        ),
    ]
    for with_term, with_flag, expected in cases:
        assert set(found(cli, *with_term)) == set(found(cli, *with_flag)) == expected, with_term[0]
    both = found(cli, "photo camera:iphone taken:2021", "-t", "image")  # terms combine, like flags
    assert set(both) == {"IMG_0004.jpg", "IMG_0005.jpg"}
    assert set(found(cli, "photo camera:iphone", "--near", "Lisbon")) == {"IMG_0005.jpg"}


def test_query_terms_that_cannot_be_read_say_how_in_one_line(corpus):
    _, cli, _ = corpus
    for args, says in (
        (["photo taken:2019-13"], "use YYYY, YYYY-MM, YYYY-MM-DD"),
        (["photo camera:canon", "--camera", "nikon"], "give that filter once"),
        (["taken:2019 near:Lisbon"], "add words"),
        (["photo near:Xyzzyville"], "no city of that name"),
    ):
        result = cli("query", *args)
        assert result.exit_code == 2 and says in result.stderr, args
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_taken_term_spans():
    from recall_cli.query.language import read_query, taken_range

    assert taken_range("2019") == ("2019-01-01", "2019-12-31")
    assert taken_range("2020-02") == ("2020-02-01", "2020-02-29")
    assert taken_range("2019-07-14") == ("2019-07-14", "2019-07-14")
    assert taken_range("2019-07..2019-09-15") == ("2019-07-01", "2019-09-15")
    assert taken_range("..2019-07") == (None, "2019-07-31")
    assert taken_range("2019-07-14T10:00..") == ("2019-07-14T10:00", None)
    query = read_query('beach near:"Paris, FR 30km" camera:Canon "red kayak"')
    assert query.filters == {"near": "Paris, FR 30km", "camera": "Canon"}
    assert query.terms == [(1.0, "beach red kayak")] and query.keyword.phrases == ("red kayak",)
    assert read_query("meet near: the station").filters == {}  # a colon then a space is plain text
