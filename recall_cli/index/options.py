"""What an index run is asked to do (IndexOptions), what it reports (IndexSummary), and the checks
made before it writes anything: the roots exist, and the index stays bound to one model."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from recall_cli.errors import REBUILD_HINT, RecallError
from recall_cli.index.scan import ScanOptions, normalize_root
from recall_cli.models import DEFAULT_MODEL, check_model_name
from recall_cli.paths import json_safe
from recall_cli.storage.manifest import Manifest


@dataclass
class IndexSummary:
    scanned: int = 0
    unchanged: int = 0
    added: int = 0
    updated: int = 0
    moved: int = 0  # new paths whose content was already indexed (no re-encode)
    removed: int = 0
    skipped: int = 0  # not a type the model embeds
    failed: int = 0
    units_encoded: int = 0
    blocks_run: int = 0  # encoder blocks run for the encoded units (early exit: fewer than full)
    blocks_full: int = 0  # what full depth would have run
    cache_bytes: int = 0  # INT4 activation cache written this run
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "failures"} | {
            "failures": [json_safe({"path": path, "error": error}) for path, error in self.failures]
        }


@dataclass
class IndexOptions:
    model: str | None = None  # None: the index's model, or the default for a new index
    scan: ScanOptions = field(default_factory=ScanOptions)
    retry_failed: bool = False
    device: str | None = None
    dtype: str | None = None
    weights: str | None = None
    full: bool = False  # --full: this index runs every block for every file, from now on
    exit_policy: str | None = None  # early_exit.policy.parse_policy spec; None: $RECALL_EXIT_POLICY or auto
    cache_budget: str | None = None  # e.g. "2GiB"; stored in the index
    ocr: bool = True  # read text inside images (False: --no-ocr; $RECALL_OCR=0 turns it off too)


def bind_model(manifest: Manifest, requested: str | None) -> str:
    """The model this index uses; a new index takes `requested` (or the default)."""
    stored = manifest.get_meta("model")
    if stored is None:
        name = check_model_name(requested or DEFAULT_MODEL)
        manifest.set_meta("model", name)
        manifest.set_meta("created_at", str(time.time()))
        return name
    if requested and requested != stored:
        raise RecallError(
            f"this index was built with model {stored!r}, not {requested!r}; "
            f"drop --model, or use another --db for {requested}, or replace this index "
            f"with `recall index --rebuild --model {requested} PATH...`"
        )
    return stored


def check_model_version(manifest: Manifest, model) -> None:
    stored = manifest.get_meta("model_version")
    if stored is None:
        manifest.set_meta("model_version", model.version)
        manifest.set_meta("dim", str(model.dim))
    elif stored != model.version:
        raise RecallError(
            f"this index was built with {stored}, but the installed model is "
            f"{model.version}; {REBUILD_HINT}, or use another --db"
        )


def check_roots(roots: list[str]) -> list[str]:
    """Every root must exist: a missing or unmounted root is an error, never 'all deleted'."""
    checked = []
    for root in roots:
        resolved = normalize_root(root)
        if not os.path.isdir(resolved):
            what = "is not a directory" if os.path.exists(resolved) else "does not exist"
            raise RecallError(f"{root} {what}; give directories to index (is a drive unmounted?)")
        checked.append(resolved)
    return checked
