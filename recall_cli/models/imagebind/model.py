"""ImageBind (Huge) as a layered encoder: image, video, audio and text in one embedding space.

Longer than 400 lines because it is one architecture (configuration, block, stems, trunk, encoder)
meant to be read top to bottom in one file, as nanoGPT's model.py is.

A clean re-implementation of the three ImageBind trunks a personal collection needs (vision for
images and video, audio, text; depth/thermal/IMU are left out) that loads the official
`imagebind_huge.pth` weights unchanged and gives the reference code's embeddings:

    stem (patchify / token embedding + cls + positional embedding)  -> tokenize()
    [pre-transformer LayerNorm, vision only]                          -> tokenize()
    N pre-norm transformer blocks                                     -> block(i)
    final LayerNorm, pick the cls (media) or EOT (text) token,
    linear projection, L2 normalisation                               -> head()

Differences from the reference code, all numerically neutral:
  * attention is four separate nn.Linear layers (q, k, v, out; LoRA can target each) driven through
    F.scaled_dot_product_attention; the official fused `in_proj_weight` is split on conversion;
  * modules are built with random initialisation skipped and filled straight from the (mmap'ed)
    weights, so no time is spent on random initialisation;
  * each trunk is loaded lazily from its own safetensors file (see weights.py), so a text query
    never touches the 2.5 GB vision trunk;
  * heads return unit vectors.  The reference averages *post-processed* clip embeddings (vision:
    normalised; audio: normalised x 20) and scales text by the logit scale; after the final
    normalisation in LayeredEncoder.embed these constants cancel, so the stored vectors equal the
    reference outputs normalised.

Neighbours: inputs are decoded by media/ (image, video, audio) and tokenizer.py (text); the
official checkpoint's names are mapped to ours by checkpoint.py; factory.py builds the encoder with
its weights from weights.py.  This module imports none of them: they import it (weights.py through
checkpoint.py), so the dependency runs one way.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from recall_cli.modalities import MODALITIES
from recall_cli.models.base import Batch, DecodeError, LayeredEncoder, Unit, skip_weight_init
from recall_cli.models.imagebind.tokenizer import chunk_text, tokenize_text

# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrunkConfig:
    dim: int
    depth: int
    heads: int
    kv_bias_tokens: bool = False  # audio: learned bias_k / bias_v appended to keys and values
    pre_norm: bool = False  # vision: a LayerNorm before block 0


@dataclass(frozen=True)
class ImageBindConfig:
    out_dim: int = 1024
    vision: TrunkConfig = field(default_factory=lambda: TrunkConfig(1280, 32, 16, pre_norm=True))
    text: TrunkConfig = field(default_factory=lambda: TrunkConfig(1024, 24, 16))
    audio: TrunkConfig = field(default_factory=lambda: TrunkConfig(768, 12, 12, kv_bias_tokens=True))
    image_size: int = 224
    patch: tuple[int, int, int] = (2, 14, 14)  # (time, height, width) of the vision Conv3d
    video_frames: int = 2  # frames per clip; an image is repeated to this many frames
    mel_bins: int = 128
    audio_frames: int = 204
    audio_kernel: int = 16
    audio_stride: int = 10
    context_length: int = 77
    vocab_size: int = 49408

    def trunk(self, kind: str) -> TrunkConfig:
        return getattr(self, kind)


HUGE_CONFIG = ImageBindConfig()
# Tests only: same input formats and structure, tiny widths.  Random weights, fixed seed.
TEST_CONFIG = ImageBindConfig(
    out_dim=64,
    vision=TrunkConfig(64, 2, 4, pre_norm=True),
    text=TrunkConfig(64, 2, 4),
    audio=TrunkConfig(64, 2, 4, kv_bias_tokens=True),
)
TEST_SEED = 0

TRUNKS = ("vision", "text", "audio")
TRUNK_OF = {"image": "vision", "video": "vision", "audio": "audio", "text": "text"}


# ------------------------------------------------------------------------------------------------
# transformer block
# ------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections (same maths as the reference's
    nn.MultiheadAttention, including add_bias_kv: one learned key/value token appended)."""

    def __init__(self, dim: int, heads: int, kv_bias_tokens: bool):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        if kv_bias_tokens:
            self.bias_k = nn.Parameter(torch.empty(1, 1, dim))
            self.bias_v = nn.Parameter(torch.empty(1, 1, dim))
        else:
            self.bias_k = self.bias_v = None

    def forward(self, x, causal: bool = False, key_mask=None):
        B, T, D = x.shape
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(B, 1, D)], dim=1)
            v = torch.cat([v, self.bias_v.expand(B, 1, D)], dim=1)
            if key_mask is not None:
                key_mask = F.pad(key_mask, (0, 1), value=True)

        def heads(t):
            return t.view(B, t.shape[1], self.heads, D // self.heads).transpose(1, 2)

        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=attn_mask, is_causal=causal)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (reference: BlockWithMasking, no layer scale, eval mode)."""

    def __init__(self, cfg: TrunkConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.attn = Attention(cfg.dim, cfg.heads, cfg.kv_bias_tokens)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.mlp = MLP(cfg.dim)

    def forward(self, x, causal: bool = False, key_mask=None):
        x = x + self.attn(self.norm1(x), causal=causal, key_mask=key_mask)
        return x + self.mlp(self.norm2(x))


# ------------------------------------------------------------------------------------------------
# stems: raw input -> tokens (reference: modality_preprocessors)
# ------------------------------------------------------------------------------------------------


class VisionStem(nn.Module):
    """[B,3,H,W] images (repeated to 2 frames) or [B,3,T,H,W] clips -> cls + 16x16 patch tokens."""

    def __init__(self, cfg: ImageBindConfig):
        super().__init__()
        dim = cfg.vision.dim
        self.frames = cfg.video_frames
        self.patch = nn.Conv3d(3, dim, kernel_size=cfg.patch, stride=cfg.patch, bias=False)
        grid = (cfg.video_frames // cfg.patch[0]) * (cfg.image_size // cfg.patch[1]) * (cfg.image_size // cfg.patch[2])
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.empty(1, grid + 1, dim))

    def forward(self, x):
        if x.ndim == 4:
            x = x.unsqueeze(2)
        if x.shape[2] == 1:  # reference PadIm2Video(pad_type="repeat")
            x = x.expand(-1, -1, self.frames, -1, -1)
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed


class AudioStem(nn.Module):
    """[B,1,128,204] log-mel clips -> cls + 12x19 patch tokens (16x16 patches, stride 10)."""

    def __init__(self, cfg: ImageBindConfig):
        super().__init__()
        dim = cfg.audio.dim
        self.patch = nn.Conv2d(1, dim, kernel_size=cfg.audio_kernel, stride=cfg.audio_stride, bias=False)
        self.norm = nn.LayerNorm(dim)  # eps 1e-5, as the reference's stem norm
        grid = ((cfg.mel_bins - cfg.audio_kernel) // cfg.audio_stride + 1) * (
            (cfg.audio_frames - cfg.audio_kernel) // cfg.audio_stride + 1
        )
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.empty(1, grid + 1, dim))

    def forward(self, x):
        x = self.norm(self.patch(x).flatten(2).transpose(1, 2))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed


class TextStem(nn.Module):
    """[B,77] BPE ids -> token + positional embeddings."""

    def __init__(self, cfg: ImageBindConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text.dim)
        self.pos_embed = nn.Parameter(torch.empty(1, cfg.context_length, cfg.text.dim))

    def forward(self, ids):
        return self.token_embedding(ids) + self.pos_embed


STEMS = {"vision": VisionStem, "audio": AudioStem, "text": TextStem}


class Trunk(nn.Module):
    """Stem, blocks and head of one ImageBind trunk ("vision", "audio" or "text")."""

    def __init__(self, kind: str, cfg: ImageBindConfig):
        super().__init__()
        tc = cfg.trunk(kind)
        self.kind = kind
        self.stem = STEMS[kind](cfg)
        self.pre_norm = nn.LayerNorm(tc.dim, eps=1e-6) if tc.pre_norm else None
        self.blocks = nn.ModuleList(Block(tc) for _ in range(tc.depth))
        self.head_norm = nn.LayerNorm(tc.dim, eps=1e-6)
        self.head_proj = nn.Linear(tc.dim, cfg.out_dim, bias=False)
        if kind != "vision":  # kept so the checkpoint loads strictly; cancels after normalisation
            self.register_buffer("log_logit_scale", torch.empty(()))

    def tokens(self, x):
        x = self.stem(x)
        return self.pre_norm(x) if self.pre_norm is not None else x

    def run_block(self, index: int, x, mask=None):
        if self.kind == "text":  # causal attention; padding sits after EOT, so it is never attended
            return self.blocks[index](x, causal=True)
        key_mask = None if mask is None or bool(mask.all()) else mask
        return self.blocks[index](x, key_mask=key_mask)

    def head(self, x, mask):
        if self.kind == "text":  # the EOT token: last real position
            x = x[torch.arange(x.shape[0], device=x.device), mask.sum(dim=1) - 1]
        else:  # the cls token
            x = x[:, 0]
        return F.normalize(self.head_proj(self.head_norm(x)).float(), dim=-1)


def build_trunk(
    kind: str, cfg: ImageBindConfig, state_dict=None, *, seed: int | None = None, device=None, dtype=None
) -> Trunk:
    """A trunk in eval mode.  With `state_dict` its tensors are used as they are (strict, no random
    initialisation, mmap'ed tensors stay mmap'ed); otherwise deterministic random weights."""
    with skip_weight_init():  # not the meta device: initialising meta tensors imports torch._dynamo (~1 s)
        trunk = Trunk(kind, cfg)
    if state_dict is not None:
        trunk.load_state_dict(state_dict, strict=True, assign=True)
    else:
        init_random_(trunk, kind, seed or 0)
    trunk.eval().requires_grad_(False)
    if device is not None or dtype is not None:
        trunk.to(device=device, dtype=dtype)
    return trunk


@torch.no_grad()
def init_random_(trunk: Trunk, kind: str, seed: int) -> None:
    """Deterministic random weights (std 0.02 normal; LayerNorms identity; biases zero)."""
    gen = torch.Generator().manual_seed(seed * 1000 + TRUNKS.index(kind))
    for name, tensor in sorted(trunk.state_dict(keep_vars=True).items()):
        if name == "log_logit_scale":
            tensor.fill_(math.log(1 / 0.07) if kind == "text" else math.log(20.0))
        elif "norm" in name and name.endswith("weight"):
            tensor.fill_(1.0)
        elif name.endswith("bias"):
            tensor.zero_()
        else:
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.02)


# ------------------------------------------------------------------------------------------------
# the layered encoder
# ------------------------------------------------------------------------------------------------

TrunkSource = Callable[[str], "dict[str, Any] | None"]  # kind -> state dict, or None for random


class ImageBindEncoder(LayeredEncoder):
    modalities = MODALITIES

    def __init__(
        self, cfg: ImageBindConfig, name: str, version: str, device, dtype, source: TrunkSource, seed: int = 0
    ):
        self.cfg = cfg
        self.name = name
        self.version = version
        self.dim = cfg.out_dim
        self.device = device
        self.dtype = dtype
        self._source = source
        self._seed = seed
        self._trunks: dict[str, Trunk] = {}
        self._lock = threading.Lock()

    # --- trunks, loaded on first use ------------------------------------------------------
    def trunk(self, modality: str) -> Trunk:
        kind = TRUNK_OF.get(modality, modality)
        if kind not in self._trunks:
            with self._lock:
                if kind not in self._trunks:
                    self._trunks[kind] = build_trunk(
                        kind, self.cfg, self._source(kind), seed=self._seed, device=self.device, dtype=self.dtype
                    )
        return self._trunks[kind]

    def depth(self, modality: str) -> int:
        return self.cfg.trunk(TRUNK_OF[modality]).depth

    # --- decoding -------------------------------------------------------------------------
    def file_units(self, path: Path, modality: str) -> list[Unit]:
        from recall_cli.models.imagebind.media import audio, image, video

        path = Path(path)
        if modality == "text":
            from recall_cli.models.textextract import extract_text

            chunks = chunk_text(extract_text(path))
            if not chunks:
                raise DecodeError("no text found")
            return [Unit("text", tokenize_text(c), snippet=c, chunk=i) for i, c in enumerate(chunks)]
        if modality == "image":
            return [Unit("image", image.load_image(path))]
        if modality == "video":
            return [Unit("video", video.load_video(path))]
        if modality == "audio":
            return [Unit("audio", audio.load_audio(path))]
        raise DecodeError(f"{self.name} cannot embed {modality}")

    def text_unit(self, text: str) -> Unit:
        return Unit("text", tokenize_text(text), snippet=text)

    # --- layered steps --------------------------------------------------------------------
    def tokenize(self, modality: str, data: list[Any]) -> Batch:
        trunk = self.trunk(modality)
        if modality == "text":
            ids = torch.stack(
                [tokenize_text(d) if isinstance(d, str) else torch.as_tensor(d).reshape(-1) for d in data]
            ).to(self.device)
            eot = ids.argmax(dim=-1)  # reference: the EOT id is the largest id; first occurrence
            mask = torch.arange(ids.shape[1], device=self.device)[None, :] <= eot[:, None]
            owner = torch.arange(len(data), device=self.device)
            with torch.no_grad():
                hidden = trunk.tokens(ids)
            return Batch("text", hidden, mask, owner, len(data))
        if modality == "image":
            x = torch.stack([torch.as_tensor(d).reshape(3, *d.shape[-2:]) for d in data])
            counts = [1] * len(data)
        elif modality in ("video", "audio"):
            x = torch.cat([torch.as_tensor(d) for d in data])
            counts = [int(d.shape[0]) for d in data]
        else:
            raise ValueError(f"unknown modality {modality!r}")
        owner = torch.repeat_interleave(torch.arange(len(data)), torch.tensor(counts)).to(self.device)
        with torch.no_grad():
            hidden = trunk.tokens(x.to(self.device, self.dtype))
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=self.device)
        return Batch(modality, hidden, mask, owner, len(data))

    def block(self, modality: str, index: int, hidden, mask):
        return self.trunk(modality).run_block(index, hidden, mask)

    def lora_targets(self, modality: str, index: int):
        prefix = f"blocks.{index}."
        return self.trunk(modality), [
            prefix + name for name in ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.fc1", "mlp.fc2")
        ]

    def head(self, modality: str, hidden, mask, exit_block: int):
        return self.trunk(modality).head(hidden, mask)

    # --- sizing ---------------------------------------------------------------------------
    def tokens_per_sequence(self, modality: str) -> int:
        cfg = self.cfg
        if modality == "text":
            return cfg.context_length
        if modality == "audio":
            return 1 + ((cfg.mel_bins - cfg.audio_kernel) // cfg.audio_stride + 1) * (
                (cfg.audio_frames - cfg.audio_kernel) // cfg.audio_stride + 1
            )
        return 1 + (cfg.image_size // cfg.patch[1]) * (cfg.image_size // cfg.patch[2])

    def suggest_batch_size(self, modality: str, available_bytes: int | None = None, limit: int = 64) -> int:
        """Sequences per batch that fit in a quarter of the available memory (see suggest_batch_size)."""
        tc = self.cfg.trunk(TRUNK_OF[modality])
        return suggest_batch_size(
            self.tokens_per_sequence(modality),
            tc.dim,
            tc.heads,
            self.device,
            self.dtype,
            available_bytes=available_bytes,
            limit=limit,
        )


def suggest_batch_size(
    tokens: int,
    dim: int,
    heads: int,
    device=None,
    dtype=None,
    available_bytes: int | None = None,
    limit: int = 64,
    fraction: float = 0.25,
) -> int:
    """A batch size (sequences) whose peak activation memory in one block stays under `fraction` of
    the free memory of `device` (CUDA: torch.cuda.mem_get_info; otherwise free RAM).

    Peak per sequence inside a block ~ hidden, q/k/v, attention output, 4x MLP activation, plus the
    attention matrix if the kernel materialises it: (T*D*(1+3+1+4+2) + H*T*T) elements."""
    device = torch.device(device or "cpu")
    itemsize = torch.empty((), dtype=dtype or torch.float32).element_size()
    if available_bytes is None:
        if device.type == "cuda":
            available_bytes = torch.cuda.mem_get_info(device)[0]
        else:
            try:
                import psutil

                available_bytes = psutil.virtual_memory().available
            except Exception:  # pragma: no cover - psutil missing
                available_bytes = 4 << 30
    per_sequence = (tokens * dim * 11 + heads * tokens * tokens) * itemsize
    return max(1, min(limit, int(available_bytes * fraction) // max(per_sequence, 1)))
