"""The layered-encoder interface every model implements.

A layered encoder exposes a transformer as three steps so that early exit, the activation cache,
healing and refinement can be written once for every model:

    batch  = encoder.tokenize(modality, inputs)         # decoded inputs -> tokens entering block 0
    hidden = encoder.block(modality, i, hidden, mask)   # run block i (0-based) on the hidden state
    emb    = encoder.embed(batch.with_hidden(h), L)     # head on the state after L blocks -> item vectors

"Exit block" L always means "the number of blocks that have run": L = 0 is the token embeddings,
L = depth(modality) is full depth.  Full-depth encoding is `encode()`: run every block, then the
head.

One *item* (a text chunk, a photo, a whole video or audio file) may be several *sequences*
(video clips, audio clips); `Batch.owner` says which item each sequence belongs to, and `embed`
averages the sequences of an item the way the model's reference code does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


@contextmanager
def skip_weight_init():
    """Build modules without random initialisation (their weights are loaded right after).

    Cheaper than the meta device here: initialising meta tensors routes through torch._refs,
    which imports torch._dynamo (~1 s), a cost every cold `recall query` would pay."""
    import torch.nn.init as init

    names = (
        "uniform_",
        "normal_",
        "trunc_normal_",
        "kaiming_uniform_",
        "kaiming_normal_",
        "xavier_uniform_",
        "xavier_normal_",
        "ones_",
        "zeros_",
        "constant_",
    )
    saved = {name: getattr(init, name) for name in names}
    try:
        for name in names:
            setattr(init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(init, name, function)


class DecodeError(Exception):
    """A file could not be turned into model input.  The message is one line, shown to the user."""


@dataclass
class Unit:
    """One thing to embed: a text chunk or a whole media file, already decoded."""

    modality: str
    data: Any  # model-specific decoded input: a str for text, a tensor for media
    snippet: str = ""  # short human-readable excerpt for results ("" for media)
    chunk: int = 0  # position of this unit inside its file
    meta: dict | None = None  # media metadata (models/mediatext): filterable columns of its row


@dataclass
class Batch:
    """Sequences of one modality on their way through the blocks."""

    modality: str
    hidden: Any  # torch.Tensor [S, T, D]: hidden state entering the next block
    mask: Any  # torch.Tensor [S, T] bool: True where a token is real (not padding)
    owner: Any  # torch.Tensor [S] long: index of the item each sequence belongs to
    n_items: int

    def with_hidden(self, hidden) -> Batch:
        return replace(self, hidden=hidden)

    def select_items(self, item_indices) -> Batch:
        """The sub-batch holding only the given items (renumbered 0..k-1), all their sequences."""
        import torch

        item_indices = torch.as_tensor(item_indices, dtype=torch.long, device=self.owner.device)
        remap = torch.full((self.n_items,), -1, dtype=torch.long, device=self.owner.device)
        remap[item_indices] = torch.arange(len(item_indices), device=self.owner.device)
        keep = remap[self.owner] >= 0
        return Batch(
            modality=self.modality,
            hidden=self.hidden[keep],
            mask=self.mask[keep],
            owner=remap[self.owner[keep]],
            n_items=len(item_indices),
        )


class LayeredEncoder(ABC):
    """A transformer encoder driven block by block.  Subclasses fill in the abstract methods."""

    name: str  # registry name, e.g. "minilm"
    version: str  # stored in the index; a different version means a different embedding space
    dim: int  # embedding dimension
    modalities: tuple[str, ...]  # what this model can embed
    device: Any = None  # torch.device the weights live on
    dtype: Any = None  # compute dtype
    # whether a CPU encodes two batches side by side, one torch thread each, faster than one batch
    # on all of torch's threads (models/device.encode_workers): measured per model
    batches_side_by_side: bool = False

    # --- decoding: files and query text -> units ------------------------------------------
    @abstractmethod
    def file_units(self, path: Path, modality: str) -> list[Unit]:
        """Decode one file into the units to embed.  Raises DecodeError with a one-line reason."""

    def text_files_units(self, paths: list[Path]) -> list[list[Unit] | Exception]:
        """file_units(path, "text") of each path, or the error that decoding it raised.  A model
        that decodes many files at once faster than one by one overrides it (index/decode_ahead.py)."""
        results: list[list[Unit] | Exception] = []
        for path in paths:
            try:
                results.append(self.file_units(path, "text"))
            except Exception as error:  # the file's own failure, told when the run reaches it
                results.append(error)
        return results

    @abstractmethod
    def text_unit(self, text: str) -> Unit:
        """A query text as one unit (truncated to the model's window)."""

    # --- the three layered steps ----------------------------------------------------------
    @abstractmethod
    def depth(self, modality: str) -> int:
        """Number of transformer blocks for this modality."""

    @abstractmethod
    def tokenize(self, modality: str, data: list[Any]) -> Batch:
        """Turn decoded inputs into the hidden state entering block 0 (on self.device)."""

    @abstractmethod
    def block(self, modality: str, index: int, hidden, mask):
        """Run block `index` (0-based) and return the new hidden state."""

    @abstractmethod
    def head(self, modality: str, hidden, mask, exit_block: int):
        """Map the hidden state after `exit_block` blocks to one vector per sequence [S, dim]."""

    # --- derived operations, written once -------------------------------------------------
    def run_blocks(self, batch: Batch, start: int, stop: int) -> Batch:
        """Run blocks start..stop-1 on the batch."""
        hidden = batch.hidden
        for index in range(start, stop):
            hidden = self.block(batch.modality, index, hidden, batch.mask)
        return batch.with_hidden(hidden)

    def lora_targets(self, modality: str, index: int):
        """(root module, names of block `index`'s nn.Linear layers inside it): where healing puts
        LoRA adapters.  Models that support healing override this."""
        raise NotImplementedError(f"{self.name} does not support healing")

    def embed(self, batch: Batch, exit_block: int, exit_head=None):
        """Unit-norm item embeddings [n_items, dim] from a batch whose hidden state is after
        `exit_block` blocks.  Sequences of one item are averaged, then normalised.  `exit_head`
        (healing) maps each sequence's head output before the averaging."""
        import torch

        per_sequence = self.head(batch.modality, batch.hidden, batch.mask, exit_block).float()
        if exit_head is not None:
            per_sequence = exit_head(per_sequence)
        if batch.n_items == per_sequence.shape[0] and bool(
            (batch.owner == torch.arange(batch.n_items, device=batch.owner.device)).all()
        ):
            return torch.nn.functional.normalize(per_sequence, dim=-1)  # one sequence per item, in order
        per_item = torch.zeros(batch.n_items, per_sequence.shape[1], device=per_sequence.device)
        per_item.index_add_(0, batch.owner, per_sequence)
        counts = torch.bincount(batch.owner, minlength=batch.n_items).clamp(min=1)
        per_item = per_item / counts[:, None]
        return torch.nn.functional.normalize(per_item, dim=-1)

    def encode(self, modality: str, data: list[Any]):
        """Full-depth unit-norm embeddings [len(data), dim]."""
        import torch

        with torch.inference_mode():
            batch = self.tokenize(modality, data)
            batch = self.run_blocks(batch, 0, self.depth(modality))
            return self.embed(batch, self.depth(modality))

    def encode_texts(self, texts: list[str]):
        """Full-depth embeddings of query texts."""
        units = [self.text_unit(text) for text in texts]
        return self.encode("text", [unit.data for unit in units])
