"""Exit policies: which exit block each item of a batch stops at (encode.py asks them).

Policies (`parse_policy`, option `recall index --exit-policy`, env RECALL_EXIT_POLICY):
* `auto` (default): the trained predictor (predictor.py; the healed version's, else
  <db>/predictor.safetensors) when one exists, else `full`.  Raw (unhealed) intermediate layers
  embed badly: measured on all-MiniLM-L6-v2 / docstrings, R@10 0.73 at full depth vs 0.30 at
  block 5 (benchmarks/bench_early_exit.py prints every exit), so until `recall heal` has run the
  safe default is full depth: every item runs every block, its fine embedding is stored, nothing
  waits for refinement and no cache is kept.
* `full`: every block for every item (also what `recall index --full` pins for an index).
* `predictor`: the trained predictor (error if there is none).
* `fixed:L`: every item exits at exit point L (rounded up to an exit point).
* `mix:L1=p1,L2=p2,...`: a fixed exit distribution, assigned deterministically (benchmarks; random
  weights make the predictor meaningless there).

Once the index is healed, every policy but `full` carries a HealedSource, through which the encode
routine finds the healed exit path (adapters.py).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from recall_cli.early_exit.adapters import current_dir, load_healed
from recall_cli.early_exit.plan import ExitPlan
from recall_cli.early_exit.predictor import ExitPredictor, load_predictors
from recall_cli.errors import RecallError
from recall_cli.storage.layout import PREDICTOR_FILE, current_version

POLICY_ENV = "RECALL_EXIT_POLICY"
GOLDEN_RATIO_FRACTION = 0.6180339887498949  # step of the low-discrepancy sequence MixPolicy draws from


class ExitPolicy:
    """Chooses an exit block per item.  `needs_superficial` False means the policy never looks at
    the superficial embedding (full depth: no reason to stop at k0 first; fixed and mixed exits:
    only the number of items counts)."""

    name = "policy"
    needs_superficial = True
    healed_source = None  # HealedSource: the index's healed exit path, once `recall heal` ran

    def is_full(self, modality: str) -> bool:
        return False

    def healed_for(self, model, modality: str):
        return self.healed_source.get(model, modality) if self.healed_source else None

    def choose(self, modality: str, plan: ExitPlan, superficial) -> list[int]:
        raise NotImplementedError


class FullDepthPolicy(ExitPolicy):
    name = "full"
    needs_superficial = False

    def is_full(self, modality: str) -> bool:
        return True

    def choose(self, modality, plan, superficial):
        return [plan.depth] * int(superficial.shape[0])


class FixedPolicy(ExitPolicy):
    needs_superficial = False

    def __init__(self, exit_block: int):
        self.exit_block = exit_block
        self.name = f"fixed:{exit_block}"

    def choose(self, modality, plan, superficial):
        return [plan.snap(max(self.exit_block, plan.k0))] * int(superficial.shape[0])


class MixPolicy(ExitPolicy):
    """A fixed exit distribution {exit: fraction}, assigned deterministically with a low-discrepancy
    sequence over the items seen (so any prefix of the items follows the distribution closely)."""

    needs_superficial = False

    def __init__(self, fractions: dict[int, float]):
        total = sum(fractions.values())
        self.fractions = {int(k): v / total for k, v in sorted(fractions.items())}
        self.name = "mix:" + ",".join(f"{k}={v:g}" for k, v in self.fractions.items())
        self.counter = 0
        self._counting = threading.Lock()  # batches encoded side by side take their turns whole

    def choose(self, modality, plan, superficial):
        with self._counting:
            return [plan.snap(max(self._next_exit(plan.depth), plan.k0)) for _ in range(int(superficial.shape[0]))]

    def _next_exit(self, depth: int) -> int:
        u = (self.counter * GOLDEN_RATIO_FRACTION + 0.5) % 1.0
        self.counter += 1
        cumulative = 0.0
        for exit_block, fraction in self.fractions.items():
            cumulative += fraction
            if u < cumulative:
                return exit_block
        return depth  # rounding left u above the last cumulative fraction


class PredictorPolicy(ExitPolicy):
    """The trained predictor per modality; modalities without one run at full depth."""

    name = "predictor"

    def __init__(self, predictors: dict[str, tuple[ExitPredictor, dict]]):
        self.predictors = predictors

    def is_full(self, modality: str) -> bool:
        return modality not in self.predictors

    def choose(self, modality, plan, superficial):
        if modality not in self.predictors:
            return [plan.depth] * int(superficial.shape[0])
        predictor, _ = self.predictors[modality]
        return [plan.snap(max(exit_block, plan.k0)) for exit_block in predictor.predict(superficial)]


class HealedSource:
    """Loads the index's healed exit path (adapters.load_healed) once per modality, on first use:
    loading builds a model of its own, which a run that never meets that modality should not pay."""

    def __init__(self, db_dir: Path):
        self.db_dir = Path(db_dir)
        self.loaded: dict[str, Any] = {}
        self._loading = threading.Lock()  # batches encoded side by side ask at once: load once

    def get(self, model, modality: str):
        with self._loading:
            if modality not in self.loaded:
                self.loaded[modality] = load_healed(self.db_dir, model, modality)
            return self.loaded[modality]


def parse_policy(spec: str | None, db_dir: Path | None = None, model_name: str | None = None) -> ExitPolicy:
    """auto | full | predictor | fixed:L | mix:L=p,... (see the module docstring).  Once the
    index is healed, every policy but `full` uses the healed exits and the healed predictor."""
    policy = _policy_from_spec(spec, db_dir, model_name)
    if db_dir is not None and not isinstance(policy, FullDepthPolicy) and current_version(Path(db_dir)):
        policy.healed_source = HealedSource(Path(db_dir))
    return policy


def _policy_from_spec(spec: str | None, db_dir: Path | None, model_name: str | None) -> ExitPolicy:
    spec = (spec or os.environ.get(POLICY_ENV) or "auto").strip().lower()
    if spec == "full":
        return FullDepthPolicy()
    if spec in ("auto", "predictor"):
        return _trained_policy(spec, _predictor_path(db_dir), model_name)
    try:
        if spec.startswith("fixed:"):
            return FixedPolicy(int(spec.split(":", 1)[1]))
        if spec.startswith("mix:"):
            pairs = [part.split("=") for part in spec.split(":", 1)[1].split(",") if part]
            return MixPolicy({int(k): float(v) for k, v in pairs})
    except ValueError:
        pass
    raise RecallError(f"unknown exit policy {spec!r}; use auto, full, predictor, fixed:L or mix:L=p,L=p")


def _predictor_path(db_dir: Path | None) -> Path | None:
    """The healed version's predictor (trained on the healed exits) when there is one, else the
    index's own predictor file."""
    if db_dir is None:
        return None
    healed_dir = current_dir(Path(db_dir))
    if healed_dir is not None and (healed_dir / PREDICTOR_FILE).exists():
        return healed_dir / PREDICTOR_FILE
    return Path(db_dir) / PREDICTOR_FILE


def _trained_policy(spec: str, predictor_path: Path | None, model_name: str | None) -> ExitPolicy:
    """`auto` or `predictor`: the predictor if trained; without one, auto falls back to full depth."""
    if predictor_path is not None and predictor_path.exists():
        return PredictorPolicy(load_predictors(predictor_path, model_name))
    if spec == "predictor":
        raise RecallError(
            "no trained exit predictor in this index yet; run `recall heal` first (or use --exit-policy full / fixed:L)"
        )
    return FullDepthPolicy()
