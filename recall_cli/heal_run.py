"""A whole `recall heal` run: sample the collection, heal each modality (heal.py), train the exit
predictor, save a new adapter version, then bring stale coarse embeddings up to date.

Locks: training holds `<db>/heal.lock` only (indexing and watching go on meanwhile); the final
phase that rewrites rows takes the index's writer lock.  The new version becomes current only
after all its files are written, so an interrupted heal leaves the previous adapters in use.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import time
from pathlib import Path
from typing import Callable

import torch

from .errors import RecallError
from .paths import real_path
from .heal import (HEAL_LOCK, MIN_UNITS, CURRENT_FILE, HealOptions, Healer, Sample, adapters_root,
                   choose_labels, current_version, save_healed, version_dir)

log = logging.getLogger("recall")

TRAIN_SHARE = 0.75  # of the budget, counted from the start; then the predictor and saving
PASSES_SHARE = 0.25  # of the budget for the two forward passes over the sample (before / after training)
HELDOUT_FILES = 0.2  # files of the sample kept out of adapter training (generalisation check)


class HealLock:
    def __init__(self, db_dir: Path):
        self.path = Path(db_dir) / HEAL_LOCK
        self.handle = None

    def __enter__(self):
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise RecallError("another `recall heal` is running on this index; wait for it to finish") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def read_rows(store, columns: list[str], where: str | None = None) -> list[dict]:
    query = store.table.search().select(columns).limit(None)
    if where:
        query = query.where(where)
    return query.to_arrow().to_pylist()


def build_samples(model, store, options: HealOptions, deadline: float) -> dict[str, Sample]:
    """Per modality: up to `options.sample` units from randomly chosen files, decoded again, with
    their full-depth teacher (the stored fine vector where the row is refined, else computed)."""
    rows = read_rows(store, ["path", "chunk", "modality", "vector", "refined"])
    by_modality: dict[str, dict[str, dict[int, dict]]] = {}
    for row in rows:
        by_modality.setdefault(row["modality"], {}).setdefault(row["path"], {})[row["chunk"]] = row
    rng = random.Random(options.seed)
    samples = {}
    for modality, files in by_modality.items():
        if modality not in model.modalities or sum(map(len, files.values())) < MIN_UNITS:
            continue
        paths = sorted(files)
        rng.shuffle(paths)
        data, teachers, owners, missing = [], [], [], []
        for path in paths:
            if len(data) >= options.sample or time.time() > deadline:
                break
            try:
                units = model.file_units(Path(real_path(path)), modality)
            except Exception:  # noqa: BLE001 - a file that no longer decodes is just not sampled
                continue
            for unit in units:
                stored = files[path].get(unit.chunk)
                if stored is None:
                    continue
                data.append(unit.data)
                owners.append(path)
                teachers.append(torch.tensor(stored["vector"]) if stored["refined"] else None)
                if not stored["refined"]:
                    missing.append(len(data) - 1)
        if len(data) < MIN_UNITS:
            continue
        if missing:  # teachers the index does not have yet: run the full model once
            computed = model.encode(modality, [data[i] for i in missing]).cpu()
            for index, vector in zip(missing, computed):
                teachers[index] = vector
        teacher = torch.nn.functional.normalize(torch.stack(teachers).float(), dim=-1)
        unique = sorted(set(owners))
        rng.shuffle(unique)
        held_files = set(unique[:int(len(unique) * HELDOUT_FILES)])
        sample = Sample(data, teacher, owners)
        sample.train = [i for i, owner in enumerate(owners) if owner not in held_files]
        sample.held = [i for i, owner in enumerate(owners) if owner in held_files]
        samples[modality] = sample
    return samples


def fit_sample_to_budget(model, modality: str, sample: Sample, seconds: float) -> None:
    """Keep only as many units as two forward passes can cover in `seconds` (timed on a probe
    batch).  The sample is in random file order, so a prefix is still a random sample."""
    probe = sample.data[:16]
    started = time.perf_counter()
    model.encode(modality, probe)
    per_unit = (time.perf_counter() - started) / len(probe)
    limit = max(4 * MIN_UNITS, int(seconds / (2.5 * per_unit)))
    if limit >= len(sample.data):
        return
    log.info("healing %s on %d of %d sampled units (budget)", modality, limit, len(sample.data))
    sample.data, sample.teacher, sample.files = sample.data[:limit], sample.teacher[:limit], sample.files[:limit]
    sample.train = [i for i in sample.train if i < limit]
    sample.held = [i for i in sample.held if i < limit]


def run_heal(db_dir: Path, options: HealOptions, progress: Callable[[str, int, float], None] | None = None,
             refresh_progress: Callable[[int, int], None] | None = None) -> dict:
    from .exits import exit_plan, save_predictors, train_predictor
    from .manifest import Manifest
    from .models import load_model
    from .store import Store

    started = time.time()
    deadline = started + options.budget_minutes * 60
    manifest = Manifest(db_dir, create=False)  # "no index" before anything is created
    try:
        model_name = manifest.get_meta("model")
    finally:
        manifest.close()
    with HealLock(db_dir):
        store = Store(db_dir)
        if model_name is None or store.table is None or store.count() == 0:
            raise RecallError("nothing is indexed yet; run `recall index PATH` first, then `recall heal`")
        model = load_model(model_name, device=options.device)
        samples = build_samples(model, store, options, started + options.budget_minutes * 60 * 0.2)
        if not samples:
            raise RecallError(f"too few indexed units to heal (need at least {MIN_UNITS} of one modality)")
        for modality, sample in samples.items():  # two passes over the sample must fit 25% of the budget
            fit_sample_to_budget(model, modality, sample, options.budget_minutes * 60 * PASSES_SHARE)
        version = next_version(db_dir)
        healed, reports, predictors, plans = {}, {}, {}, {}
        train_until = started + options.budget_minutes * 60 * TRAIN_SHARE
        modalities = sorted(samples)
        for position, modality in enumerate(modalities):
            share_end = time.time() + (train_until - time.time()) / (len(modalities) - position)
            healer = Healer(model, modality, options, progress)
            healed[modality], report = healer.heal(samples[modality], share_end, version)
            plan = exit_plan(model, modality)
            labels, threshold = choose_labels(healer.healed_outputs, samples[modality].teacher, plan.points,
                                              options.target_compute)
            predictor, predictor_report = train_predictor(healer.superficial, labels, plan.points,
                                                          groups=samples[modality].files, seed=options.seed)
            report.update(label_threshold=threshold, label_mean_blocks=sum(labels) / len(labels),
                          label_histogram={str(p): labels.count(p) for p in plan.points},
                          predictor=predictor_report)
            reports[modality], predictors[modality], plans[modality] = report, predictor, plan
        folder = version_dir(db_dir, version)
        summary = {"version": version, "model": model_name, "options": _options_dict(options),
                   "modalities": reports, "seconds_training": time.time() - started}
        save_healed(folder, healed, summary)
        from .exits import PREDICTOR_FILE

        save_predictors(folder / PREDICTOR_FILE, model_name, predictors, plans)
        summary["adapter_bytes"] = sum(f.stat().st_size for f in folder.iterdir())
        make_current(db_dir, version)
    try:
        summary["refresh"] = refresh_stale(db_dir, refresh_progress)
    except RecallError as busy:  # e.g. `recall watch` holds the writer lock: train now, refresh later
        log.warning("%s; stale rows not refreshed: run `recall heal --refresh-only` later", busy)
        summary["refresh"] = {"refreshed": 0, "skipped": str(busy)}
    summary["seconds"] = time.time() - started
    return summary


def _options_dict(options: HealOptions) -> dict:
    from dataclasses import asdict

    return asdict(options)


def next_version(db_dir: Path) -> int:
    """Above every version ever written (an interrupted heal's folder is never reused)."""
    written = [int(d.name[1:]) for d in adapters_root(db_dir).glob("v*") if d.name[1:].isdigit()]
    return max([current_version(db_dir), *written]) + 1


def make_current(db_dir: Path, version: int) -> None:
    pointer = adapters_root(db_dir) / CURRENT_FILE
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(f"{version}\n")
    os.replace(tmp, pointer)


def stale_count(db_dir: Path) -> int:
    """Coarse rows made with other adapters than the current ones."""
    version = current_version(db_dir)
    if not version:
        return 0
    from .store import Store

    store = Store(db_dir)
    return 0 if store.table is None else store.count(f"refined = false AND adapter_version != {version}")


def refresh_stale(db_dir: Path, progress: Callable[[int, int], None] | None = None, batch: int = 64) -> dict:
    """Recompute the coarse vectors of rows made with older adapters (or none), keeping each row's
    exit block.  Resumable: each written batch carries the new version, so a later run (`recall
    heal --refresh-only`) continues where this one stopped."""
    from .exits import FixedPolicy, encode_with_exits, parse_policy
    from .lock import WriterLock
    from .manifest import Manifest
    from .models import load_model
    from .cache import refresh_exits
    from .quant import encode_blob
    from .store import Store

    version = current_version(db_dir)
    if not version:
        return {"refreshed": 0, "failed": 0}
    with WriterLock(db_dir, "heal"):
        manifest = Manifest(db_dir, create=False)
        model_name = manifest.get_meta("model")
        manifest.close()
        store = Store(db_dir)
        stale = read_rows(store, ["id", "path", "chunk", "modality", "exit_block"],
                          f"refined = false AND adapter_version != {version}")
        model = load_model(model_name)
        policy = parse_policy("fixed:1", db_dir, model_name)  # carries the healed exits
        done = failed = 0
        by_key: dict[tuple, list[dict]] = {}
        for row in stale:
            by_key.setdefault((row["modality"], row["exit_block"]), []).append(row)
        for (modality, exit_block), rows in by_key.items():
            for start in range(0, len(rows), batch):
                chunk_rows = rows[start:start + batch]
                units, kept = [], []
                for row in chunk_rows:  # re-decode: the healed state must start below the adapters
                    try:
                        unit = next(u for u in model.file_units(Path(real_path(row["path"])), modality) if u.chunk == row["chunk"])
                    except Exception:  # noqa: BLE001 - gone or broken: left stale, counted
                        failed += 1
                        continue
                    units.append(unit)
                    kept.append(row)
                if not units:
                    continue
                forced = FixedPolicy(exit_block)
                forced.healed_source = policy.healed_source
                out = encode_with_exits(model, modality, [u.data for u in units], forced)
                updates = []
                for row, vector, states, block, exit_now in zip(kept, out.vectors, out.states, out.state_blocks,
                                                                 out.exits):
                    refined = exit_now == out.depth  # its exit is not healed in this version
                    updates.append({"id": row["id"], "vector": vector.tolist(), "exit_block": exit_now,
                                    "refined": refined, "adapter_version": 0 if refined else out.adapter_version,
                                    "cache": encode_blob(states, block) if states and not refined else None})
                _update_rows(store, updates)
                manifest = Manifest(db_dir, create=False)
                try:
                    for path in {row["path"] for row in kept}:
                        refresh_exits(store, manifest, path)
                finally:
                    manifest.close()
                done += len(updates)
                if progress:
                    progress(done, len(stale))
    return {"refreshed": done, "failed": failed, "stale_before": len(stale)}


def _update_rows(store, updates: list[dict]) -> None:
    """Write new vector/cache/adapter_version into existing rows (merge on id, other columns kept)."""
    import pyarrow as pa

    ids = [u["id"] for u in updates]
    from .store import sql_in

    current = store.table.search().where(sql_in("id", ids)).limit(None).to_arrow().to_pylist()
    by_id = {u["id"]: u for u in updates}
    for row in current:
        row.pop("_distance", None)
        row.update(by_id[row["id"]])
    store.upsert(current)
