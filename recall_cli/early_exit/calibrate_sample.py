"""The calibration sample (calibrate.py): which files, in what order, what is kept of them, and the
split into training and held-out files.

Kept per sample unit, all computed anyway by the full-depth encode of the sample: the decoded data,
the full-depth vector (the teacher), and, through a feature tap on that encode (encode.py), the
superficial embedding at k0 and the mean head output at each exit point, which is where healing
starts (ridge heads, exit shares, predictor input).  So the healer does not run the sample's blocks
again before it trains.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

HELDOUT_FILES = 0.2


@dataclass
class Collected:
    """One modality's sample units, in the order they were written."""

    data: list = field(default_factory=list)
    teacher: list = field(default_factory=list)  # full-depth vectors (numpy), as written
    files: list[str] = field(default_factory=list)
    features: list = field(default_factory=list)  # per unit: (superficial, {exit: head mean}) or None


class FeatureStore:
    """What the feature tap saw, by the identity of each unit's data (the encode gets the same
    objects the run keeps in its pending units).  Each entry holds its data object, so an id is
    never reused while it is here and a unit never takes another's features."""

    def __init__(self):
        self.seen: dict[int, tuple] = {}

    def record(self, modality: str, data: list, superficial, per_exit: dict) -> None:
        for position, item in enumerate(data):
            rows = {e: values[position] for e, values in per_exit.items()}
            self.seen[id(item)] = (item, superficial[position], rows)

    def take(self, item):
        """(superficial, {exit: head mean}) of this unit's data, or None when its encode was not seen."""
        entry = self.seen.pop(id(item), None)
        return (entry[1], entry[2]) if entry is not None and entry[0] is item else None

    def clear(self) -> None:
        self.seen = {}


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
    unique = sorted(set(kept.files))
    random.Random(seed).shuffle(unique)
    held = set(unique[: max(1, int(len(unique) * HELDOUT_FILES))])
    sample.train = [i for i, owner in enumerate(kept.files) if owner not in held]
    sample.held = [i for i, owner in enumerate(kept.files) if owner in held]
    return sample
