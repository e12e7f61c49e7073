"""Audio (or the sound of a video) -> ImageBind's audio input [clips, 1, 128, 204].

ImageBind's `load_and_transform_audio_data` without torchaudio or pytorchvideo: decode, mix to mono,
resample to 16 kHz (the windowed-sinc algorithm of torchaudio.functional.resample), 2 s clips placed
like ConstantClipsPerVideoSampler, per-clip mean removal, Kaldi fbank (128 mel bins, 25 ms Hann
window, 10 ms shift, htk_compat), pad/cut to 204 frames, normalised with ImageBind's mean -4.268 /
std 9.138.

Deliberate differences from the reference: stereo is mixed to mono (the reference's Kaldi fbank
reads channel 0 only); files longer than 6 s get more than the reference's 3 clips (up to
AUDIO_MAX_CLIPS, evenly spaced) to cover more of a long recording; a file shorter than one clip
yields one clip instead of several identical ones (the average is the same).

Only the samples under each clip are resampled, and long compressed files are read by seeking
(LONG_AUDIO_SECONDS), so memory stays small for hours of audio.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from recall_cli.models.base import DecodeError
from recall_cli.models.imagebind.media.common import FFMPEG_INPUT_OPTIONS, clip_starts, one_line

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
# Longer files are read by seeking to each clip, never decoded whole: three hours at 48 kHz
# would be 2 GB of samples.  Shorter files keep the exact whole-stream decode.
LONG_AUDIO_SECONDS = 600


# ------------------------------------------------------------------------------------------------
# waveform -> normalised log-mel clip
# ------------------------------------------------------------------------------------------------


def resample(
    waveform: torch.Tensor, orig: int, new: int, lowpass_filter_width: int = 6, rolloff: float = 0.99
) -> torch.Tensor:
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


def kaldi_fbank(
    waveform: torch.Tensor,
    sample_rate: int = SAMPLE_RATE,
    num_mel_bins: int = MEL_BINS,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    low_freq: float = 20.0,
    preemphasis: float = 0.97,
) -> torch.Tensor:
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


def mel_banks(
    num_bins: int, padded_window: int, sample_rate: int, low_freq: float, high_freq: float = 0.0
) -> torch.Tensor:
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


# ------------------------------------------------------------------------------------------------
# clips
# ------------------------------------------------------------------------------------------------


def audio_clip_count(duration: float) -> int:
    """Reference: 3 clips.  Longer files: one clip per 2 s, at most AUDIO_MAX_CLIPS."""
    return max(AUDIO_CLIPS, min(AUDIO_MAX_CLIPS, math.ceil(duration / AUDIO_CLIP_SECONDS)))


def audio_clips_from_waveform(waveform: torch.Tensor, clips: int | None = None) -> torch.Tensor:
    """Whole 16 kHz mono waveform [time] -> [clips, 1, 128, 204]."""
    duration = waveform.shape[-1] / SAMPLE_RATE
    return _clips_from_segments(lambda a, b: waveform[a:b], duration, clips)


def _clips_from_segments(read16k, duration: float, clips: int | None) -> torch.Tensor:
    """The clips of a waveform of `duration` seconds, each read through read16k(first, stop) (16 kHz
    sample indices), so that a file need not be resampled, or even decoded, whole."""
    n = clips or audio_clip_count(duration)
    out, seen = [], set()
    for start in clip_starts(duration, AUDIO_CLIP_SECONDS, n):
        a, b = int(start * SAMPLE_RATE), int((start + AUDIO_CLIP_SECONDS) * SAMPLE_RATE)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        out.append(melspec_clip(read16k(a, b)))
    return torch.stack(out)


# ------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------


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
            raise DecodeError(f"cannot decode audio: {one_line(exc)}") from None
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
            raise DecodeError(f"cannot open audio: {one_line(exc)}") from None
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
            raise DecodeError(f"cannot decode audio: {one_line(exc)}") from None
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
            self.container.seek(max(0, int((lo / self.rate - 1.0) / time_base)), stream=self.stream, backward=True)
            for frame in self.container.decode(self.stream):
                if frame.pts is None:
                    continue
                start = int(round(frame.pts * time_base * self.rate))
                if start >= hi:
                    break
                mono = _mono_samples(frame)
                first, last = max(lo, start), min(hi, start + len(mono))
                if last > first:
                    out[first - lo : last - lo] = mono[first - start : last - start]
        except Exception as exc:
            raise DecodeError(f"cannot decode audio: {one_line(exc)}") from None
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
