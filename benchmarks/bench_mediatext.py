"""Media text: OCR quality and cost, one-word queries by text in images, GPS -> place, and what
OCR costs an index of photos without text.

- OCR word recall on rendered text images: fonts (Pillow's built-in TrueType font, and DejaVu
  Sans, Serif, Mono when installed) x sizes x backgrounds (white, cream, dark with light ink, a
  noisy photo-like gradient); two lines of words per image, the words drawn at random from a
  fixed vocabulary (with numbers).  A word is recalled when it appears among the recognised
  words (case and punctuation ignored).  Target >= 0.95.
- One-word queries: the images are indexed with minilm under neutral names (img_001.png); each
  image holds one word found in no other image, and that word is its query (default hybrid).  Rank-1
  rate, target >= 0.9.
- GPS -> place: the nearest GeoNames city for the centre of well-known cities.
- OCR seconds per image, with text and without (detection only).
- Index throughput of photos without text (JPEG with EXIF), OCR on vs off, arms alternated
  A B A B, each a fresh index in a fresh process; target: drop <= 15%.  Timings need a quiet
  machine: the load average is printed before the run.

    python -m benchmarks.run --only mediatext [--quick]
"""

from __future__ import annotations

import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from .common import machine_info, machine_line, markdown_table, recall_cmd, run_measured, write_results


def words(text: str) -> list[str]:
    return text.split()


VOCABULARY = words(
    """
    invoice receipt total amount paid balance order number customer account payment bakery
    coffee market station airport ticket gate platform museum garden harbour river bridge
    window letter parcel office school library hospital pharmacy kitchen recipe butter flour
    sugar lemon orange violet silver golden purple summer winter autumn spring morning evening
    monday friday january august december meeting project budget report quarterly warranty
    serial license contract delivery address street avenue square mountain forest island
    canyon desert glacier valley meadow village castle tower temple
    """
)
KEYWORDS = words(  # one per image, in no other image: the one-word queries
    """
    aardvark albatross alligator anchovy antelope armadillo avocado badger barracuda beetle
    bison blueberry bobcat buffalo butterfly camel canary caribou catfish cheetah chinchilla
    cobra condor cormorant coyote crayfish cricket crocodile dolphin donkey dragonfly eggplant
    elephant falcon ferret flamingo gazelle gecko giraffe gorilla grasshopper hamster hedgehog
    heron hippo hornet hyena iguana jackal jaguar jellyfish kangaroo kiwi koala ladybug lemur
    leopard lobster lynx mackerel magpie mammoth manatee mandarin meerkat mongoose moose
    narwhal ocelot octopus ostrich otter panther parrot peacock pelican penguin pheasant
    piranha platypus
    """
)
BACKGROUNDS = {
    "white": ((255, 255, 255), (0, 0, 0)),
    "cream": ((250, 240, 205), (40, 30, 20)),
    "dark": ((35, 40, 50), (235, 235, 235)),
    "photo": (None, (15, 15, 15)),
}
SYSTEM_FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")
CITY_CENTRES = [  # (expected city, lat, lon)
    ("Lisbon", 38.7223, -9.1393),
    ("Paris", 48.8566, 2.3522),
    ("Tokyo", 35.6895, 139.6917),
    ("Porto", 41.1496, -8.6110),
    ("Berlin", 52.5200, 13.4050),
    ("Madrid", 40.4168, -3.7038),
    ("Rome", 41.9028, 12.4964),
    ("Cairo", 30.0444, 31.2357),
    ("Nairobi", -1.2864, 36.8172),
    ("Sydney", -33.8688, 151.2093),
    ("Buenos Aires", -34.6037, -58.3816),
    ("Toronto", 43.6532, -79.3832),
    ("Mexico City", 19.4326, -99.1332),
    ("Mumbai", 19.0760, 72.8777),
    ("Seoul", 37.5665, 126.9780),
    ("Reykjavik", 64.1466, -21.9426),
    ("Cape Town", -33.9249, 18.4241),
    ("Lima", -12.0464, -77.0428),
    ("Oslo", 59.9139, 10.7522),
    ("Vienna", 48.2082, 16.3738),
]


