"""Decoding and preprocessing of images, video and audio into ImageBind's input tensors, one module
per medium.

No torchvision/torchaudio/pytorchvideo/decord: Pillow (+ pillow-heif), PyAV and soundfile decode,
and the transforms are re-implemented to match ImageBind's `data.py`:

    image.py   file -> [3, 224, 224]
    video.py   file -> [clips * 3, 3, 2, 224, 224]
    audio.py   file -> [clips, 1, 128, 204]
    common.py  what they share: CLIP normalisation, clip placement, ffmpeg's limits, error wording

Nothing is re-exported here: callers import the medium's own module, so that a test which patches
a limit (say image.MAX_IMAGE_PIXELS) patches the name the decoder actually reads.
"""
