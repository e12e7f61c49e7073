"""What the image, video and audio pipelines share: CLIP normalisation, the clip placement video and
audio both take from pytorchvideo, the limits put on ffmpeg, and the wording of decoder errors."""

from __future__ import annotations

from fractions import Fraction

import torch

from recall_cli.errors import first_line
from recall_cli.models.mediatext.video import FFMPEG_INPUT_OPTIONS

__all__ = ["FFMPEG_INPUT_OPTIONS"]  # the limits put on ffmpeg live with the other container reader

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 224  # side of the square every image and video frame is cropped to


def normalize(x: torch.Tensor, shape) -> torch.Tensor:
    """CLIP mean/std normalisation of RGB values in [0, 1]; `shape` puts the channel axis in place."""
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype).view(shape)
    std = torch.tensor(CLIP_STD, dtype=x.dtype).view(shape)
    return (x - mean) / std


def clip_starts(duration: float, clip_seconds: float, clips: int) -> list[Fraction]:
    """Start times of `clips` clips evenly spread so that the last one ends at the end (clips may
    overlap; all start at 0 when the media is shorter than one clip), as pytorchvideo's
    ConstantClipsPerVideoSampler places them.  Fractions, as pytorchvideo uses, so that frame
    indices such as ceil(fps * start) round as the reference's do."""
    last_start = Fraction(max(duration - clip_seconds, 0))
    step = last_start / max(clips - 1, 1)
    return [step * i for i in range(clips)]


def one_line(exc: BaseException) -> str:
    """The library's reason without its errno number or the file name (the caller shows the name):
    "[Errno 1094995529] Invalid data found when processing input: '/x.mp4'" -> "Invalid data ..."."""
    reason = getattr(exc, "strerror", None)
    return first_line(reason if isinstance(reason, str) and reason else exc, 200)
