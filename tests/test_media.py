"""Decoding and preprocessing (recall_cli.models.imagebind.media) against hand-computed expectations, an independent
numpy transcription of Kaldi's fbank, and the imagebind-test model end to end on real encoded media."""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from recall_cli.models import load_model
from recall_cli.models.base import DecodeError
from recall_cli.models.imagebind.media import audio, common, image, video

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imagebind_reference import kaldi_fbank_numpy

MEAN = np.array(common.CLIP_MEAN)[:, None, None]
STD = np.array(common.CLIP_STD)[:, None, None]


def normalised(rgb01: np.ndarray) -> np.ndarray:
    return (rgb01 - MEAN) / STD


# ------------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------------


def test_image_crop_is_exact_when_short_side_is_224(tmp_path):
    w = np.arange(448, dtype=np.uint8)[None, :].repeat(224, 0)  # horizontal gradient 0..191,0..
    rgb = np.stack([w, 255 - w, np.full_like(w, 7)], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "g.png")
    x = image.load_image(tmp_path / "g.png").numpy()
    expected = normalised(rgb[:, 112:336].transpose(2, 0, 1) / 255.0)  # centre crop, no resize
    assert x.shape == (3, 224, 224)
    assert np.abs(x - expected).max() < 1e-5


def test_image_resize_shorter_side_bicubic_and_centre_crop(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (150, 400, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "r.png")
    x = image.load_image(tmp_path / "r.png").numpy()
    # torchvision Resize(224, BICUBIC) on PIL: (int(224 * 400 / 150), 224) = (597, 224); crop left 186
    resized = np.asarray(Image.fromarray(rgb).resize((597, 224), Image.BICUBIC), dtype=np.float64)
    expected = normalised(resized[:, 186:410].transpose(2, 0, 1) / 255.0)
    assert np.abs(x - expected).max() < 1e-5
    const = np.full((300, 500, 3), (10, 128, 250), np.uint8)
    Image.fromarray(const).save(tmp_path / "c.jpg", quality=100)
    y = image.load_image(tmp_path / "c.jpg").numpy()
    target = normalised(np.array([10, 128, 250])[:, None, None] / 255.0)
    assert np.abs(y - target).max() < 3 / 255 / 0.26  # JPEG rounding only


def test_image_exif_orientation_is_applied(tmp_path):
    rgb = np.zeros((224, 448, 3), np.uint8)
    rgb[:, :224] = (255, 0, 0)  # left red, right blue
    rgb[:, 224:] = (0, 0, 255)
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "o.jpg", exif=exif, quality=100)
    x = image.load_image(tmp_path / "o.jpg")
    # displayed: portrait 224x448, red on top, blue below; centre crop rows 112..336
    red = torch.tensor(normalised(np.array([1.0, 0, 0])[:, None, None]), dtype=torch.float32).reshape(3)
    blue = torch.tensor(normalised(np.array([0, 0, 1.0])[:, None, None]), dtype=torch.float32).reshape(3)
    assert torch.allclose(x[:, 50, 112], red, atol=0.1)
    assert torch.allclose(x[:, 170, 112], blue, atol=0.1)


def test_a_camera_size_jpeg_is_decoded_at_half_size_and_resized_as_the_reference(tmp_path):
    """A 12 MP JPEG is decoded at half size inside the DCT and reduced before the bicubic resize
    (a quarter of the CPU of decoding and resampling it whole); ImageBind's input stays within a
    grey level or so of the reference's one-step resize of the whole photo, fine detail included
    (decoded at 1/8, or resized with a gap of 1.1, it is off by 13 and 32 levels at worst)."""
    from benchmarks.bench_photo_decode import detailed_photo  # the benchmark's photo with fine detail

    detailed_photo(tmp_path / "camera.jpg")

    decoded, whole = image.open_image(tmp_path / "camera.jpg")
    assert decoded.size == (2000, 1500) and not whole
    ours = image.load_image(tmp_path / "camera.jpg").numpy()
    with Image.open(tmp_path / "camera.jpg") as full:
        resized = full.convert("RGB").resize((298, 224), Image.BICUBIC)  # torchvision's Resize(224)
    reference = normalised(np.asarray(resized.crop((37, 0, 261, 224)), dtype=np.float64).transpose(2, 0, 1) / 255)
    grey_levels = np.abs(ours - reference) * STD * 255
    assert grey_levels.mean() < 0.5 and grey_levels.max() <= 6


