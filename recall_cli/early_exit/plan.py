"""Exit points: where in a model's trunk an item may stop, per (model, modality).

Written against the layered-encoder interface (models/base.py), so it works the same for `minilm`
and the ImageBind trunks.  Vocabulary used across the early-exit package:

* exit block L = number of blocks run (0 = token embeddings, depth = full depth);
* k0 = the *superficial* block: every item runs blocks 0..k0-1, then the head at k0 gives the
  *superficial embedding* the predictor looks at;
* exit points = the blocks an item may stop after (all >= k0, the last is always full depth).

No torch here: a plan is plain numbers, so anything may ask for one cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExitPlan:
    depth: int
    k0: int  # superficial block: the predictor sees the head output after k0 blocks
    points: tuple[int, ...]  # sorted exit points, all in k0..depth, last == depth

    def snap(self, exit_block: int) -> int:
        """The shallowest exit point >= exit_block (full depth if none)."""
        for point in self.points:
            if point >= exit_block:
                return point
        return self.depth


# (model, modality) -> (k0, exit points).  MiniLM is shallow (6 blocks), so it gets k0 = 1 with
# every block an exit; every other trunk falls back to exit_plan's rule, k0 = depth/8 with an exit
# every depth/8 blocks (ImageBind vision 4 of 32: 4, 8, ..., 32; text 3 of 24; audio 12 blocks:
# every block from 1).  benchmarks/bench_early_exit.py measures the predictor's accuracy per k0.
EXIT_CONFIG: dict[tuple[str, str], tuple[int, tuple[int, ...]]] = {
    ("minilm", "text"): (1, (1, 2, 3, 4, 5, 6)),
}


def exit_plan(model, modality: str) -> ExitPlan:
    """The configured plan of (model, modality), else an exit every depth/8 blocks from k0 = depth/8."""
    depth = model.depth(modality)
    configured = EXIT_CONFIG.get((model.name, modality))
    if configured and configured[1][-1] == depth:  # a config for another depth (other weights) does not apply
        k0, points = configured
        return ExitPlan(depth, k0, tuple(points))
    step = max(1, depth // 8)
    k0 = step
    points = tuple(range(k0, depth + 1, step))
    if points[-1] != depth:
        points = points + (depth,)
    return ExitPlan(depth, k0, points)