def fonts() -> list[tuple[str, object]]:
    """(label, function size -> font): Pillow's own, then the system's DejaVu faces found."""
    from PIL import ImageFont

    found = [("pillow-default", lambda size: ImageFont.load_default(size=size))]
    for name in SYSTEM_FONTS:
        for folder in ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/TTF", "/Library/Fonts"):
            path = Path(folder) / name
            if path.exists():
                found.append((name.removesuffix(".ttf"), lambda size, p=str(path): ImageFont.truetype(p, size)))
                break
    return found


def render(path: Path, lines: list[str], font, background: str, seed: int) -> None:
    import numpy as np
    from PIL import Image, ImageDraw

    fill, ink = BACKGROUNDS[background]
    width, line_height = 1000, int(font.size * 1.7)
    height = 60 + line_height * len(lines)
    if fill is None:  # a photo-like background: a colour gradient with noise
        rng = np.random.default_rng(seed)
        ramp = np.linspace(150, 230, width)[None, :, None] * np.ones((height, 1, 3))
        image = Image.fromarray((ramp + rng.normal(0, 8, (height, width, 3))).clip(0, 255).astype(np.uint8))
    else:
        image = Image.new("RGB", (width, height), fill)
    draw = ImageDraw.Draw(image)
    for index, line in enumerate(lines):
        draw.text((30, 30 + index * line_height), line, fill=ink, font=font)
    image.save(path)


def make_text_images(folder: Path, quick: bool) -> list[tuple[Path, list[str], dict]]:
    rng = random.Random(17)
    sizes = (16, 28) if quick else (14, 20, 28, 40)
    chosen_fonts = fonts()[:2] if quick else fonts()
    made = []
    for label, make_font in chosen_fonts:
        for size in sizes:
            font = make_font(size)
            for background in BACKGROUNDS:
                words = rng.sample(VOCABULARY, 5)
                number = str(rng.randint(1000, 99999))
                keyword = KEYWORDS[len(made)]
                lines = [" ".join(words[:3] + [number]), " ".join([keyword, *words[3:]])]
                words = [*words, keyword]
                path = folder / f"img_{len(made):03d}.png"
                render(path, lines, font, background, len(made))
                made.append((path, words + [number], {"font": label, "size": size, "background": background}))
    return made


