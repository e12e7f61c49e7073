"""Videos -> ImageBind's vision input [clips * 3, 3, 2, 224, 224], decoded with PyAV.

ImageBind's `load_and_transform_video_data` without pytorchvideo or decord:
ConstantClipsPerVideoSampler(2 s, 5 clips), the first and last frame of each clip
(UniformTemporalSubsample(2) over decord's frame range), /255, ShortSideScale(224) (bilinear), CLIP
mean/std, three spatial crops (left/centre/right or top/centre/bottom).  The model averages all
clips x crops.

Deliberate differences from the reference: a video shorter than one clip yields one clip instead of
several identical ones (the average is the same), and rotation metadata is ignored, as decord
ignores it.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from recall_cli.models.base import DecodeError
from recall_cli.models.imagebind.media.common import FFMPEG_INPUT_OPTIONS, IMAGE_SIZE, clip_starts, normalize, one_line

VIDEO_CLIP_SECONDS = 2
VIDEO_CLIPS = 5  # reference clips_per_video; also the cap for long videos
VIDEO_FRAMES_PER_CLIP = 2
VIDEO_CROPS = 3


def load_video(path: Path, clips: int = VIDEO_CLIPS) -> torch.Tensor:
    """Video file -> [clips * 3, 3, 2, 224, 224].  DecodeError when it cannot be decoded."""
    import av

    try:
        container = av.open(str(path), options=FFMPEG_INPUT_OPTIONS)
    except Exception as exc:
        raise DecodeError(f"cannot open video: {one_line(exc)}") from None
    try:
        if not container.streams.video:
            if container.streams.audio:
                raise DecodeError("no video stream, only sound (rename it .m4a to index it as audio)")
            raise DecodeError("no video stream (the file is truncated or damaged)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        if fps <= 0:
            raise DecodeError("video has no frame rate")
        if stream.frames:
            duration = stream.frames / fps
        elif container.duration:
            duration = container.duration / 1_000_000
        elif stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = 0.0
        if duration <= 0:
            raise DecodeError("video has zero length")
        plan = video_frame_plan(duration, fps, clips)
        wanted = sorted({i for clip in plan for i in clip})
        frames = _decode_frames(container, stream, fps, wanted)
        if not frames:
            raise DecodeError("no decodable video frames")
        clip_arrays = [np.stack([frames[i] for i in clip]) for clip in plan]
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"cannot decode video: {one_line(exc)}") from None
    finally:
        container.close()
    return preprocess_video_clips(clip_arrays)


def video_frame_plan(duration: float, fps: float, clips: int = VIDEO_CLIPS) -> list[list[int]]:
    """Frame indices of each clip: the first and last frame of decord's range
    [ceil(fps*start), ceil(fps*end)) (UniformTemporalSubsample(2)); identical clips dropped."""
    plan: list[list[int]] = []
    for start in clip_starts(duration, VIDEO_CLIP_SECONDS, clips):
        end = min(start + VIDEO_CLIP_SECONDS, Fraction(duration))
        first, stop = math.ceil(fps * start), math.ceil(fps * end)
        n = max(stop - first, 1)
        idx = torch.linspace(0, n - 1, VIDEO_FRAMES_PER_CLIP).clamp(0, n - 1).long().tolist()
        frames = [first + i for i in idx]
        if frames not in plan:
            plan.append(frames)
    return plan


def _decode_frames(container, stream, fps: float, wanted: list[int]) -> dict[int, np.ndarray]:
    """Decode the frames with the given indices (index of a frame = round((t - t0) * fps), the first
    frame at or after each wanted index); seeks when the next wanted frame is over 10 s ahead.
    Indices past the last frame (duration rounding) get the last frame."""
    tb = stream.time_base
    t0 = float(stream.start_time * tb) if stream.start_time is not None else 0.0
    out: dict[int, np.ndarray] = {}
    pending = sorted(wanted)
    position = -1
    last = None
    seeked: set[int] = set()
    while pending:
        target = pending[0]
        if target - position > 10 * fps and target not in seeked:
            seeked.add(target)
            container.seek(int((t0 + target / fps) / tb), stream=stream, backward=True, any_frame=False)
        jump = False
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            index = int(round((float(frame.pts * tb) - t0) * fps))
            position, last = index, frame
            if pending[0] <= index:
                array = frame.to_ndarray(format="rgb24")
                while pending and pending[0] <= index:
                    out[pending.pop(0)] = array
            if not pending:
                break
            if pending[0] - index > 10 * fps and pending[0] not in seeked:
                jump = True
                break
        if not jump:
            break
    if pending and last is not None:
        array = last.to_ndarray(format="rgb24")
        for index in pending:
            out[index] = array
    return out


def preprocess_video_clips(clips: list[np.ndarray]) -> torch.Tensor:
    """Clips of uint8 frames [T, H, W, 3] -> [len(clips) * 3, 3, T, 224, 224]."""
    out = []
    for frames in clips:
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 255.0
        x = normalize(short_side_scale(x), (3, 1, 1, 1))
        out.extend(uniform_crop(x, IMAGE_SIZE, i) for i in range(VIDEO_CROPS))
    return torch.stack(out)


def short_side_scale(x: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """pytorchvideo ShortSideScale on [C, T, H, W] (bilinear, align_corners=False, no antialias)."""
    _, _, h, w = x.shape
    if w < h:
        new_h, new_w = int(math.floor(h / w * size)), size
    else:
        new_h, new_w = size, int(math.floor(w / h * size))
    return torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)


def uniform_crop(x: torch.Tensor, size: int, spatial_idx: int) -> torch.Tensor:
    """ImageBind's uniform_crop on [C, T, H, W]: 0/1/2 = left/centre/right (top/centre/bottom)."""
    h, w = x.shape[-2:]
    y_off = int(math.ceil((h - size) / 2))
    x_off = int(math.ceil((w - size) / 2))
    if h > w:
        y_off = {0: 0, 1: y_off, 2: h - size}[spatial_idx]
    else:
        x_off = {0: 0, 1: x_off, 2: w - size}[spatial_idx]
    return x[..., y_off : y_off + size, x_off : x_off + size]
