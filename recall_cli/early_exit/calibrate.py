"""Calibration: the first `recall index` of a new index heals its own exits, so early exit helps
without a separate `recall heal`.

How a run calibrates (default policy `auto`, an index never healed, no `--full`):
  1. sample: a seeded random share of the files this run will encode (SAMPLE_SHARE, at least
     MIN_FILES, at most MAX_FILES), drawn in proportion from each file type (the suffix stands for
     the modality before the file is read), is put first in the run.  They run at full depth as
     before, so they get exact embeddings; their decoded units and full-depth vectors, computed
     anyway, are kept in memory as the sample and its teachers (at most MAX_UNITS per modality),
     with the states the encode passed through on its way to full depth (calibrate_sample.py).
  2. heal: once the sample files are written, each modality with at least MIN_UNITS units is healed
     (heal.py) by its model's mode (MODES): "heads" fits the exit heads in closed form on the kept
     states (seconds); "lora" then trains LoRA within BUDGET_SHARE of the run's projected full-depth
     time (clamped to MIN_SECONDS..MAX_SECONDS) or $RECALL_CALIBRATE_STEPS steps (the same quality on
     any machine).  The exit predictor is trained on a target of TARGET_COMPUTE of the blocks.
  3. gate: an exit is enabled only if, on files held out of training, its mean cosine to full
     depth reaches GATE_COSINE (0.6) and it brings the full-depth top k of held-out "more like this"
     queries into its top 5k (calibrate_gate.py: why both); the projected saving over the rest of
     the run (its units x measured encode time per unit x blocks the predictor skips) must exceed
     the time spent healing.  Else the index stays at full depth and `recall stats` says why.
  4. use: the healed exits and predictor are saved as the index's adapter version (the same files
     `recall heal` writes, so a later `recall heal` starts from them, replaces them with a better
     version and refreshes the coarse rows), and the rest of the run encodes with exits.

Once: the outcome ("done" or "rejected") is kept in the manifest's meta; an index that has it never
calibrates again (`recall heal` heals further).  A run interrupted while collecting or healing
leaves no adapter version in use (the version becomes current last) and its full-depth rows stay
exact; the next run calibrates from its own first files.  A run with too few new files for the
saving to pay ("deferred") or that ends before its sample is complete ("collecting") leaves
calibration to a later run; `index --rebuild` builds a fresh index, which calibrates again.

On by default; RECALL_CALIBRATE=0 turns it off (1: on, the default).  A run first checks that the
exits could pay (units left x time per unit x EXPECTED_SKIP must exceed the healing budget), else it
defers; README.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from recall_cli.early_exit.calibrate_sample import (
    TOKEN_MEAN_HEADS,
    Collected,
    FeatureStore,
    SampleFirst,
    heal_sample,
    stratified_pick,
)
from recall_cli.errors import RecallError
from recall_cli.models.device import one_torch_thread
from recall_cli.storage.lock import HealLock

log = logging.getLogger("recall")

CALIBRATION_META = "calibration"  # manifest meta key: the outcome, as JSON
SAMPLE_SHARE = 0.1
MIN_FILES = 48
MAX_FILES = 400
MIN_UNITS = 32  # fewer units of a modality than this: that modality stays at full depth
MAX_UNITS = 512
BUDGET_SHARE = 0.12
MIN_SECONDS = 10.0
MAX_SECONDS = 300.0
TARGET_COMPUTE = 0.55
PREDICTOR_SHARE = 0.1  # of the healing time kept for the predictor and saving
EXPECTED_SKIP = 0.35  # share of encode time exits are expected to save: the check before healing
FINAL = ("done", "rejected")
HEADS_SECONDS = 5.0  # what closed-form heads and the predictor cost ("heads" mode), for the check before healing
# What these defaults give (MiniLM, 1,275 docstrings, 2 cores): a 128-file sample, 1.1 s of healing,
# held-out cosines 0.70-0.78, every exit through the gate, 37.6% of the blocks skipped, the whole run
# 0.78 of `--full`'s wall time; a default (hybrid) query's first pass 0.976 of full depth's R@10,
# 0.970 on a corpus the sample never saw (benchmarks/results/calibrate.md).
# How calibration heals, per model ($RECALL_CALIBRATE_MODE overrides): "heads" fits the exit heads in
# closed form on the sample's encode states (seconds); "lora" trains LoRA too.  MiniLM, docstrings, 30%
# sample: 200 LoRA steps (1.6 CPU s each) left every held-out cosine below the closed-form start (block
# 5 0.839 against 0.850, block 4 0.801 against 0.814): too few files to generalise.  ImageBind: unmeasured.
MODES = {"minilm": "heads"}


@dataclass
class CalibrationOptions:
    enabled: bool | None = None  # None: the default (on)
    sample_share: float = SAMPLE_SHARE
    budget_share: float = BUDGET_SHARE
    seconds: float | None = None  # fixed healing time instead of budget_share of the run
    steps: int | None = None  # fixed training steps (load-independent quality)
    mode: str | None = None  # "heads" or "lora"; None: the model's (MODES)
    check_saving: bool = True
    seed: int = 0

    @classmethod
    def from_env(cls) -> CalibrationOptions:
        env = os.environ.get
        options = cls()
        switch = env("RECALL_CALIBRATE")
        if switch is not None:
            options.enabled = switch.strip().lower() not in ("0", "off", "no", "false", "")
        options.check_saving = env("RECALL_CALIBRATE_SAVING", "1").strip() != "0"
        for name, key, kind in (
            ("sample_share", "RECALL_CALIBRATE_SHARE", float),
            ("budget_share", "RECALL_CALIBRATE_BUDGET", float),
            ("seconds", "RECALL_CALIBRATE_SECONDS", float),
            ("steps", "RECALL_CALIBRATE_STEPS", int),
            ("mode", "RECALL_CALIBRATE_MODE", str),
        ):
            if env(key):
                setattr(options, name, kind(env(key)))
        return options


def read_calibration(manifest) -> dict | None:
    """The calibration outcome stored in the manifest (None: never tried)."""
    raw = manifest.get_meta(CALIBRATION_META)
    try:
        state = json.loads(raw) if raw else None
    except ValueError:
        return None
    # "off": made while MiniLM did not calibrate by default, so never tried; its next run may
    return None if state and state.get("status") == "off" else state


def write_calibration(manifest, state: dict) -> None:
    manifest.set_meta(CALIBRATION_META, json.dumps(state, default=str))


def start_calibration(run, todo: list) -> tuple:
    """(the Calibrator of an index run, its work list with the sample files first), or (None, todo)
    when the index needs none: nothing to encode, calibration is off, a policy other than `auto`
    was asked for, the index is `--full`, healed, has a predictor, or calibrated before.  `run` is
    the index run (index/indexer.py): its db_dir, manifest, model_name, options and _flush."""
    # a run of at most MIN_FILES files would be all sample: nothing left to save on, so not reordered
    calibrator = _calibrator(run.db_dir, run.manifest, run.model_name, run.options) if len(todo) > MIN_FILES else None
    return (calibrator, calibrator.order(todo, run._flush)) if calibrator else (None, todo)


def _calibrator(db_dir: Path, manifest, model_name: str, index_options) -> Calibrator | None:
    from recall_cli.early_exit.policy import POLICY_ENV
    from recall_cli.storage.layout import PREDICTOR_FILE, current_version

    options = CalibrationOptions.from_env()
    spec = (index_options.exit_policy or os.environ.get(POLICY_ENV) or "auto").strip().lower()
    full_depth = index_options.full or manifest.get_meta("full_depth") == "1"
    if options.enabled is False or spec != "auto" or full_depth:
        return None
    if current_version(db_dir) or (Path(db_dir) / PREDICTOR_FILE).exists():
        return None
    state = read_calibration(manifest)
    if state and state.get("status") in FINAL:
        return None
    return Calibrator(Path(db_dir), manifest, model_name, options)


class Calibrator:
    """Calibration within one index run (see the module docstring).  `start_calibration` orders
    the run's work list; the run calls `observe` after each flush (True: the exit policy changed)."""

    def __init__(self, db_dir: Path, manifest, model_name: str, options: CalibrationOptions):
        self.db_dir, self.manifest, self.model_name, self.options = db_dir, manifest, model_name, options
        self.collecting = False
        self.sample_paths: set[str] = set()
        self.sample_written: set[str] = set()  # sample files whose units were flushed
        self.sample_complete = False  # every sample file was applied
        self.by_modality: dict[str, Collected] = {}
        self.features = FeatureStore(tokens=model_name in TOKEN_MEAN_HEADS, seed=options.seed)
        self.files_total = self.files_done = self.units_done = 0
        self.encode_seconds = 0.0
        self.started = time.perf_counter()
        if (mode := options.mode or MODES.get(model_name, "lora")) not in ("heads", "lora"):
            raise RecallError(f"RECALL_CALIBRATE_MODE must be heads or lora, not {mode!r}")
        self.mode = mode

    # -------------------------------------------------------------------------- the sample
    def order(self, todo: list, flush) -> list:
        """The work list with the sample files first (a stratified random draw); starts collecting.
        `flush` is called once the last sample file is applied, so healing starts right after it."""
        self.files_total = len(todo)
        count = min(MAX_FILES, max(MIN_FILES, math.ceil(self.options.sample_share * len(todo))), len(todo))
        self.sample_paths = set(stratified_pick([entry.path for entry, _ in todo], count, self.options.seed))
        self.collecting = True
        self.started = time.perf_counter()
        write_calibration(self.manifest, {"status": "collecting", "sample_files": count, "at": time.time()})
        first = [item for item in todo if item[0].path in self.sample_paths]
        rest = [item for item in todo if item[0].path not in self.sample_paths]
        from recall_cli.early_exit.encode import add_feature_tap

        add_feature_tap(self.features.record)  # the sample's encode states, for the healer
        return SampleFirst(first + rest, len(first), self._sample_applied(flush))

    def _sample_applied(self, flush):
        def at_boundary():
            self.sample_complete = True  # those that failed or were skipped never reach a flush
            flush()

        return at_boundary

    def observe(self, pending_units: list, encoded: list, encode_seconds: float, model) -> bool:
        """After a flush: keep the full-depth units of sample files; heal once every sample file is
        written (or a modality has MAX_UNITS).  True when the run's exit policy changed."""
        self.files_done += len({path for path, _ in pending_units})
        self.units_done += len(pending_units)
        self.encode_seconds += encode_seconds
        if not self.collecting:
            return False
        for (path, unit), result in zip(pending_units, encoded, strict=True):
            if path not in self.sample_paths:
                continue
            self.sample_written.add(path)
            kept = self.by_modality.setdefault(unit.modality, Collected())
            if result.vector is not None and result.refined and len(kept.data) < MAX_UNITS:
                kept.data.append(unit.data)
                kept.teacher.append(result.vector)
                kept.files.append(path)
                kept.features.append(self.features.take(unit.data))
        full = any(len(kept.data) >= MAX_UNITS for kept in self.by_modality.values())
        if not (self.sample_complete or full or len(self.sample_written) == len(self.sample_paths)):
            return False
        self.collecting = False
        from recall_cli.early_exit.encode import remove_feature_tap

        remove_feature_tap(self.features.record)
        self.features.clear()
        return self._calibrate(model)

    # -------------------------------------------------------------------------- healing
    def _calibrate(self, model) -> bool:
        sample_units = {modality: len(kept.data) for modality, kept in self.by_modality.items()}
        usable = {m: kept for m, kept in self.by_modality.items() if len(kept.data) >= MIN_UNITS}
        if not usable:
            return self._record("deferred", f"too few units to calibrate ({sample_units}; need {MIN_UNITS})")
        budget = self._budget() if self.mode == "lora" else HEADS_SECONDS
        per_unit = self.encode_seconds / max(1, self.units_done)
        units_left = (self.files_total - self.files_done) * self.units_done / max(1, self.files_done)
        if self.options.check_saving and units_left * per_unit * EXPECTED_SKIP < budget:
            return self._record(
                "deferred",
                f"{units_left:.0f} units left in this run would save ~{units_left * per_unit * EXPECTED_SKIP:.1f} s, "
                f"less than {budget:.1f} s of healing",
            )
        write_calibration(self.manifest, {"status": "healing", "sample_units": sample_units, "at": time.time()})
        healed_at = time.perf_counter()
        try:
            # a `recall heal` meanwhile makes its own version; closed-form heads on one thread (two
            # busy cores: 1.1 s where two threads, spinning against each other, took 8 s)
            with HealLock(self.db_dir), one_torch_thread() if self.mode == "heads" else nullcontext():
                outcome = self._heal(model, usable, budget)
        except RecallError as busy:
            return self._record("deferred", str(busy))
        finally:
            self.by_modality = {}  # the sample is not needed any more: free it
        heal_seconds = time.perf_counter() - healed_at
        summary = {
            "sample_units": sample_units,
            "sample_files": len(self.sample_paths),
            "budget_seconds": round(budget, 2),
            "heal_seconds": round(heal_seconds, 2),
            "seconds": round(time.perf_counter() - self.started, 2),
            **outcome["report"],
        }
        if not outcome["enabled"]:
            return self._record("rejected", outcome["reason"], summary)
        saving = units_left * per_unit * (1 - outcome["mean_blocks"] / outcome["depth"])
        summary["projected_saving_seconds"] = round(saving, 2)
        if self.options.check_saving and saving < heal_seconds:
            return self._record(
                "rejected", f"projected saving {saving:.1f} s is less than {heal_seconds:.1f} s spent healing", summary
            )
        self._save(outcome, summary)
        return self._record("done", None, summary)

    def _budget(self) -> float:
        if self.options.seconds is not None:
            return self.options.seconds
        elapsed = time.perf_counter() - self.started
        projected = elapsed * self.files_total / max(1, self.files_done)
        return min(MAX_SECONDS, max(MIN_SECONDS, self.options.budget_share * projected))

    def _heal(self, model, usable: dict[str, Collected], budget: float) -> dict:
        """Heal every usable modality and train its predictor on the exits that pass the gate."""
        from recall_cli.early_exit.calibrate_gate import Gate, heldout_retrieval
        from recall_cli.early_exit.heal import Healer, HealOptions

        # the passes over the sample are in the budget: one (healed exits) when the encode's states were kept, else two
        passes = sum(len(kept.data) * (1 if all(kept.features) else 2) for kept in usable.values())
        passes = 0 if self.mode == "heads" and all(all(kept.features) for kept in usable.values()) else passes
        healed_pass_seconds = passes * self.encode_seconds / self.units_done
        deadline = time.time() + budget * (1 - PREDICTOR_SHARE) - healed_pass_seconds  # that pass is in the budget
        heal_options = HealOptions(
            budget_minutes=budget / 60,
            steps=self.options.steps,
            target_compute=TARGET_COMPUTE,
            seed=self.options.seed,
            mode=self.mode,
        )
        healed, predictors, plans, report, reasons = {}, {}, {}, {"modalities": {}}, []
        gate = Gate()  # thresholds: calibrate_gate.py, or the environment
        blocks = depth_sum = 0.0
        modalities = sorted(usable)
        for position, modality in enumerate(modalities):
            share_end = time.time() + (deadline - time.time()) / (len(modalities) - position)
            sample = heal_sample(usable[modality], self.options.seed)
            healer = Healer(model, modality, heal_options)
            healed_exits, heal_report = healer.heal(sample, share_end, version=0)
            cosine = {e: heal_report["cosine"][str(e)].get("heldout_mean", 0.0) for e in healer.exits}
            retrieval = {e: heldout_retrieval(healer.healed_outputs[e], sample.teacher, sample.held) for e in cosine}
            enabled = [e for e in healer.exits if gate.passes(retrieval[e], cosine[e])]
            report["modalities"][modality] = {
                "heldout_cosine": {str(e): round(c, 4) for e, c in cosine.items()},
                "heldout_retrieval": {str(e): _rounded(r) for e, r in retrieval.items()},
                "enabled_exits": enabled,
                "steps": sum(stage["steps"] for stage in heal_report["stages"]),
                "reused_encode_states": heal_report["reused_encode_states"],
            }
            if not enabled:
                reasons.append(gate.reason(modality, retrieval, cosine))
                continue
            predictor, plan, mean_blocks = _predictor(healer, sample, enabled, heal_report)
            report["modalities"][modality]["label_mean_blocks"] = round(mean_blocks, 3)
            healed[modality], predictors[modality], plans[modality] = healed_exits, predictor, plan
            heal_report["calibration"] = report["modalities"][modality]
            report.setdefault("heal_reports", {})[modality] = heal_report
            blocks += mean_blocks * len(sample.data)
            depth_sum += plan.depth * len(sample.data)
        return {
            "enabled": bool(healed),
            "reason": "; ".join(reasons),
            "healed": healed,
            "predictors": predictors,
            "plans": plans,
            "mean_blocks": blocks,
            "depth": depth_sum or 1.0,
            "report": {"modalities": report["modalities"]},
            "heal_reports": report.get("heal_reports", {}),
        }

    def _save(self, outcome: dict, summary: dict) -> None:
        """Write the healed exits and predictor as the next adapter version and make it current."""
        from recall_cli.early_exit import predictor as exit_predictor
        from recall_cli.early_exit.adapters import save_healed
        from recall_cli.early_exit.heal_run import make_current, next_version
        from recall_cli.storage.layout import PREDICTOR_FILE, version_dir

        version = next_version(self.db_dir)
        for item in outcome["healed"].values():
            item.version = version
        folder = version_dir(self.db_dir, version)
        report = {
            "version": version,
            "model": self.model_name,
            "calibration": True,
            "options": asdict(self.options),
            "modalities": outcome["heal_reports"],
        }
        save_healed(folder, outcome["healed"], report)
        exit_predictor.save_predictors(
            folder / PREDICTOR_FILE, self.model_name, outcome["predictors"], outcome["plans"]
        )
        make_current(self.db_dir, version)  # last: an interrupted save leaves the index unhealed
        summary["version"] = version

    def _record(self, status: str, reason: str | None, summary: dict | None = None) -> bool:
        state = {"status": status, "reason": reason, "at": time.time(), **(summary or {})}
        write_calibration(self.manifest, state)
        if reason:
            log.debug("calibration %s: %s", status, reason)  # `recall stats` shows it; stderr stays quiet
        return status == "done"


def _rounded(figures: dict) -> dict:
    return {name: round(value, 4) if isinstance(value, float) else value for name, value in figures.items()}


def _predictor(healer, sample, enabled: list[int], heal_report: dict):
    """The exit predictor over the enabled exits (and full depth): (predictor, plan, mean blocks of
    its labels)."""
    from recall_cli.early_exit import predictor as exit_predictor
    from recall_cli.early_exit.heal import choose_labels
    from recall_cli.early_exit.plan import ExitPlan

    plan = ExitPlan(healer.plan.depth, healer.plan.k0, tuple(enabled) + (healer.plan.depth,))
    per_exit = {e: healer.healed_outputs[e] for e in enabled}
    labels, threshold = choose_labels(per_exit, sample.teacher, plan.points, TARGET_COMPUTE)
    predictor, predictor_report = exit_predictor.train_predictor(
        healer.superficial, labels, plan.points, groups=sample.files, seed=0
    )
    mean_blocks = sum(labels) / len(labels)
    heal_report.update(label_threshold=threshold, label_mean_blocks=mean_blocks, predictor=predictor_report)
    return predictor, plan, mean_blocks
