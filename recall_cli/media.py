"""Decoding and preprocessing of images, video and audio into ImageBind's input tensors.

No torchvision/torchaudio/pytorchvideo/decord: Pillow (+ pillow-heif), PyAV and soundfile decode;
the transforms are re-implemented to match ImageBind's `data.py`:

* image  -> [3, 224, 224]: EXIF orientation, RGB, shorter side to 224 (bicubic, PIL), centre crop,
  CLIP mean/std.
* video  -> [clips * 3, 3, 2, 224, 224]: ConstantClipsPerVideoSampler(2 s, 5 clips), the first and
  last frame of each clip (UniformTemporalSubsample(2) over decord's frame range), /255,
  ShortSideScale(224) (bilinear), CLIP mean/std, three spatial crops (left/centre/right or
  top/centre/bottom).  The model averages all clips x crops.
* audio  -> [clips, 1, 128, 204]: decode, mix to mono, resample to 16 kHz (the windowed-sinc
  algorithm of torchaudio.functional.resample), 2 s clips placed like ConstantClipsPerVideoSampler,
  per-clip mean removal, Kaldi fbank (128 mel bins, 25 ms Hann window, 10 ms shift, htk_compat),
  pad/cut to 204 frames, normalised with ImageBind's mean -4.268 / std 9.138.

Known deliberate differences from the reference: stereo is mixed to mono (the reference's Kaldi
fbank reads channel 0 only); files longer than 6 s get more than the reference's 3 audio clips (up to
AUDIO_MAX_CLIPS, evenly spaced); media shorter than one clip yield one clip instead of several
identical ones (identical average); video rotation metadata is ignored, as decord does.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from .errors import first_line
from .models.base import DecodeError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 224
MAX_IMAGE_PIXELS = 150_000_000  # larger images are refused (decompression-bomb guard)
MAX_RESIZED_PIXELS = IMAGE_SIZE * IMAGE_SIZE * 64  # above (aspect > 64:1): crop before resizing

VIDEO_CLIP_SECONDS = 2
VIDEO_CLIPS = 5  # reference clips_per_video; also the cap for long videos
VIDEO_FRAMES_PER_CLIP = 2
VIDEO_CROPS = 3

SAMPLE_RATE = 16000
AUDIO_CLIP_SECONDS = 2
AUDIO_CLIPS = 3  # reference clips_per_video
AUDIO_MAX_CLIPS = 8  # long files: one clip per 2 s up to this many, evenly spaced
MEL_BINS = 128
AUDIO_TARGET_FRAMES = 204
AUDIO_MEAN = -4.268
AUDIO_STD = 9.138
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 768_000  # outside: a corrupt header, refused
MAX_RESAMPLE_TAPS = 2_000_000  # see working_rate


# ------------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------------

_heif_registered = False


def _register_heif() -> None:
    global _heif_registered
    if not _heif_registered:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
        except Exception:  # pragma: no cover - optional
            pass
        _heif_registered = True


# What ffmpeg may do with a file: read it from disk (no network, no other protocol) and parse it
# with a container demuxer (never a playlist or concat script, which would open other files).
FFMPEG_INPUT_OPTIONS = {
    "protocol_whitelist": "file",
    "format_whitelist": "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,ogg,mp3,wav,w64,flac,aac,aiff,"
                        "asf,mpeg,mpegts,mpegvideo,m4v,h264,hevc,caf,amr,au,wv,ape,tta,dts,ac3,eac3",
}


def open_image(path: Path):
    """A fully loaded RGB PIL image with EXIF orientation applied.  DecodeError on any failure."""
    from PIL import Image, ImageOps

    _register_heif()
    # Our own limit, checked from the header before any pixel is decoded, replaces PIL's
    # (a warning at 89 Mpx, an error with a long message at 179 Mpx).
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise DecodeError(f"image too large to decode safely ({w}x{h} pixels; the limit is "
                                  f"{MAX_IMAGE_PIXELS // 1_000_000} megapixels)")
            img.load()
            img = ImageOps.exif_transpose(img)
            return img.convert("RGB")
    except DecodeError:
        raise
    except Image.UnidentifiedImageError:
        raise DecodeError("cannot decode image: not a known image format, or damaged") from None
    except Exception as exc:
        raise DecodeError(f"cannot decode image: {_one_line(exc)}") from None


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
            img = img.resize(size, Image.BICUBIC)
        img = img.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
    return _normalize(x, (3, 1, 1))


def load_image(path: Path) -> torch.Tensor:
    return preprocess_image(open_image(Path(path)))


def _normalize(x: torch.Tensor, shape) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype).view(shape)
    std = torch.tensor(CLIP_STD, dtype=x.dtype).view(shape)
    return (x - mean) / std


def _one_line(exc: BaseException) -> str:
    """The library's reason without its errno number or the file name (the caller shows the name):
    "[Errno 1094995529] Invalid data found when processing input: '/x.mp4'" -> "Invalid data ..."."""
    reason = getattr(exc, "strerror", None)
    return first_line(reason if isinstance(reason, str) and reason else exc, 200)


# ------------------------------------------------------------------------------------------------
# clip sampling (pytorchvideo ConstantClipsPerVideoSampler)
# ------------------------------------------------------------------------------------------------


def clip_starts(duration: float, clip_seconds: float, clips: int) -> list[Fraction]:
    """Start times of `clips` clips evenly spread so that the last one ends at the end (clips may
    overlap; all start at 0 when the media is shorter than one clip)."""
    last_start = Fraction(max(duration - clip_seconds, 0))
    step = last_start / max(clips - 1, 1)
    return [step * i for i in range(clips)]


# ------------------------------------------------------------------------------------------------
# video
# ------------------------------------------------------------------------------------------------


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


def preprocess_video_clips(clips: list[np.ndarray]) -> torch.Tensor:
    """Clips of uint8 frames [T, H, W, 3] -> [len(clips) * 3, 3, T, 224, 224]."""
    out = []
    for frames in clips:
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 255.0
        x = _normalize(short_side_scale(x), (3, 1, 1, 1))
        out.extend(uniform_crop(x, IMAGE_SIZE, i) for i in range(VIDEO_CROPS))
    return torch.stack(out)


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


def load_video(path: Path, clips: int = VIDEO_CLIPS) -> torch.Tensor:
    import av

    try:
        container = av.open(str(path), options=FFMPEG_INPUT_OPTIONS)
    except Exception as exc:
        raise DecodeError(f"cannot open video: {_one_line(exc)}") from None
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
        raise DecodeError(f"cannot decode video: {_one_line(exc)}") from None
    finally:
        container.close()
    return preprocess_video_clips(clip_arrays)


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


# ------------------------------------------------------------------------------------------------
# audio: decode, resample, Kaldi fbank
# ------------------------------------------------------------------------------------------------


def audio_clip_count(duration: float) -> int:
    """Reference: 3 clips.  Longer files: one clip per 2 s, at most AUDIO_MAX_CLIPS."""
    return max(AUDIO_CLIPS, min(AUDIO_MAX_CLIPS, math.ceil(duration / AUDIO_CLIP_SECONDS)))


def resample(waveform: torch.Tensor, orig: int, new: int, lowpass_filter_width: int = 6,
             rolloff: float = 0.99) -> torch.Tensor:
    """torchaudio.functional.resample (sinc_interp_hann) on [..., time]."""
    if orig == new:
        return waveform
    g = math.gcd(int(orig), int(new))
    orig, new = int(orig) // g, int(new) // g
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    dtype = waveform.dtype if waveform.dtype.is_floating_point else torch.float32
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx
    t = (t * base).clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    kernels = torch.where(t == 0, torch.tensor(1.0, dtype=t.dtype), t.sin() / t) * window * (base / orig)
    kernels = kernels.to(dtype)
    shape = waveform.shape
    x = waveform.reshape(-1, shape[-1]).to(dtype)
    length = x.shape[-1]
    x = torch.nn.functional.pad(x, (width, width + orig))
    y = torch.nn.functional.conv1d(x[:, None], kernels, stride=orig).transpose(1, 2).reshape(x.shape[0], -1)
    target = math.ceil(new * length / orig)
    return y[..., :target].reshape(*shape[:-1], -1)


def kaldi_fbank(waveform: torch.Tensor, sample_rate: int = SAMPLE_RATE, num_mel_bins: int = MEL_BINS,
                frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0,
                low_freq: float = 20.0, preemphasis: float = 0.97) -> torch.Tensor:
    """Kaldi-compatible log-mel filterbank, as torchaudio.compliance.kaldi.fbank with ImageBind's
    arguments (htk_compat, no energy, Hann window, dither 0, snip_edges, power spectrum, DC offset
    removal, window padded to a power of two).  [time] -> [frames, num_mel_bins]."""
    x = waveform.reshape(-1).float()
    shift = int(sample_rate * frame_shift_ms * 0.001)
    size = int(sample_rate * frame_length_ms * 0.001)
    padded = 1 << (size - 1).bit_length()
    if x.numel() < size:
        return torch.empty(0, num_mel_bins)
    n_frames = 1 + (x.numel() - size) // shift
    frames = x.as_strided((n_frames, size), (shift, 1))
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.nn.functional.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)[:, :-1]
    frames = frames - preemphasis * previous
    frames = frames * torch.hann_window(size, periodic=False, dtype=frames.dtype)
    frames = torch.nn.functional.pad(frames, (0, padded - size))
    power = torch.fft.rfft(frames).abs().pow(2.0)
    mel = power @ mel_banks(num_mel_bins, padded, sample_rate, low_freq).T
    return mel.clamp_min(torch.finfo(torch.float32).eps).log()


def mel_banks(num_bins: int, padded_window: int, sample_rate: int, low_freq: float,
              high_freq: float = 0.0) -> torch.Tensor:
    """Kaldi triangular mel filters [num_bins, padded_window // 2 + 1] (last column zero)."""
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist

    def mel_scale(f):
        return 1127.0 * torch.log(1.0 + f / 700.0)

    n_fft_bins = padded_window // 2
    fft_bin_width = sample_rate / padded_window
    mel_low, mel_high = 1127.0 * math.log(1.0 + low_freq / 700.0), 1127.0 * math.log(1.0 + high_freq / 700.0)
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = torch.arange(num_bins).unsqueeze(1)
    left = mel_low + b * delta
    center = mel_low + (b + 1.0) * delta
    right = mel_low + (b + 2.0) * delta
    mel = mel_scale(fft_bin_width * torch.arange(n_fft_bins)).unsqueeze(0)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.max(torch.zeros(1), torch.min(up, down))
    return torch.nn.functional.pad(banks, (0, 1))


def melspec_clip(clip: torch.Tensor) -> torch.Tensor:
    """One 16 kHz mono clip -> normalised [1, 128, 204] (ImageBind waveform2melspec + Normalize)."""
    clip = clip - clip.mean()
    fbank = kaldi_fbank(clip).transpose(0, 1)
    if fbank.shape[1] == 0:
        raise DecodeError("audio too short")
    p = AUDIO_TARGET_FRAMES - fbank.shape[1]
    if p > 0:
        fbank = torch.nn.functional.pad(fbank, (0, p))
    elif p < 0:
        fbank = fbank[:, :AUDIO_TARGET_FRAMES]
    return ((fbank - AUDIO_MEAN) / AUDIO_STD).unsqueeze(0)


def audio_clips_from_waveform(waveform: torch.Tensor, clips: int | None = None) -> torch.Tensor:
    """Whole 16 kHz mono waveform [time] -> [clips, 1, 128, 204]."""
    duration = waveform.shape[-1] / SAMPLE_RATE
    return _clips_from_segments(lambda a, b: waveform[a:b], duration, clips)


def _clips_from_segments(read16k, duration: float, clips: int | None) -> torch.Tensor:
    n = clips or audio_clip_count(duration)
    out, seen = [], set()
    for start in clip_starts(duration, AUDIO_CLIP_SECONDS, n):
        a, b = int(start * SAMPLE_RATE), int((start + AUDIO_CLIP_SECONDS) * SAMPLE_RATE)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        out.append(melspec_clip(read16k(a, b)))
    return torch.stack(out)


def load_audio(path: Path, clips: int | None = None) -> torch.Tensor:
    """Audio file (or the audio of a video) -> [clips, 1, 128, 204]."""
    path = Path(path)
    reader = _SoundfileReader.open(path) or _PyAVReader.open(path)
    try:
        if reader.frames <= 0 or reader.rate <= 0:
            raise DecodeError("audio has zero length")
        rate = working_rate(reader.rate)
        duration = reader.frames / rate  # 16 kHz length: ceil(frames * 16000 / rate) samples
        duration16 = math.ceil(reader.frames * SAMPLE_RATE / rate) / SAMPLE_RATE
        g = math.gcd(rate, SAMPLE_RATE)
        step_in, step_out = rate // g, SAMPLE_RATE // g
        margin = rate // 20  # 50 ms of context on each side for the resampling filter

        def read16k(a: int, b: int) -> torch.Tensor:
            # native window aligned to the resampler's phase, so the result equals slicing a
            # resampling of the whole file
            lo = max(0, (a * rate // SAMPLE_RATE - margin) // step_in * step_in)
            hi = min(reader.frames, b * rate // SAMPLE_RATE + margin)
            native = reader.read(lo, hi)
            y = resample(native, rate, SAMPLE_RATE)
            offset = lo // step_in * step_out
            return y[a - offset : b - offset]

        out = _clips_from_segments(read16k, duration16 if duration else 0.0, clips)
    finally:
        reader.close()
    if not torch.isfinite(out).all():  # float WAVs can hold NaN/inf (or overflow the spectrum)
        raise DecodeError("audio has invalid samples (NaN or out-of-range values)")
    return out


def working_rate(rate: int) -> int:
    """The sample rate a file is resampled from.  The resampling kernel has (16000/g) x (rate/g)
    taps, g = gcd(rate, 16000): tiny for real rates (44100: 160 x 441), gigabytes for a corrupt or
    odd header (44101 Hz: 16000 x 44101).  Such rates are snapped to the nearest 100 Hz (a pitch
    change under 0.3% above 16 kHz); rates no audio format uses are refused."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise DecodeError(f"unsupported audio sample rate ({rate} Hz)")
    g = math.gcd(rate, SAMPLE_RATE)
    if (SAMPLE_RATE // g) * (rate // g) > MAX_RESAMPLE_TAPS:
        rate = max(100, round(rate / 100) * 100)
    return rate


class _SoundfileReader:
    """WAV/FLAC/OGG/MP3 through libsndfile: exact samples, random access."""

    def __init__(self, f):
        self.f = f
        self.frames = int(f.frames)
        self.rate = int(f.samplerate)

    @classmethod
    def open(cls, path: Path):
        if _is_mpeg_audio(path):
            return None  # libsndfile's mpg123 prints warnings on stderr for damaged MP3s; PyAV is quiet
        try:
            import soundfile

            f = soundfile.SoundFile(str(path))
        except Exception:
            return None
        if f.frames <= 0 and f.samplerate > 0:
            f.close()
            raise DecodeError("audio has zero length")
        return cls(f)

    def read(self, lo: int, hi: int) -> torch.Tensor:
        try:
            self.f.seek(lo)
            data = self.f.read(hi - lo, dtype="float32", always_2d=True)
        except Exception as exc:
            raise DecodeError(f"cannot decode audio: {_one_line(exc)}") from None
        with np.errstate(over="ignore", invalid="ignore"):  # NaN/1e38 samples: refused by load_audio
            return torch.from_numpy(data.mean(axis=1))

    def close(self):
        self.f.close()


def _is_mpeg_audio(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(3)
    except OSError:
        return False
    return head == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)


class _PyAVReader:
    """Anything ffmpeg decodes (m4a/aac, mp3, opus, the audio track of a video).  Decodes the whole
    stream once, mono float32 at the native rate."""

    def __init__(self, samples: np.ndarray, rate: int):
        self.samples = samples
        self.frames = len(samples)
        self.rate = rate

    @classmethod
    def open(cls, path: Path):
        import av

        try:
            container = av.open(str(path), options=FFMPEG_INPUT_OPTIONS)
        except Exception as exc:
            raise DecodeError(f"cannot open audio: {_one_line(exc)}") from None
        try:
            if not container.streams.audio:
                raise DecodeError("no audio stream")
            stream = container.streams.audio[0]
            rate = int(stream.codec_context.sample_rate or stream.rate or 0)
            if rate <= 0:
                raise DecodeError("audio has no sample rate")
            seconds = _stream_seconds(container, stream)
            if seconds > LONG_AUDIO_SECONDS:
                reader, container = _PyAVSeekingReader(container, stream, rate, int(seconds * rate)), None
                return reader
            parts = [_mono_samples(frame) for frame in container.decode(stream)]
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"cannot decode audio: {_one_line(exc)}") from None
        finally:
            if container is not None:
                container.close()
        samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        if len(samples) == 0:
            raise DecodeError("audio has zero length")
        return cls(samples, rate)

    def read(self, lo: int, hi: int) -> torch.Tensor:
        return torch.from_numpy(self.samples[lo:hi].copy())

    def close(self):
        pass


# Longer files are read by seeking to each clip, never decoded whole: three hours at 48 kHz
# would be 2 GB of samples.  Shorter files keep the exact whole-stream decode.
LONG_AUDIO_SECONDS = 600


class _PyAVSeekingReader:
    """Random access into a long compressed stream: seek a second before the window, decode
    frames, and place their samples by timestamp."""

    def __init__(self, container, stream, rate: int, frames: int):
        self.container, self.stream = container, stream
        self.rate, self.frames = rate, frames

    def read(self, lo: int, hi: int) -> torch.Tensor:
        out = np.zeros(max(0, hi - lo), np.float32)
        time_base = self.stream.time_base
        try:
            self.container.seek(max(0, int((lo / self.rate - 1.0) / time_base)), stream=self.stream,
                                backward=True)
            for frame in self.container.decode(self.stream):
                if frame.pts is None:
                    continue
                start = int(round(frame.pts * time_base * self.rate))
                if start >= hi:
                    break
                mono = _mono_samples(frame)
                first, last = max(lo, start), min(hi, start + len(mono))
                if last > first:
                    out[first - lo:last - lo] = mono[first - start:last - start]
        except Exception as exc:
            raise DecodeError(f"cannot decode audio: {_one_line(exc)}") from None
        return torch.from_numpy(out)

    def close(self):
        self.container.close()


def _stream_seconds(container, stream) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / 1_000_000 if container.duration else 0.0


def _mono_samples(frame) -> np.ndarray:
    """One decoded audio frame as mono float32 in [-1, 1)."""
    arr = frame.to_ndarray()
    if arr.dtype.kind in "iu":  # integer PCM -> [-1, 1)
        arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max + 1)
    arr = arr.astype(np.float32, copy=False)
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        return arr.reshape(channels, -1).mean(axis=0)
    return arr.reshape(-1, channels).mean(axis=1)
