"""Images -> ImageBind's vision input [3, 224, 224].

EXIF orientation, RGB, shorter side to 224 (bicubic, PIL), centre crop, CLIP mean/std: ImageBind's
torchvision Resize(224, BICUBIC) + CenterCrop(224) + Normalize, on Pillow (+ pillow-heif for HEIC).
Decoding refuses images too large to hold in memory and crops extreme aspect ratios before
resizing; see MAX_IMAGE_PIXELS and MAX_RESIZED_PIXELS.

A large photo is not decoded and resampled at full size only to become 224 px: a JPEG is decoded
at the smallest DCT scale (1/2, 1/4, 1/8) that keeps what the resize and OCR need (DECODE_SHORT,
DECODE_LONG), and the resize first reduces by a whole factor (box average) down to no less than
REDUCING_GAP times the target, then resamples bicubic, which Pillow documents as
indistinguishable from resampling the whole in one step.  A 12 MP camera JPEG: 49 ms decode +
53 ms resize -> 25 + 6 ms of CPU.  Against the one-step reference, on 18 photos at 4000x3000
(benchmarks/bench_photo_decode.py), the 224-px input differs by 0.23 grey levels on average (99th
percentile 1, at most 3), and ImageBind-Huge's embedding (random weights, fp32) keeps cosine
>= 0.99992 (bf16 against fp32, the default precision's own difference, is 0.99987).  Smaller
photos (under 6x the target) are decoded and resized exactly as before.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recall_cli.models.base import DecodeError
from recall_cli.models.imagebind.media.common import IMAGE_SIZE, normalize, one_line
from recall_cli.models.mediatext.ocr import DECODE_SIDE, draft_at_least

MAX_IMAGE_PIXELS = 150_000_000  # larger images are refused (decompression-bomb guard)
MAX_RESIZED_PIXELS = IMAGE_SIZE * IMAGE_SIZE * 64  # above (aspect > 64:1): crop before resizing
REDUCING_GAP = 3.0  # Pillow: "with reducing_gap >= 3.0 the result is indistinguishable from fair resampling"
DECODE_SHORT = round(REDUCING_GAP * IMAGE_SIZE)  # shorter side a JPEG's DCT-scaled decode keeps at least
# ... and longer side: OCR's text test and detection pass read this decode (mediatext/lent.py), at
# the size its own decode of the file would have
DECODE_LONG = DECODE_SIDE

_heif_registered = False


def load_image(path: Path) -> torch.Tensor:
    """Image file -> normalised [3, 224, 224].  DecodeError when it cannot be decoded.  The decoded
    photo is offered to the file's text side (mediatext.lent: OCR reads it instead of the file)."""
    from recall_cli.models.mediatext.lent import offer

    image, whole = open_image(Path(path))
    offer(path, image, whole)
    return preprocess_image(image)


def open_image(path: Path):
    """(a fully loaded RGB PIL image with EXIF orientation applied, True when it has the file's full
    size: a large JPEG is decoded at a DCT scale, see the module's docstring).  DecodeError on any
    failure."""
    from PIL import Image, ImageOps

    _register_heif()
    # Our own limit, checked from the header before any pixel is decoded, replaces PIL's
    # (a warning at 89 Mpx, an error with a long message at 179 Mpx).
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise DecodeError(
                    f"image too large to decode safely ({w}x{h} pixels; the limit is "
                    f"{MAX_IMAGE_PIXELS // 1_000_000} megapixels)"
                )
            whole = not draft_at_least(img, DECODE_LONG, DECODE_SHORT)
            img.load()
            # in place, and no conversion of what is RGB already: each copy of a 12 MP photo cost
            # 7-23 ms of CPU beside its 38 ms decode (the pixels are the same)
            ImageOps.exif_transpose(img, in_place=True)
            return (img if img.mode == "RGB" else img.convert("RGB")), whole
    except DecodeError:
        raise
    except Image.UnidentifiedImageError:
        raise DecodeError("cannot decode image: not a known image format, or damaged") from None
    except Exception as exc:
        raise DecodeError(f"cannot decode image: {one_line(exc)}") from None


def _register_heif() -> None:
    """Teach PIL to open HEIC/HEIF (iPhone photos) once, if pillow-heif is installed."""
    global _heif_registered
    if not _heif_registered:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
        except Exception:  # pragma: no cover - optional
            pass
        _heif_registered = True


def preprocess_image(img) -> torch.Tensor:
    """PIL RGB image -> normalised [3, 224, 224] (torchvision Resize(224, BICUBIC) + CenterCrop)."""
    from PIL import Image

    w, h = img.size
    if w <= h:
        size = (IMAGE_SIZE, int(IMAGE_SIZE * h / w))
    else:
        size = (int(IMAGE_SIZE * w / h), IMAGE_SIZE)
    top = int(round((size[1] - IMAGE_SIZE) / 2.0))
    left = int(round((size[0] - IMAGE_SIZE) / 2.0))
    if size[0] * size[1] > MAX_RESIZED_PIXELS:
        # Extreme aspect ratio (a 58396x20 strip would become 653995x224, 440 MB): resample only
        # the source region under the centre crop.  Not bit-exact with resize-then-crop, so
        # ordinary photos keep the reference path below.
        sx, sy = w / size[0], h / size[1]
        box = (left * sx, top * sy, (left + IMAGE_SIZE) * sx, (top + IMAGE_SIZE) * sy)
        img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC, box=box)
    else:
        if size != (w, h):
            img = img.resize(size, Image.BICUBIC, reducing_gap=REDUCING_GAP)
        img = img.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    return _normalized(np.asarray(img, dtype=np.uint8))


def _normalized(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [224, 224, 3] -> normalised float32 [3, 224, 224]: channels first in a contiguous
    copy, then the same float ops on one torch thread.  On the permuted (strided) view and
    torch's two threads these few passes over 150k values took 2-23 ms an image on a shared
    2-core machine, against 0.3 ms (about as long as decoding the JPEG); the values are the same."""
    from recall_cli.models.device import one_torch_thread

    channels_first = np.ascontiguousarray(pixels.transpose(2, 0, 1))
    with one_torch_thread():
        return normalize(torch.from_numpy(channels_first).float().div_(255.0), (3, 1, 1))
