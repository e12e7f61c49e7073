"""The precision an index is encoded in, checked rather than assumed.

`auto` picks bfloat16 on a CPU that computes it natively (models/device.py).  The first index run
that uses it encodes a small sample of its own units at bf16 and at fp32; when an embedding's
cosine to its fp32 twin is below CHECK_THRESHOLD the index falls back to fp32 for good (for this
CPU).  The outcome is kept in the manifest, so `recall stats` says which precision is in use and
why, and later runs neither repeat the check nor re-decide.
"""

from __future__ import annotations

import json
import logging

from recall_cli.errors import first_line
from recall_cli.models import build_model, load_model
from recall_cli.models.device import choose_precision, native_bf16_flag
from recall_cli.profiling import stage
from recall_cli.storage.manifest import Manifest

log = logging.getLogger("recall")

# Embeddings this close to fp32 rank the same neighbours (ImageBind-Huge and MiniLM measure
# >= 0.9999); a model or CPU that misses it by a wide margin is computing something else.
CHECK_THRESHOLD = 0.999
CHECK_UNITS = 3  # per modality: enough to catch a broken kernel, cheap next to a whole run
META_PRECISION = "precision"
META_REASON = "precision_reason"
META_CHECK = "precision_check"  # JSON: {"flag", "passed", "cosine", "units"}


def load_index_model(manifest: Manifest, model_name: str, options):
    """The model for an index run and whether its precision still needs the check (check_precision,
    given the first units to encode)."""
    dtype = "fp32" if options.dtype is None and _failed_check(manifest) else options.dtype
    with stage("model load"):
        model = load_model(model_name, options.device, dtype, options.weights)
    return model, _settle_without_check(manifest, model, options)


def check_precision(manifest: Manifest, options, model, units) -> object:
    """Compare a sample of `units` at the model's precision with fp32; record the outcome; the model
    to encode with (an fp32 one when the check failed)."""
    precision = choose_precision(model.device, options.dtype)
    try:
        with stage("precision check"):
            reference = build_model(model.name, options.device, "fp32", options.weights)
            cosine, checked = sample_cosine(model, reference, units)
    except Exception as error:  # a unit the model cannot encode is its file's problem, not the run's
        log.warning("precision check skipped this run: %s", first_line(error))
        _record(manifest, "bf16", f"{precision.reason}; not checked yet (the next run checks it)")
        return model
    passed = cosine >= CHECK_THRESHOLD
    check = {"flag": native_bf16_flag(), "passed": passed, "cosine": round(cosine, 6), "units": checked}
    with manifest.transaction():
        manifest.set_meta(META_CHECK, json.dumps(check))
        _record(manifest, "bf16" if passed else "fp32", _reason(precision.reason, check))
    return model if passed else reference


def sample_cosine(model, reference, units) -> tuple[float, int]:
    """The lowest cosine between `model`'s and `reference`'s full-depth embeddings of up to
    CHECK_UNITS units of each modality, and how many units that was."""
    by_modality: dict[str, list] = {}
    for unit in units:
        if len(by_modality.setdefault(unit.modality, [])) < CHECK_UNITS:
            by_modality[unit.modality].append(unit.data)
    lowest, count = 1.0, 0
    for modality, data in by_modality.items():
        ours = model.encode(modality, data).float().cpu()
        exact = reference.encode(modality, data).float().cpu()
        cosines = (ours * exact).sum(-1) / (ours.norm(dim=-1) * exact.norm(dim=-1)).clamp(min=1e-12)
        lowest = min(lowest, float(cosines.min()))
        count += len(data)
    return lowest, count


def stored_precision(manifest: Manifest) -> dict | None:
    """{"name", "reason"} as the last index run recorded it (None: never recorded)."""
    name = manifest.get_meta(META_PRECISION)
    return {"name": name, "reason": manifest.get_meta(META_REASON) or ""} if name else None


def _settle_without_check(manifest: Manifest, model, options) -> bool:
    """Record the precision when no check is due; True when the check is still to be made."""
    precision = choose_precision(model.device, options.dtype)
    if not (precision.automatic and precision.name == "bf16"):
        _record(manifest, precision.name, precision.reason)
        return False
    check = _stored_check(manifest)
    if check is None:
        return True
    _record(manifest, "bf16" if check["passed"] else "fp32", _reason(precision.reason, check))
    return False


def _stored_check(manifest: Manifest) -> dict | None:
    """The check made on this CPU kind (a copied index is checked again on another CPU)."""
    try:
        check = json.loads(manifest.get_meta(META_CHECK) or "null")
    except ValueError:
        return None
    return check if isinstance(check, dict) and check.get("flag") == native_bf16_flag() else None


def _failed_check(manifest: Manifest) -> bool:
    check = _stored_check(manifest)
    return check is not None and not check.get("passed")


def _reason(auto_reason: str, check: dict) -> str:
    measured = f"cosine {check['cosine']:.5f} to fp32 on {check['units']} units"
    if check["passed"]:
        return f"{auto_reason}; checked: {measured}"
    return f"{auto_reason}, but bf16 failed its check ({measured}, below {CHECK_THRESHOLD}): fp32 instead"


def _record(manifest: Manifest, name: str, reason: str) -> None:
    if manifest.get_meta(META_PRECISION) != name or manifest.get_meta(META_REASON) != reason:
        manifest.set_meta(META_PRECISION, name)
        manifest.set_meta(META_REASON, reason)