def tokens(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def ocr_quality(images) -> tuple[dict, list[list]]:
    from PIL import Image

    from recall_cli.models.mediatext.ocr import read_text

    hits = total = 0
    by_group: dict[str, list[int]] = {}
    seconds = []
    for path, words, info in images:
        with Image.open(path) as image:
            started = time.perf_counter()
            text = read_text(image)
            seconds.append(time.perf_counter() - started)
        read = tokens(text)
        found = sum(word in read for word in words)
        hits, total = hits + found, total + len(words)
        for key in (f"font {info['font']}", f"size {info['size']}", f"background {info['background']}"):
            group = by_group.setdefault(key, [0, 0])
            group[0] += found
            group[1] += len(words)
    rows = [[key, f"{found / count:.3f}", count] for key, (found, count) in sorted(by_group.items())]
    return {"word_recall": hits / total, "words": total, "images": len(images), "seconds": seconds}, rows


def one_word_queries(images, folder: Path, db: Path) -> dict:
    from recall_cli.index.indexer import index_roots
    from recall_cli.index.options import IndexOptions
    from recall_cli.query.options import QueryOptions
    from recall_cli.query.search import Searcher

    index_roots([str(folder)], db, IndexOptions(model="minilm", full=True))
    searcher = Searcher(db)
    hits = asked = 0
    for path, words, _ in images:
        asked += 1
        top = searcher.search([words[-1]], QueryOptions(limit=1))[0]  # its own keyword
        hits += bool(top) and Path(top[0]["path"]).name == path.name
    return {"rank1": hits / max(1, asked), "queries": asked}


def places() -> tuple[float, list[list]]:
    from recall_cli.models.mediatext.places import place_name

    rows, right = [], 0
    for city, lat, lon in CITY_CENTRES:
        named = place_name(lat, lon)
        ok = named.lower().startswith(city.lower())  # strict: the nearest city itself, not a district of it
        right += ok
        rows.append([city, f"{lat}, {lon}", named, "yes" if ok else "in its name" if city in named else "no"])
    return right / len(CITY_CENTRES), rows


def photos_without_text(folder: Path, count: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from mediafiles import CITIES, photo

    cities = list(CITIES.values())
    for index in range(count):
        day = 1 + index % 28
        photo(
            folder / f"DSC_{index:04d}.jpg",
            f"2022:05:{day:02d} 12:00:00",
            "Nikon",
            "D750",
            cities[index % len(cities)],
            seed=index,
            size=(1600, 1200),
        )


def ocr_seconds_without_text(folder: Path) -> list[float]:
    from PIL import Image

    from recall_cli.models.mediatext.ocr import read_text

    seconds = []
    for path in sorted(folder.glob("*.jpg"))[:20]:
        with Image.open(path) as image:
            image.load()
            started = time.perf_counter()
            read_text(image)
            seconds.append(time.perf_counter() - started)
    return seconds


def throughput(folder: Path, rounds: int) -> dict:
    """Photos per second indexing `folder` with OCR on and off, alternated, fresh index each."""
    per_arm: dict[str, list[float]] = {"ocr on": [], "ocr off": []}
    count = len(list(folder.glob("*.jpg")))
    for _ in range(rounds):
        for arm, extra in (("ocr on", ()), ("ocr off", ("--no-ocr",))):
            with tempfile.TemporaryDirectory() as db:
                run = run_measured(recall_cmd("index", str(folder), "--db", db, "-q", *extra))
                per_arm[arm].append(count / run["wall"])
    on, off = statistics.median(per_arm["ocr on"]), statistics.median(per_arm["ocr off"])
    return {"photos": count, "per_arm": per_arm, "drop": 1 - on / off}


def main(quick: bool = False) -> str:
    info = machine_info()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        (work / "text").mkdir()
        images = make_text_images(work / "text", quick)
        quality, quality_rows = ocr_quality(images)
        queries = one_word_queries(images, work / "text", work / "db")
        place_rate, place_rows = places()
        (work / "photos").mkdir()
        photos_without_text(work / "photos", 12 if quick else 100)
        no_text = ocr_seconds_without_text(work / "photos")
        speed = throughput(work / "photos", 2 if quick else 3)
    data = {
        "machine": info,
        "load_before": load,
        "ocr": {k: v for k, v in quality.items() if k != "seconds"},
        "ocr_seconds_text": statistics.median(quality["seconds"]),
        "ocr_seconds_no_text": statistics.median(no_text),
        "one_word_rank1": queries,
        "places_right": place_rate,
        "throughput": speed,
        "quick": quick,
    }
    spread = {arm: f"{min(v):.2f}-{max(v):.2f}" for arm, v in speed["per_arm"].items()}
    markdown = "\n\n".join(
        [
            "## Media text: OCR, one-word queries, places, OCR cost",
            f"Machine: {machine_line(info)}. Load average before: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}.",
            f"OCR word recall: **{quality['word_recall']:.3f}** ({quality['words']} words in {quality['images']} "
            f"images; target >= 0.95).",
            markdown_table(["group", "word recall", "words"], quality_rows),
            f"One-word query from an image's text finds it at rank 1: **{queries['rank1']:.3f}** "
            f"({queries['queries']} queries; target >= 0.9).",
            f"GPS -> nearest city right: **{place_rate:.3f}** ({len(CITY_CENTRES)} cities).",
            markdown_table(["city", "position", "named", "right"], place_rows),
            f"OCR seconds per image (median): with text {data['ocr_seconds_text']:.3f}, without text "
            f"(1600x1200 photos, detection only) {data['ocr_seconds_no_text']:.3f}.",
            f"Index throughput, {speed['photos']} photos without text, median of alternated runs: OCR on "
            f"{statistics.median(speed['per_arm']['ocr on']):.2f}/s (spread {spread['ocr on']}), off "
            f"{statistics.median(speed['per_arm']['ocr off']):.2f}/s (spread {spread['ocr off']}); "
            f"drop **{speed['drop']:.1%}** (target <= 15%).",
        ]
    )
    if not quick:
        write_results("mediatext", data, markdown)
    return markdown


if __name__ == "__main__":
    print(main(quick="--quick" in sys.argv))
