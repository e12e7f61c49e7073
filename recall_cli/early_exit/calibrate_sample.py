"""The calibration sample (calibrate.py): which files, in what order, what is kept of them, and the
split into training and held-out files.

Kept per sample unit, all computed anyway by the full-depth encode of the sample: the decoded data,
the full-depth vector (the teacher), and, through a feature tap on that encode (encode.py), the
superficial embedding at k0 and the mean head output at each exit point, which is where healing
starts (ridge heads, exit shares, predictor input).  So the healer does not run the sample's blocks
again before it trains.

For a model whose head is the mean of its token states (TOKEN_MEAN_HEADS), up to TOKENS_PER_UNIT
token states per unit are kept too, at each exit point and at full depth: a linear exit head
fitted token to token (heal.token_ridge_fit) is the same map on the pooled output, and tens of
tokens per unit determine its 385 x 384 weights far better than one pooled row per unit does
(MiniLM, docstrings, a 127-file sample: held-out cosine at exit 5 0.80 against 0.76, coarse R@10
0.59 of full against 0.49; no training step).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

HELDOUT_FILES = 0.2
TOKEN_MEAN_HEADS = frozenset({"minilm"})  # models/minilm/model.py: head = mean of the real tokens
TOKENS_PER_UNIT = 32  # token states kept per unit and per block (float16): 512 units x 6 blocks ~ 75 MB


@dataclass
class Collected:
    """One modality's sample units, in the order they were written."""

    data: list = field(default_factory=list)
    teacher: list = field(default_factory=list)  # full-depth vectors (numpy), as written
    files: list[str] = field(default_factory=list)
    features: list = field(default_factory=list)  # per unit: (superficial, {exit: head mean}, tokens) or None


class FeatureStore:
    """What the feature tap saw, by the identity of each unit's data (the encode gets the same
    objects the run keeps in its pending units).  Each entry holds its data object, so an id is
    never reused while it is here and a unit never takes another's features."""

    def __init__(self, tokens: bool = False, seed: int = 0):
        self.seen: dict[int, tuple] = {}
        self.tokens, self.seed = tokens, seed

    def record(self, modality: str, data: list, superficial, per_exit: dict, batches: dict | None = None) -> None:
        from recall_cli.models.device import one_torch_thread

        # small gathers, thousands per sample: on two threads each waited for a busy core (10 s of a
        # 1,275-file run under load, against well under 1 s on one thread)
        with one_torch_thread():
            tokens = _token_rows(batches, len(data), self.seed) if self.tokens and batches else [None] * len(data)
        for position, item in enumerate(data):
            rows = {e: values[position] for e, values in per_exit.items()}
            self.seen[id(item)] = (item, superficial[position], rows, tokens[position])

    def take(self, item):
        """(superficial, {exit: head mean}, {block: token states} or None) of this unit's data, or
        None when its encode was not seen."""
        entry = self.seen.pop(id(item), None)
        return entry[1:] if entry is not None and entry[0] is item else None

    def clear(self) -> None:
        self.seen = {}


def _token_rows(batches: dict, n_items: int, seed: int) -> list[dict]:
    """Per item: {block: [t, dim] float16} for the same t <= TOKENS_PER_UNIT real tokens (drawn at
    random, seeded) at every block in `batches` (the exits and full depth: the same positions)."""
    import torch

    first = next(iter(batches.values()))
    mask = first.mask.cpu()
    # a random key per real token; each sequence keeps its TOKENS_PER_UNIT smallest
    keys = torch.rand(mask.shape, generator=torch.Generator().manual_seed(seed)).masked_fill(~mask, 2.0)
    order = keys.argsort(dim=1)[:, :TOKENS_PER_UNIT]
    kept = keys.gather(1, order) < 2.0
    sequences = torch.arange(mask.shape[0])[:, None].expand_as(order)[kept]
    positions = order[kept]
    owners = first.owner.cpu()[sequences]
    rows = {block: batch.hidden[sequences, positions].to("cpu", torch.float16) for block, batch in batches.items()}
    by_item = [(owners == item).nonzero().flatten()[:TOKENS_PER_UNIT] for item in range(n_items)]
    return [{block: states.index_select(0, chosen) for block, states in rows.items()} for chosen in by_item]


class SampleFirst(list):
    """The run's work list, sample files first; iterating past the last of them calls
    `at_boundary` (a flush), so calibration heals on the sample and not on up to a flush's worth
    more files encoded at full depth."""

    def __init__(self, items: list, boundary: int, at_boundary):
        super().__init__(items)
        self.boundary, self.at_boundary = boundary, at_boundary

    def __iter__(self):
        for position, item in enumerate(list.__iter__(self)):
            if position == self.boundary:
                self.at_boundary()
            yield item


def stratified_pick(paths: list[str], count: int, seed: int) -> list[str]:
    """`count` paths drawn at random, each file type (suffix) in proportion to its share."""
    rng = random.Random(seed)
    groups: dict[str, list[str]] = {}
    for path in paths:
        groups.setdefault(os.path.splitext(path)[1].lower(), []).append(path)
    chosen: list[str] = []
    for suffix in sorted(groups):
        members = groups[suffix]
        rng.shuffle(members)
        chosen.extend(members[: max(1, round(count * len(members) / len(paths)))])
    rng.shuffle(chosen)
    return chosen[:count]


def heal_sample(kept: Collected, seed: int):
    """heal.Sample of the collected units, with HELDOUT_FILES of the files held out of training,
    and the tapped features when every unit has them."""
    import numpy as np
    import torch

    from recall_cli.early_exit.heal import Sample

    teacher = torch.nn.functional.normalize(torch.from_numpy(np.stack(kept.teacher)).float(), dim=-1)
    sample = Sample(list(kept.data), teacher, list(kept.files))
    if kept.features and all(item is not None for item in kept.features):
        exits = sorted(kept.features[0][1])
        sample.superficial = torch.stack([item[0] for item in kept.features])
        sample.base_outputs = {e: torch.stack([item[1][e] for item in kept.features]) for e in exits}
        if all(item[2] is not None for item in kept.features):
            sample.token_states = [item[2] for item in kept.features]
    unique = sorted(set(kept.files))
    random.Random(seed).shuffle(unique)
    held = set(unique[: max(1, int(len(unique) * HELDOUT_FILES))])
    sample.train = [i for i, owner in enumerate(kept.files) if owner not in held]
    sample.held = [i for i, owner in enumerate(kept.files) if owner in held]
    return sample
