"""ImageBind's photo decode against the reference's: `python -m benchmarks.bench_photo_decode [--quick]`.

The reference (ImageBind's `data.py`) decodes a photo whole and resizes it to 224 px in one bicubic
step.  recall decodes a large JPEG at a DCT scale and reduces it by a whole factor before the bicubic
step (models/imagebind/media/image.py).  On camera-size photos (scikit-image's and scikit-learn's
real photos at 4000x3000 with sensor noise, and one generated photo with stripes, lines and noise
finer than the 224-px input holds) this measures:
  * CPU milliseconds per photo of each decode, arms alternated photo by photo over the rounds, one
    thread (the product decodes one photo per core);
  * how far recall's 224-px input is from the reference's, in grey levels (mean, 99th percentile,
    largest);
  * ImageBind-Huge's embedding of the two inputs (random weights in the official layout, fp32: the
    real ones are a 4.5 GB download): cosine, beside the cosine of bf16 against fp32 on the
    reference's input, the difference the default precision already makes.

Run time on 2 cores: ~2 minutes (most of it ImageBind-Huge on 36 inputs in fp32).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from . import scenes
from .common import load_check, machine_info, machine_line, markdown_table, random_huge, write_results


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def reference_input(path: Path):
    """ImageBind's reference: the photo decoded whole (upright, RGB), Resize(224, BICUBIC) in one
    step, CenterCrop(224), CLIP normalisation (the product's own last step)."""
    import numpy as np
    from PIL import Image, ImageOps

    from recall_cli.models.imagebind.media.common import IMAGE_SIZE
    from recall_cli.models.imagebind.media.image import _normalized

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
    width, height = image.size  # torchvision's Resize(224) on a PIL image: the shorter side to 224
    size = (
        (IMAGE_SIZE, int(IMAGE_SIZE * height / width))
        if width <= height
        else (int(IMAGE_SIZE * width / height), IMAGE_SIZE)
    )
    resized = image.resize(size, Image.BICUBIC)
    left, top = int(round((size[0] - IMAGE_SIZE) / 2.0)), int(round((size[1] - IMAGE_SIZE) / 2.0))
    return _normalized(np.asarray(resized.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))))


def detailed_photo(path: Path) -> Path:
    """A 4000x3000 JPEG with stripes, lines and noise finer than a 224-px input holds."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    y, x = np.ogrid[0:3000, 0:4000]
    pixels = np.empty((3000, 4000, 3), dtype=np.int16)
    pixels[..., 0], pixels[..., 1] = x * 255 // 4000, y * 255 // 3000
    pixels[..., 2] = ((x // 7 + y // 5) % 2) * 120 + 60
    pixels += rng.integers(-35, 36, (3000, 4000, 1), dtype=np.int16)
    photo = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(photo)
    for _ in range(40):
        ends = rng.integers(0, 3000, 4) * [4, 3, 4, 3] // 3
        draw.line(tuple(int(v) for v in ends), fill=tuple(int(v) for v in rng.integers(0, 255, 3)), width=5)
    photo.save(path, quality=92)
    return path


def cpu_ms(function, path: Path) -> float:
    started = time.process_time()
    function(path)
    return (time.process_time() - started) * 1000


def main(quick: bool = False) -> str:
    import numpy as np
    import torch

    from recall_cli.models.device import one_torch_thread
    from recall_cli.models.imagebind.media.common import CLIP_STD
    from recall_cli.models.imagebind.media.image import load_image

    rounds = 2 if quick else 3
    load = load_check(log)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        photos = scenes.camera_size(scenes.real_photos(), work, 4 if quick else len(scenes.real_photos()))
        photos.append(detailed_photo(work / "detail.jpg"))
        arms = {"reference (whole, one step)": reference_input, "recall": load_image}
        times: dict[str, list[float]] = {name: [] for name in arms}
        with one_torch_thread():
            for _ in range(rounds):
                for path in photos:
                    for name, decode in arms.items():
                        times[name].append(cpu_ms(decode, path))
            reference = torch.stack([reference_input(path) for path in photos])
            ours = torch.stack([load_image(path) for path in photos])
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    levels = ((ours - reference) * std * 255).abs()
    per_photo = levels.flatten(1)
    log("ImageBind-Huge (random weights) on both inputs, fp32 and bf16")
    with torch.no_grad():
        fp32 = random_huge("fp32")
        exact, fast = fp32.encode("image", list(reference)), fp32.encode("image", list(ours))
        half = random_huge("bf16").encode("image", list(reference)).float()
    cosine = torch.nn.functional.cosine_similarity(fast, exact)
    yardstick = torch.nn.functional.cosine_similarity(half, exact)
    data = {
        "machine": machine_info(),
        "load": load,
        "photos": len(photos),
        "rounds": rounds,
        "cpu_ms_per_photo": {name: statistics.median(values) for name, values in times.items()},
        "grey_levels": {
            "mean": float(levels.mean()),
            "p99": float(np.quantile(levels.numpy(), 0.99)),
            "max": float(levels.max()),
            "worst_photo_mean": float(per_photo.mean(1).max()),
        },
        "cosine_recall_vs_reference": {"min": float(cosine.min()), "mean": float(cosine.mean())},
        "cosine_bf16_vs_fp32": {"min": float(yardstick.min()), "mean": float(yardstick.mean())},
    }
    markdown = render(data)
    write_results("photo_decode", data, markdown)
    return markdown


def render(data: dict) -> str:
    ms = data["cpu_ms_per_photo"]
    reference, ours = ms["reference (whole, one step)"], ms["recall"]
    grey, cosine, yardstick = data["grey_levels"], data["cosine_recall_vs_reference"], data["cosine_bf16_vs_fp32"]
    rows = [
        ["reference (decoded whole, one bicubic step)", round(reference, 1), "-", "-", "-"],
        [
            "recall (DCT scale, reduce, bicubic)",
            round(ours, 1),
            f"{grey['mean']:.2f} / {grey['p99']:.1f} / {grey['max']:.0f}",
            f"{cosine['min']:.5f} / {cosine['mean']:.5f}",
            f"{reference / ours:.2f}x",
        ],
    ]
    headers = [
        "decode",
        "CPU ms per photo",
        "grey levels off (mean / p99 / max)",
        "Huge cosine (min / mean)",
        "speed-up",
    ]
    return "\n\n".join(
        [
            "## ImageBind's photo decode against the reference's",
            f"Machine: {machine_line(data['machine'])}. Load before: others use "
            f"{data['load']['busy_share']:.0%} of the cores (loadavg {data['load']['loadavg_1m']}). "
            f"{data['photos']} photos at 4000x3000 (real photos with sensor noise, and one with detail finer "
            f"than the input holds), {data['rounds']} rounds alternated photo by photo, one thread.",
            markdown_table(headers, rows),
            f"The worst photo is off by {grey['worst_photo_mean']:.2f} grey levels on average. ImageBind-Huge "
            "has random weights here (the real ones are a download); bf16 against fp32 on the reference's "
            f"input, the difference the default precision makes: cosine {yardstick['min']:.5f} (min) / "
            f"{yardstick['mean']:.5f} (mean).",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 photos, 2 rounds")
    print(main(quick=parser.parse_args().quick))