def test_a_photo_under_twice_the_decode_size_is_decoded_whole(tmp_path):
    Image.fromarray(np.full((1200, 1600, 3), 128, dtype=np.uint8)).save(tmp_path / "small.jpg")
    decoded, whole = image.open_image(tmp_path / "small.jpg")
    assert whole and decoded.size == (1600, 1200)


def test_image_pixels_are_those_of_turning_then_converting(tmp_path):
    """open_image turns in place and converts only what is not RGB: the same pixels as the
    reference's exif_transpose then convert("RGB"), for every orientation and mode."""
    from PIL import ImageOps

    rng = np.random.default_rng(1)
    base = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    paths = []
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        paths.append(tmp_path / f"o{orientation}.jpg")
        base.save(paths[-1], exif=exif, quality=95)
    for name, mode in (("grey.png", "L"), ("palette.png", "P"), ("alpha.png", "RGBA"), ("cmyk.jpg", "CMYK")):
        paths.append(tmp_path / name)
        base.convert(mode).save(paths[-1])
    for path in paths:
        with Image.open(path) as reference:
            expected = np.asarray(ImageOps.exif_transpose(reference).convert("RGB"))
        decoded, whole = image.open_image(path)
        assert whole and decoded.mode == "RGB" and np.array_equal(np.asarray(decoded), expected), path.name


