"""A whole `recall heal` run: sample the collection, heal each modality (heal.py), train the exit
predictor (predictor.py), save a new adapter version (adapters.py), then bring stale coarse
embeddings up to date.

Locks: training holds `<db>/heal.lock` only (indexing and watching go on meanwhile); the final
phase that rewrites rows takes the index's writer lock.  The new version becomes current only
after all its files are written, so an interrupted heal leaves the previous adapters in use.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch

from recall_cli.early_exit import predictor as exit_predictor
from recall_cli.early_exit.adapters import save_healed
from recall_cli.early_exit.heal import Healer, HealOptions, Sample, choose_labels
from recall_cli.errors import RecallError
from recall_cli.paths import real_path
from recall_cli.storage.layout import CURRENT_FILE, PREDICTOR_FILE, adapters_root, current_version, version_dir
from recall_cli.storage.lock import HealLock

log = logging.getLogger("recall")

SAMPLING_SHARE = 0.2  # of the budget, counted from the start, for decoding the sample again
TRAIN_SHARE = 0.75  # of the budget, counted from the start; then the predictor and saving
PASSES_SHARE = 0.25  # of the budget for the two forward passes over the sample (before / after training)
HELDOUT_FILES = 0.2  # files of the sample kept out of adapter training (generalisation check)
MIN_UNITS = 16  # fewer units of a modality than this: nothing worth healing
STALE_WHERE = "refined = false AND adapter_version != {version}"  # coarse rows made with other adapters


def read_rows(store, columns: list[str], where: str | None = None) -> list[dict]:
    query = store.table.search().select(columns).limit(None)
    if where:
        query = query.where(where)
    return query.to_arrow().to_pylist()


# ------------------------------------------------------------------------------------------------
# the training sample
# ------------------------------------------------------------------------------------------------


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
        data, teachers, owners = _decode_units(model, modality, files, paths, options.sample, deadline)
        if len(data) < MIN_UNITS:
            continue
        samples[modality] = _split_sample(data, _full_teachers(model, modality, data, teachers), owners, rng)
    return samples


def _decode_units(
    model, modality: str, files: dict[str, dict[int, dict]], paths: list[str], limit: int, deadline: float
) -> tuple[list, list, list[str]]:
    """Decode the files in `paths` order until `limit` units or `deadline`: (unit data, stored fine
    vector or None where the row is coarse, file of each unit)."""
    data, teachers, owners = [], [], []
    for path in paths:
        if len(data) >= limit or time.time() > deadline:
            break
        try:
            units = model.file_units(Path(real_path(path)), modality)
        except Exception:  # a file that no longer decodes is just not sampled
            continue
        for unit in units:
            stored = files[path].get(unit.chunk)
            if stored is None:
                continue
            data.append(unit.data)
            owners.append(path)
            teachers.append(torch.tensor(stored["vector"]) if stored["refined"] else None)
    return data, teachers, owners


def _full_teachers(model, modality: str, data: list, teachers: list) -> torch.Tensor:
    """[n, dim] unit-norm full-depth embeddings; those the index does not hold yet (coarse rows)
    are computed by one run of the full model."""
    missing = [index for index, teacher in enumerate(teachers) if teacher is None]
    if missing:
        computed = model.encode(modality, [data[i] for i in missing]).cpu()
        for index, vector in zip(missing, computed, strict=True):
            teachers[index] = vector
    return torch.nn.functional.normalize(torch.stack(teachers).float(), dim=-1)


def _split_sample(data: list, teacher: torch.Tensor, owners: list[str], rng: random.Random) -> Sample:
    """Hold out HELDOUT_FILES of the files (all their units) from adapter training."""
    unique = sorted(set(owners))
    rng.shuffle(unique)
    held_files = set(unique[: int(len(unique) * HELDOUT_FILES)])
    sample = Sample(data, teacher, owners)
    sample.train = [i for i, owner in enumerate(owners) if owner not in held_files]
    sample.held = [i for i, owner in enumerate(owners) if owner in held_files]
    return sample


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


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------


def run_heal(
    db_dir: Path,
    options: HealOptions,
    progress: Callable[[str, int, float], None] | None = None,
    refresh_progress: Callable[[int, int], None] | None = None,
) -> dict:
    from recall_cli.models import load_model
    from recall_cli.storage.manifest import Manifest
    from recall_cli.storage.table import Store

    started = time.time()
    budget_s = options.budget_minutes * 60
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
        samples = build_samples(model, store, options, started + budget_s * SAMPLING_SHARE)
        if not samples:
            raise RecallError(f"too few indexed units to heal (need at least {MIN_UNITS} of one modality)")
        for modality, sample in samples.items():  # two passes over the sample must fit 25% of the budget
            fit_sample_to_budget(model, modality, sample, budget_s * PASSES_SHARE)
        version = next_version(db_dir)
        if options.warm_from is None and current_version(db_dir):  # improve on calibration's (or the last) version
            options.warm_from = str(version_dir(db_dir, current_version(db_dir)))
        healed, reports, predictors, plans = _heal_modalities(
            model, samples, options, version, progress, started + budget_s * TRAIN_SHARE
        )
        folder = version_dir(db_dir, version)
        summary = {
            "version": version,
            "model": model_name,
            "options": _options_dict(options),
            "modalities": reports,
            "seconds_training": time.time() - started,
        }
        save_healed(folder, healed, summary)
        exit_predictor.save_predictors(folder / PREDICTOR_FILE, model_name, predictors, plans)
        summary["adapter_bytes"] = sum(f.stat().st_size for f in folder.iterdir())
        make_current(db_dir, version)
    try:
        summary["refresh"] = refresh_stale(db_dir, refresh_progress)
    except RecallError as busy:  # e.g. `recall watch` holds the writer lock: train now, refresh later
        log.warning("%s; stale rows not refreshed: run `recall heal --refresh-only` later", busy)
        summary["refresh"] = {"refreshed": 0, "skipped": str(busy)}
    summary["seconds"] = time.time() - started
    return summary


def _heal_modalities(
    model,
    samples: dict[str, Sample],
    options: HealOptions,
    version: int,
    progress: Callable[[str, int, float], None] | None,
    train_until: float,
) -> tuple[dict, ...]:
    """Heal each modality and train its predictor: (healed, reports, predictors, plans) by modality.
    The training time left is shared equally by the modalities not done yet, so one that finishes
    early leaves its time to the others."""
    healed, reports, predictors, plans = {}, {}, {}, {}
    modalities = sorted(samples)
    for position, modality in enumerate(modalities):
        share_end = time.time() + (train_until - time.time()) / (len(modalities) - position)
        healer = Healer(model, modality, options, progress)
        healed[modality], reports[modality] = healer.heal(samples[modality], share_end, version)
        predictors[modality], plans[modality] = _train_exit_predictor(
            healer, samples[modality], options, reports[modality]
        )
    return healed, reports, predictors, plans


def _train_exit_predictor(healer: Healer, sample: Sample, options: HealOptions, report: dict):
    """The predictor of one healed modality, on labels from its healed exits; adds its figures to `report`."""
    plan = healer.plan
    labels, threshold = choose_labels(healer.healed_outputs, sample.teacher, plan.points, options.target_compute)
    predictor, predictor_report = exit_predictor.train_predictor(
        healer.superficial, labels, plan.points, groups=sample.files, seed=options.seed
    )
    report.update(
        label_threshold=threshold,
        label_mean_blocks=sum(labels) / len(labels),
        label_histogram={str(p): labels.count(p) for p in plan.points},
        predictor=predictor_report,
    )
    return predictor, plan


def _options_dict(options: HealOptions) -> dict:
    from dataclasses import asdict

    return asdict(options)


# ------------------------------------------------------------------------------------------------
# versions
# ------------------------------------------------------------------------------------------------


def next_version(db_dir: Path) -> int:
    """Above every version ever written (an interrupted heal's folder is never reused)."""
    written = [int(d.name[1:]) for d in adapters_root(db_dir).glob("v*") if d.name[1:].isdigit()]
    return max([current_version(db_dir), *written]) + 1


def make_current(db_dir: Path, version: int) -> None:
    """Point CURRENT at `version`, atomically (a reader sees the old version or the new one)."""
    pointer = adapters_root(db_dir) / CURRENT_FILE
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(f"{version}\n")
    os.replace(tmp, pointer)


# ------------------------------------------------------------------------------------------------
# stale rows
# ------------------------------------------------------------------------------------------------


def stale_count(db_dir: Path) -> int:
    """Coarse rows made with other adapters than the current ones."""
    version = current_version(db_dir)
    if not version:
        return 0
    from recall_cli.storage.table import Store

    store = Store(db_dir)
    return 0 if store.table is None else store.count(STALE_WHERE.format(version=version))


def refresh_stale(db_dir: Path, progress: Callable[[int, int], None] | None = None, batch: int = 64) -> dict:
    """Recompute the coarse vectors of rows made with older adapters (or none), keeping each row's
    exit block.  Resumable: each written batch carries the new version, so a later run (`recall
    heal --refresh-only`) continues where this one stopped."""
    from recall_cli.early_exit.policy import parse_policy
    from recall_cli.models import load_model
    from recall_cli.storage.lock import WriterLock
    from recall_cli.storage.manifest import Manifest
    from recall_cli.storage.table import Store

    version = current_version(db_dir)
    if not version:
        return {"refreshed": 0, "failed": 0}
    with WriterLock(db_dir, "heal"):
        manifest = Manifest(db_dir, create=False)
        model_name = manifest.get_meta("model")
        manifest.close()
        store = Store(db_dir)
        stale = read_rows(store, ["id", "path", "chunk", "modality", "exit_block"], STALE_WHERE.format(version=version))
        model = load_model(model_name)
        healed_source = parse_policy("fixed:1", db_dir, model_name).healed_source  # the healed exits, loaded once
        done = failed = 0
        by_exit: dict[tuple, list[dict]] = {}
        for row in stale:
            by_exit.setdefault((row["modality"], row["exit_block"]), []).append(row)
        for (modality, exit_block), rows in by_exit.items():
            for start in range(0, len(rows), batch):
                written, lost = _refresh_rows(
                    model, store, db_dir, modality, exit_block, rows[start : start + batch], healed_source
                )
                failed += lost
                if not written:
                    continue
                done += written
                if progress:
                    progress(done, len(stale))
    return {"refreshed": done, "failed": failed, "stale_before": len(stale)}


def _refresh_rows(
    model, store, db_dir: Path, modality: str, exit_block: int, rows: list[dict], healed_source
) -> tuple[int, int]:
    """Encode again the units of `rows` (one modality and exit block) on the current healed path and
    write them back: (rows written, rows whose file no longer gives the unit)."""
    from recall_cli.early_exit.encode import encode_with_exits
    from recall_cli.early_exit.policy import FixedPolicy

    units, kept = [], []
    for row in rows:  # re-decode: the healed state must start below the adapters
        try:
            units.append(_stored_unit(model, modality, row))
        except Exception:  # gone or broken: left stale, counted
            continue
        kept.append(row)
    if not units:
        return 0, len(rows)
    policy = FixedPolicy(exit_block)
    policy.healed_source = healed_source
    out = encode_with_exits(model, modality, [u.data for u in units], policy)
    _update_rows(store, _row_updates(kept, out))
    _refresh_exit_records(store, db_dir, {row["path"] for row in kept})
    return len(kept), len(rows) - len(kept)


def _stored_unit(model, modality: str, row: dict):
    """The unit a row was made from, decoded again from its file (StopIteration if it is gone)."""
    return next(unit for unit in model.file_units(Path(real_path(row["path"])), modality) if unit.chunk == row["chunk"])


def _row_updates(rows: list[dict], out) -> list[dict]:
    """The new column values of each row from an encode_with_exits output (same order)."""
    from recall_cli.early_exit.quant import encode_blob

    updates = []
    for row, vector, states, block, exit_now in zip(
        rows, out.vectors, out.states, out.state_blocks, out.exits, strict=True
    ):
        refined = exit_now == out.depth  # its exit is not healed in this version
        updates.append(
            {
                "id": row["id"],
                "vector": vector.tolist(),
                "exit_block": exit_now,
                "refined": refined,
                "adapter_version": 0 if refined else out.adapter_version,
                "cache": encode_blob(states, block) if states and not refined else None,
            }
        )
    return updates


def _refresh_exit_records(store, db_dir: Path, paths: set[str]) -> None:
    from recall_cli.early_exit.cache import refresh_exits
    from recall_cli.storage.manifest import Manifest

    manifest = Manifest(db_dir, create=False)
    try:
        for path in paths:
            refresh_exits(store, manifest, path)
    finally:
        manifest.close()


def _update_rows(store, updates: list[dict]) -> None:
    """Write new vector/cache/adapter_version into existing rows (merge on id, other columns kept)."""
    from recall_cli.storage.sqlfilter import sql_in

    ids = [u["id"] for u in updates]
    current = store.table.search().where(sql_in("id", ids)).limit(None).to_arrow().to_pylist()
    by_id = {u["id"]: u for u in updates}
    for row in current:
        row.pop("_distance", None)
        row.update(by_id[row["id"]])
    store.upsert(current)
