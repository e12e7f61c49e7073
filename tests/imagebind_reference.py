"""Test oracle: the reference ImageBind model code (PyPI `imagebind-unofficial`), loaded from its
installed files without running the package __init__ (which needs torchvision/torchaudio).

timm is not installed (it would replace the CPU torch); the two names the model code takes from it,
DropPath and trunc_normal_, are provided by a stand-in module that exists only while the reference
modules are imported.  Nothing here is used by the product.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn


class _DropPath(nn.Module):  # eval-mode identity; the reference only uses it when drop_path > 0
    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return x


def _trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
    return nn.init.trunc_normal_(  # looked up at call time (skip_init patches it)
        tensor, mean=mean, std=std, a=a, b=b
    )


@lru_cache(maxsize=1)
def reference():
    """A namespace with the reference modules: imagebind_model, multimodal_preprocessors, transformer."""
    spec = importlib.util.find_spec("imagebind")
    if spec is None or not spec.submodule_search_locations:
        import pytest

        pytest.skip("imagebind-unofficial (reference code) is not installed")
    root = Path(list(spec.submodule_search_locations)[0])
    saved = {name: sys.modules.get(name) for name in ("timm", "timm.layers", "imagebind", "imagebind.models")}
    timm = types.ModuleType("timm")
    layers = types.ModuleType("timm.layers")
    layers.DropPath, layers.trunc_normal_ = _DropPath, _trunc_normal_
    timm.layers = layers
    pkg = types.ModuleType("imagebind")
    pkg.__path__ = [str(root)]
    models = types.ModuleType("imagebind.models")
    models.__path__ = [str(root / "models")]
    pkg.models = models
    sys.modules.update({"timm": timm, "timm.layers": layers, "imagebind": pkg, "imagebind.models": models})
    try:
        loaded = {}
        for name in ("helpers", "transformer", "multimodal_preprocessors", "imagebind_model"):
            loaded[name] = importlib.import_module(f"imagebind.models.{name}")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for name in list(sys.modules):
            if name.startswith("imagebind.models."):
                sys.modules.pop(name)
    ns = types.SimpleNamespace(**loaded, root=root)
    ns.bpe_path = str(root / "bpe" / "bpe_simple_vocab_16e6.txt.gz")
    return ns


SMALL = {  # reference ImageBindModel arguments matching recall's TEST_CONFIG (tiny extras)
    "out_embed_dim": 64,
    "vision_embed_dim": 64,
    "vision_num_blocks": 2,
    "vision_num_heads": 4,
    "audio_embed_dim": 64,
    "audio_num_blocks": 2,
    "audio_num_heads": 4,
    "text_embed_dim": 64,
    "text_num_blocks": 2,
    "text_num_heads": 4,
    "depth_embed_dim": 16,
    "depth_num_blocks": 1,
    "depth_num_heads": 2,
    "thermal_embed_dim": 16,
    "thermal_num_blocks": 1,
    "thermal_num_heads": 2,
    "imu_embed_dim": 16,
    "imu_num_blocks": 1,
    "imu_num_heads": 2,
}


def small_reference_model(seed: int = 0, **overrides):
    """Reference ImageBindModel, small widths, random weights, eval mode.  Biases and LayerNorm
    parameters are randomised too (the reference initialises them to constants) so that a wrong
    mapping of any tensor shows up."""
    ref = reference()
    torch.manual_seed(seed)
    model = ref.imagebind_model.ImageBindModel(**{**SMALL, **overrides}).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if (
                name.endswith("bias")
                or ".norm" in name
                or "norm_layer" in name
                or "pre_transformer_layer" in name
                or name.startswith("modality_heads")
                and p.ndim == 1
            ):
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
            if "bias_k" in name or "bias_v" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


@contextlib.contextmanager
def skip_init():
    """Build torch modules without running their initialisers (weights stay torch.empty: no time,
    and no resident memory until written)."""
    names = (
        "uniform_",
        "normal_",
        "trunc_normal_",
        "constant_",
        "ones_",
        "zeros_",
        "xavier_uniform_",
        "xavier_normal_",
        "kaiming_uniform_",
        "kaiming_normal_",
    )
    saved = {n: getattr(nn.init, n) for n in names}
    for n in names:
        setattr(nn.init, n, lambda tensor, *a, **k: tensor)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)


def reference_huge_uninitialised():
    """The reference imagebind_huge() model with uninitialised weights (~2 s)."""
    ref = reference()
    with skip_init():
        return ref.imagebind_model.imagebind_huge(pretrained=False).eval()


def reference_tokenizer():
    ref = reference()
    return ref.multimodal_preprocessors.SimpleTokenizer(bpe_path=ref.bpe_path)


# ------------------------------------------------------------------------------------------------
# Kaldi fbank: an independent numpy (float64) transcription of torchaudio.compliance.kaldi.fbank
# for ImageBind's arguments, written from the Kaldi/torchaudio algorithm description.
# ------------------------------------------------------------------------------------------------


def kaldi_fbank_numpy(wave: np.ndarray, sr: int = 16000, num_mel_bins: int = 128) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    shift, size = int(sr * 0.010), int(sr * 0.025)
    padded = 1
    while padded < size:
        padded *= 2
    if len(wave) < size:
        return np.zeros((0, num_mel_bins))
    n = 1 + (len(wave) - size) // shift
    frames = np.stack([wave[i * shift : i * shift + size] for i in range(n)])
    frames = frames - frames.mean(axis=1, keepdims=True)  # remove_dc_offset
    prev = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)  # replicate-pad preemphasis
    frames = frames - 0.97 * prev
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(size) / (size - 1))  # symmetric Hann
    frames = frames * window
    frames = np.pad(frames, ((0, 0), (0, padded - size)))
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2

    # mel banks
    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    low, high = mel(20.0), mel(sr / 2)
    delta = (high - low) / (num_mel_bins + 1)
    fft_freqs = mel(sr / padded * np.arange(padded // 2))
    banks = np.zeros((num_mel_bins, padded // 2 + 1))
    for m in range(num_mel_bins):
        left, center, right = low + m * delta, low + (m + 1) * delta, low + (m + 2) * delta
        up = (fft_freqs - left) / (center - left)
        down = (right - fft_freqs) / (right - center)
        banks[m, : padded // 2] = np.maximum(0.0, np.minimum(up, down))
    energies = power @ banks.T
    return np.log(np.maximum(energies, np.finfo(np.float32).eps))
