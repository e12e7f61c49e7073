"""The media side of an index run: what an index made before media text needs once, and what
`recall stats` counts.

An older index holds photos, songs and videos without their text side (a text model skipped
them; ImageBind stored only their embedding).  The manifest's text version marks them, the plan
picks them up once even though they have not changed, and here an embedding that is still
current keeps its vector and only gains its text and metadata, so the upgrade costs a metadata
read (and OCR) per file, not an encode.
"""

from __future__ import annotations

import json
from pathlib import Path

from recall_cli.storage.manifest import MEDIA_MODALITIES, FileRecord


def attach_text_side(units: list, path: str, modality: str, decoded=None) -> None:
    """A media embedding's text side (models/mediatext), stored beside it: the words the keyword
    search finds and the metadata the filters read.  Done here, not when the model decodes the
    file, so that refinement and healing, which decode files again, never run OCR; `decoded`: the
    photo the model decoded for these units (mediatext.lent), which OCR reads instead of the file."""
    from recall_cli.models.mediatext import describe

    if modality not in MEDIA_MODALITIES or not units or units[0].meta is not None:
        return  # a text model's media units are that text already
    media = describe(Path(path), modality, decoded)
    for unit in units:
        unit.snippet, unit.meta = media.text, media.meta


def media_facts(rows: list[dict]) -> dict[str, dict]:
    """Per media file among the written rows, its metadata (what the manifest counts)."""
    facts: dict[str, dict] = {}
    for row in rows:
        if row.get("modality") in MEDIA_MODALITIES and row["path"] not in facts:
            facts[row["path"]] = json.loads(row["meta"]) if row.get("meta") else {}
    return facts


def refresh_text_side(run, record: FileRecord, refreshed: FileRecord) -> bool:
    """Give an embedded media file of an older index its text side and metadata, vectors kept.
    False when it has no rows to update (then it is encoded as usual)."""
    from recall_cli.models import TEXT_ONLY_MODELS
    from recall_cli.models.mediatext import describe, meta_columns

    if run.model_name in TEXT_ONLY_MODELS:  # the text is its embedding: encoded again instead
        return False
    if record.status != "ok" or record.hash != refreshed.hash or run.store.table is None:
        return False
    media = describe(Path(refreshed.path), refreshed.modality)
    if not run.store.set_media_text(refreshed.path, media.text, meta_columns(media.meta)):
        return False
    with run.manifest.transaction():
        run.manifest.upsert([refreshed])
        run.manifest.set_media_facts({refreshed.path: media.meta})
    run.summary.updated += 1
    run.wrote = True
    return True
