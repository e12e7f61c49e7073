"""Photos without text that are hard for a text test (busy textures, regular structure), and
photos with a line of text in them (signs), for the OCR gate's figures in bench_mediatext.

Generated, so the benchmark needs no download: gravel, foliage, a city skyline with rows of
windows, 1/f noise (clouds, rock), plus scikit-learn's two sample photos when it is installed.

Real photos: scikit-image's sample photos (in its wheel; the `bench` extra installs it) and
scikit-learn's, at their own size, and the same photos at camera size (4000x3000, with sensor
noise, JPEG q90: about what a phone writes), where decoding a JPEG even at 1/8 scale costs
tens of milliseconds.  A folder of photos of your own can be added (`--photos DIR`).
"""

from __future__ import annotations

import random
from pathlib import Path

SIZE = (1600, 1200)


def fractal(seed: int, beta: float = 2.2):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = SIZE
    power = np.fft.fftfreq(height)[:, None] ** 2 + np.fft.fftfreq(width)[None, :] ** 2
    power[0, 0] = 1
    field = np.real(
        np.fft.ifft2((rng.normal(size=power.shape) + 1j * rng.normal(size=power.shape)) / power ** (beta / 2))
    )
    field = (field - field.mean()) / field.std()
    colour, amplitude = rng.uniform(30, 220, 3), rng.uniform(20, 60)
    pixels = colour + amplitude * field[:, :, None] * rng.uniform(0.5, 1.5, 3)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def gravel(seed: int):
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    image = Image.new("RGB", SIZE, tuple(int(v) for v in rng.uniform(80, 160, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6000):
        x, y, size, grey = (
            rng.uniform(0, SIZE[0]),
            rng.uniform(0, SIZE[1]),
            rng.uniform(3, 18),
            int(rng.uniform(40, 220)),
        )
        draw.ellipse((x, y, x + size, y + size * rng.uniform(0.5, 1)), fill=(grey, int(grey * 0.95), int(grey * 0.85)))
    return image.filter(ImageFilter.GaussianBlur(1))


def foliage(seed: int):
    import numpy as np
    from PIL import ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    image = fractal(seed, 1.2)
    draw = ImageDraw.Draw(image)
    for _ in range(2500):
        x, y, size = rng.uniform(0, SIZE[0]), rng.uniform(0, SIZE[1]), rng.uniform(6, 30)
        green = (int(rng.uniform(10, 80)), int(rng.uniform(60, 170)), int(rng.uniform(10, 60)))
        draw.ellipse((x, y, x + size, y + size * 0.4), fill=green)
    return image.filter(ImageFilter.GaussianBlur(0.8))


def skyline(seed: int):
    import numpy as np
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    image = fractal(seed, 2.5)
    draw = ImageDraw.Draw(image)
    left = 0
    while left < SIZE[0]:
        width, top, grey = (
            int(rng.uniform(80, 250)),
            int(rng.uniform(SIZE[1] * 0.2, SIZE[1] * 0.7)),
            int(rng.uniform(60, 160)),
        )
        draw.rectangle((left, top, left + width, SIZE[1]), fill=(grey, grey, grey + 10))
        for y in range(top + 15, SIZE[1] - 20, 35):
            for x in range(left + 10, left + width - 20, 28):
                if rng.random() < 0.7:
                    draw.rectangle((x, y, x + 14, y + 20), fill=(230, 220, 150) if rng.random() < 0.4 else (30, 30, 40))
        left += width + int(rng.uniform(0, 30))
    return image


def sample_photos() -> list:
    """scikit-learn's sample photos (a temple, a flower) and crops of them, at camera size."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        return []
    from PIL import Image

    photos = []
    for pixels in load_sample_images().images:
        image = Image.fromarray(pixels)
        width, height = image.size
        photos.append(image.resize(SIZE, Image.LANCZOS))
        photos.append(
            image.crop((width // 4, height // 4, width * 3 // 4, height * 3 // 4)).resize(SIZE, Image.LANCZOS)
        )
    return photos


def without_text(folder: Path, per_kind: int) -> list[Path]:
    scenes = [
        (f"{make.__name__}{seed}", make(seed))
        for seed in range(per_kind)
        for make in (fractal, gravel, foliage, skyline)
    ]
    scenes += [(f"sample{index}", image) for index, image in enumerate(sample_photos())]
    paths = []
    for name, image in scenes:
        image.save(folder / f"{name}.jpg", quality=88)
        paths.append(folder / f"{name}.jpg")
    return paths


def signs(backgrounds: list[Path], folder: Path, words: list[str], font_file: str | None) -> list[Path]:
    """One line of three words on each background: on a light panel (a sign) or straight on the
    scene in white or black, in sizes from 14 to 60 px."""
    from PIL import Image, ImageDraw, ImageFont

    rng = random.Random(17)
    made = []
    for index, background in enumerate(backgrounds):
        image = Image.open(background).convert("RGB")
        draw = ImageDraw.Draw(image)
        size = (14, 18, 24, 36, 60)[index % 5]
        font = ImageFont.truetype(font_file, size) if font_file else ImageFont.load_default(size=size)
        line = " ".join(rng.sample(words, 3))
        room_x = max(11, image.width - int(draw.textlength(line, font=font)) - 20)
        room_y = max(11, image.height - int(size * 1.4) - 20)
        x, y = rng.randint(10, min(800, room_x)), rng.randint(10, min(900, room_y))
        if index % 2 == 0:
            width = draw.textlength(line, font=font)
            draw.rectangle((x - 10, y - 10, x + width + 10, y + size * 1.4 + 10), fill=(240, 240, 235))
            draw.text((x, y), line, fill=(20, 20, 20), font=font)
        else:
            draw.text((x, y), line, fill=(255, 255, 255) if rng.random() < 0.5 else (0, 0, 0), font=font)
        made.append(folder / f"sign{index:02d}_{size}px.jpg")
        image.save(made[-1], quality=85)
    return made


SKIMAGE_PHOTOS = (  # scikit-image sample photos (no text in them; checked by OCR in the benchmark)
    "astronaut", "brick", "camera", "cat", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
    "immunohistochemistry", "retina", "rocket", "cell", "moon", "horse",
)  # fmt: skip
SKIMAGE_WITH_TEXT = ("page", "text")  # a scanned page; a photo of a sign's text


def real_photos(names=SKIMAGE_PHOTOS) -> list:
    """(name, PIL image) of scikit-image's sample photos named and scikit-learn's two."""
    import numpy as np
    from PIL import Image

    found = []
    try:
        import skimage.data
    except ImportError:
        skimage = None
    for name in names if skimage else ():
        try:
            pixels = np.asarray(getattr(skimage.data, name)())
        except Exception:  # a sample this version lacks, or one it would download
            continue
        if pixels.dtype != np.uint8:
            pixels = (pixels * 255 if pixels.max() <= 1 else pixels).astype(np.uint8)
        found.append((f"skimage_{name}", Image.fromarray(pixels).convert("RGB")))
    if names is SKIMAGE_PHOTOS:
        found += [(f"sklearn_{index}", image) for index, image in enumerate(_sklearn_photos())]
    return found


def _sklearn_photos() -> list:
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        return []
    from PIL import Image

    return [Image.fromarray(pixels) for pixels in load_sample_images().images]


def save_photos(photos: list, folder: Path) -> list[Path]:
    paths = []
    for name, image in photos:
        paths.append(folder / f"{name}.jpg")
        image.save(paths[-1], quality=90)
    return paths


def camera_size(photos: list, folder: Path, count: int, size=(4000, 3000)) -> list[Path]:
    """`count` camera-size JPEGs (q90) made from the photos given, in turn, each with its own
    sensor noise, so that its file and its decoding cost are a phone photo's."""
    import numpy as np
    from PIL import Image

    paths = []
    for index in range(count):
        name, image = photos[index % len(photos)]
        big = np.asarray(image.convert("RGB").resize(size, Image.BICUBIC), dtype=np.int16)
        noise = np.random.default_rng(index).normal(0, 3, big.shape[:2])[:, :, None]
        paths.append(folder / f"IMG_{index:04d}_{name}.jpg")
        Image.fromarray((big + noise).clip(0, 255).astype(np.uint8)).save(paths[-1], quality=90)
    return paths