def test_image_heic(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    if not pillow_heif.libheif_info().get("encoders"):
        pytest.skip("no HEIF encoder")
    pillow_heif.register_heif_opener()
    Image.fromarray(np.full((240, 320, 3), 90, np.uint8)).save(tmp_path / "p.heic", quality=95)
    assert image.load_image(tmp_path / "p.heic").shape == (3, 224, 224)


def test_image_decode_errors(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((500, 500, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DecodeError, match="too large"):
        image.load_image(tmp_path / "big.png")
    monkeypatch.undo()
    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError, match="cannot decode image"):
        image.load_image(tmp_path / "t.jpg")
    (tmp_path / "x.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DecodeError):
        image.load_image(tmp_path / "x.jpg")


# ------------------------------------------------------------------------------------------------
# video
# ------------------------------------------------------------------------------------------------


def frame_code(i: int) -> tuple[int, int]:
    return (i % 16) * 16, (i // 16) * 12  # frame index written into the R and B channels


def make_video(path, seconds, fps=10, w=96, h=64, codec="libx264", pattern=None, audio=False):
    c = av.open(str(path), "w")
    s = c.add_stream(codec, rate=fps)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    for i in range(int(round(seconds * fps))):
        if pattern is None:
            r, b = frame_code(i)
            arr = np.zeros((h, w, 3), np.uint8)
            arr[..., 0], arr[..., 1], arr[..., 2] = r, 128, b
        else:
            arr = pattern
        for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()


def decoded_index(clip_frame: torch.Tensor) -> int:
    """Invert frame_code from a normalised [3, H, W] frame."""
    rgb = clip_frame * torch.tensor(common.CLIP_STD)[:, None, None] + torch.tensor(common.CLIP_MEAN)[:, None, None]
    r, b = (rgb[0].mean() * 255).item(), (rgb[2].mean() * 255).item()
    return int(round(r / 16)) + 16 * int(round(b / 12))


def test_clip_sampling_matches_constant_clips_per_video():
    assert common.clip_starts(10.0, 2, 5) == [Fraction(0), Fraction(2), Fraction(4), Fraction(6), Fraction(8)]
    assert common.clip_starts(1.5, 2, 3) == [0, 0, 0]
    # decord frame range [ceil(fps*s), ceil(fps*e)), first and last frame; duplicates dropped
    assert video.video_frame_plan(3.0, 10) == [[0, 19], [3, 22], [5, 24], [8, 27], [10, 29]]
    assert video.video_frame_plan(1.0, 10) == [[0, 9]]


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_video_frames_and_clips(tmp_path, codec):
    path = tmp_path / "v.mp4"
    make_video(path, 3.0, codec=codec)
    x = video.load_video(path)
    assert x.shape == (15, 3, 2, 224, 224)  # 5 clips x 3 spatial crops
    plan = video.video_frame_plan(3.0, 10)
    for c, frames in enumerate(plan):
        for crop in range(3):
            got = [decoded_index(x[3 * c + crop, :, t]) for t in range(2)]
            assert got == frames, (c, crop, got, frames)


def test_video_spatial_crops_and_scaling(tmp_path):
    pattern = np.zeros((112, 224, 3), np.uint8)
    pattern[:, 112:] = 255  # left half black, right half white
    make_video(tmp_path / "w.mp4", 1.0, w=224, h=112, pattern=pattern)
    x = video.load_video(tmp_path / "w.mp4")  # shorter than a clip: one clip, 3 crops
    assert x.shape == (3, 3, 2, 224, 224)
    rgb = x * torch.tensor(common.CLIP_STD)[:, None, None, None] + torch.tensor(common.CLIP_MEAN)[:, None, None, None]
    # ShortSideScale(224): 112x224 -> 224x448; crops at x = 0, 112, 224
    means = rgb.mean(dim=(1, 2, 3, 4)).tolist()
    assert means[0] == pytest.approx(0.0, abs=0.03)
    assert means[1] == pytest.approx(0.5, abs=0.03)
    assert means[2] == pytest.approx(1.0, abs=0.03)


def test_long_video_seeks_to_the_right_frames(tmp_path):
    path = tmp_path / "long.mp4"
    make_video(path, 60.0, fps=5, w=32, h=32)
    x = video.load_video(path)
    plan = video.video_frame_plan(60.0, 5)
    assert x.shape == (15, 3, 2, 224, 224)
    for c, frames in enumerate(plan):
        assert [decoded_index(x[3 * c + 1, :, t]) for t in range(2)] == frames


def test_video_decode_errors(tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    with pytest.raises(DecodeError, match="no video stream"):
        video.load_video(wav)
    make_video(tmp_path / "v.mp4", 2.0)
    data = (tmp_path / "v.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])
    with pytest.raises(DecodeError):
        video.load_video(tmp_path / "cut.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(DecodeError):
        video.load_video(tmp_path / "junk.mp4")


# ------------------------------------------------------------------------------------------------
# audio
# ------------------------------------------------------------------------------------------------


def test_kaldi_fbank_matches_numpy_transcription():
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(32000)).astype(np.float32)
    ours = audio.kaldi_fbank(torch.from_numpy(wave)).numpy()
    expected = kaldi_fbank_numpy(wave)
    assert ours.shape == expected.shape == (198, 128)
    assert np.abs(ours - expected).max() < 2e-3  # float32 vs float64 (log-mel units)
    quiet = (1e-4 * rng.standard_normal(5000)).astype(np.float32)
    assert np.abs(audio.kaldi_fbank(torch.from_numpy(quiet)).numpy() - kaldi_fbank_numpy(quiet)).max() < 2e-3


def test_melspec_clip_pads_and_normalises():
    clip = torch.randn(16000, generator=torch.Generator().manual_seed(0)) * 0.1  # 1 s: 98 frames
    spec = audio.melspec_clip(clip)
    assert spec.shape == (1, 128, 204)
    pad = (0 - audio.AUDIO_MEAN) / audio.AUDIO_STD
    assert torch.allclose(spec[0, :, 98:], torch.full((128, 106), pad), atol=1e-6)
    expected = (kaldi_fbank_numpy((clip - clip.mean()).numpy()).T - audio.AUDIO_MEAN) / audio.AUDIO_STD
    assert np.abs(spec[0, :, :98].numpy() - expected).max() < 1e-3


def test_resample_sine():
    sr = 44100
    t = np.arange(sr) / sr
    y = audio.resample(torch.from_numpy(np.sin(2 * np.pi * 1000 * t).astype(np.float32)), sr, 16000)
    assert y.shape[-1] == 16000
    ref = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    assert np.abs(y.numpy()[200:-200] - ref[200:-200]).max() < 2e-3


def test_audio_clip_counts():
    assert [audio.audio_clip_count(d) for d in (0.5, 5, 10, 100, 3600)] == [3, 3, 5, 8, 8]


def write_tone(path, seconds, sr=44100, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * 330 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.7 * t))).astype(np.float32)
    sf.write(path, np.stack([x] * channels, 1) if channels > 1 else x, sr)
    return x


def test_audio_wav_flac_stereo_and_windows(tmp_path):
    x = write_tone(tmp_path / "a.wav", 7.3)
    write_tone(tmp_path / "a.flac", 7.3)
    write_tone(tmp_path / "s.wav", 7.3, channels=2)
    a = audio.load_audio(tmp_path / "a.wav")
    assert a.shape == (4, 1, 128, 204)
    # clips cut from a resampling of the whole file == clips from the windowed reads
    x, _ = sf.read(tmp_path / "a.wav", dtype="float32")  # 16-bit PCM as stored
    whole = audio.audio_clips_from_waveform(audio.resample(torch.from_numpy(x), 44100, 16000))
    assert torch.equal(a, whole)
    flac = audio.load_audio(tmp_path / "a.flac")  # libsndfile rounds float->PCM differently for FLAC
    assert torch.nn.functional.cosine_similarity(flac.flatten(1), a.flatten(1)).min() > 0.999
    assert torch.allclose(audio.load_audio(tmp_path / "s.wav"), a, atol=1e-5)


def aac_file(path, x, sr=44100):
    c = av.open(str(path), "w")
    s = c.add_stream("aac", rate=sr)
    s.layout = "mono"
    for i in range(0, len(x), 1024):
        frame = av.AudioFrame.from_ndarray(x[None, i : i + 1024], format="flt", layout="mono")
        frame.sample_rate, frame.pts = sr, i
        for p in s.encode(frame):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()


def test_audio_m4a_and_short(tmp_path):
    x = write_tone(tmp_path / "a.wav", 3.0)
    aac_file(tmp_path / "a.m4a", x)
    m = audio.load_audio(tmp_path / "a.m4a")
    assert m.shape == (3, 1, 128, 204)
    w = audio.load_audio(tmp_path / "a.wav")
    cos = torch.nn.functional.cosine_similarity(m.flatten(1), w.flatten(1)).min()
    assert cos > 0.9  # lossy codec, same sound
    write_tone(tmp_path / "short.wav", 1.0)
    assert audio.load_audio(tmp_path / "short.wav").shape == (1, 1, 128, 204)


def test_audio_decode_errors(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(DecodeError, match="zero length"):
        audio.load_audio(tmp_path / "empty.wav")
    sf.write(tmp_path / "tiny.wav", np.zeros(100, np.float32), 16000)
    with pytest.raises(DecodeError, match="too short"):
        audio.load_audio(tmp_path / "tiny.wav")
    (tmp_path / "junk.mp3").write_bytes(b"\x01\x02" * 500)
    with pytest.raises(DecodeError):
        audio.load_audio(tmp_path / "junk.mp3")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "img.png")
    with pytest.raises(DecodeError):
        audio.load_audio(tmp_path / "img.png")


# ------------------------------------------------------------------------------------------------
# the whole pipeline on imagebind-test
# ------------------------------------------------------------------------------------------------


def test_imagebind_test_embeds_real_files(tmp_path, monkeypatch):
    model = load_model("imagebind-test", device="cpu")
    Image.fromarray(np.full((240, 320, 3), 90, np.uint8)).save(tmp_path / "p.jpg")
    make_video(tmp_path / "v.mp4", 3.0)
    write_tone(tmp_path / "a.wav", 5.0)
    for path, modality in ((tmp_path / "p.jpg", "image"), (tmp_path / "v.mp4", "video"), (tmp_path / "a.wav", "audio")):
        units = model.file_units(path, modality)
        assert len(units) == 1 and units[0].modality == modality
        emb = model.encode(modality, [units[0].data, units[0].data])
        assert emb.shape == (2, 64)
        assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
        assert torch.allclose(emb[0], emb[1], atol=1e-6)

    import recall_cli.models.textextract as textextract

    words = " ".join(f"word{i}" for i in range(400))
    monkeypatch.setattr(textextract, "extract_text", lambda path: words)
    (tmp_path / "n.txt").write_text(words)
    units = model.file_units(tmp_path / "n.txt", "text")
    assert len(units) > 1 and [u.chunk for u in units] == list(range(len(units)))
    assert all(int((u.data > 0).sum()) <= 77 for u in units)
    assert " ".join(u.snippet for u in units) == words
    assert model.encode("text", [u.data for u in units]).shape == (len(units), 64)
    monkeypatch.setattr(textextract, "extract_text", lambda path: "a " * 10_000)
    assert len(model.file_units(tmp_path / "n.txt", "text")) == 64
