"""The index directory: where it lives and every file in it.  This module is the one place that
names them; everything else asks it for a path.

    <db>/                     private to its owner (0700); --db DIR, else $RECALL_DB, else the
                              per-user data directory
      manifest.sqlite         the manifest (SQLite): one row per file (hash, size, mtime, modality,
                              status), its exit records, the index's settings and schema version
      units.lance/            the LanceDB table `units`: one row per unit (chunk, frame group...):
                              vector, exit block, INT4 activation cache
      write.lock              held by the one writer (`index`, `watch`, `heal`, a query's write-back)
      heal.lock               held while `recall heal` trains (a second heal waits or is refused)
      query.sock              the warm query server's Unix socket (0600), while one runs
      server.lock             held by the one query server of the index (on-demand or `recall watch`)
      compacted.json          the table's size after its last compaction (the base of storage/growth.py's bound)
      predictor.safetensors   the exit predictor of every modality (written by `heal`)
      adapters/CURRENT        the number of the healed version in use
      adapters/v<N>/          one healed version: lora.safetensors, heads.safetensors, heal.json
    <parent>/.<name>.rebuild-<pid>/, .<name>.old-<pid>/   `index --rebuild`: the new index while it
                              is built, and the old one between the swap and its removal
"""

from __future__ import annotations

import os
from pathlib import Path

MANIFEST_NAME = "manifest.sqlite"
TABLE_NAME = "units"
TABLE_DIR = f"{TABLE_NAME}.lance"  # named here so that the manifest can check it without lancedb
LOCK_NAME = "write.lock"
HEAL_LOCK = "heal.lock"
SOCKET_NAME = "query.sock"
SERVER_LOCK = "server.lock"
COMPACTED_FILE = "compacted.json"
PREDICTOR_FILE = "predictor.safetensors"
ADAPTERS_DIR = "adapters"
CURRENT_FILE = "CURRENT"  # inside ADAPTERS_DIR
LORA_FILE = "lora.safetensors"  # inside a version directory
HEADS_FILE = "heads.safetensors"
HEAL_REPORT = "heal.json"


def adapters_root(db_dir: Path) -> Path:
    return Path(db_dir) / ADAPTERS_DIR


def version_dir(db_dir: Path, version: int) -> Path:
    return adapters_root(db_dir) / f"v{version}"


def rebuild_dirs(db_dir: Path) -> tuple[Path, Path]:
    """(the new index while `index --rebuild` builds it, the old one between swap and removal)."""
    pid = os.getpid()
    return db_dir.parent / f".{db_dir.name}.rebuild-{pid}", db_dir.parent / f".{db_dir.name}.old-{pid}"


DB_ENV = "RECALL_DB"


def default_db_dir() -> Path:
    """XDG data dir on Linux ($XDG_DATA_HOME/recall), platformdirs elsewhere."""
    import platformdirs

    return Path(platformdirs.user_data_dir("recall", appauthor=False)) / "index"


def resolve_db(db: str | os.PathLike | None) -> Path:
    chosen = db or os.environ.get(DB_ENV)
    return Path(chosen).expanduser().absolute() if chosen else default_db_dir()


def ensure_private_dir(path: Path) -> Path:
    """Create the index directory readable by its owner only (0700).  An existing one loses its
    group/other bits but keeps its owner's: an index its owner made read-only stays read-only."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        mode = os.stat(path).st_mode & 0o7777
        if mode & 0o077:
            os.chmod(path, mode & 0o700)
    except OSError:
        pass
    return path


def prepare_index_dir(db_dir: Path) -> Path:
    """The index directory of a writer (`index`, `watch`): created private, and checked writable
    before anything is written; any problem is one clear line (errors.StorageError)."""
    from recall_cli.errors import storage_error

    try:
        ensure_private_dir(db_dir)
    except OSError as error:
        raise (storage_error(error, db_dir) or error) from None
    check_writable(db_dir)
    return db_dir


def check_writable(db_dir: Path) -> None:
    """Fail with one clear line (errors.StorageError) before anything is written when the index
    directory cannot take a new file: read-only file system or directory, no permission, no space."""
    import tempfile

    from recall_cli.errors import storage_error

    try:
        handle, probe = tempfile.mkstemp(prefix=".recall-probe-", dir=db_dir)
    except OSError as error:
        raise (storage_error(error, db_dir) or error) from None
    os.close(handle)
    os.unlink(probe)


def directory_bytes(path: Path) -> int:
    """Bytes used by the files under `path` (the index size shown by `stats`)."""
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def table_files(db_dir: Path) -> dict:
    """Versions, data files (fragments) and bytes of the units table, read from its directory (no
    lancedb): every commit adds a version, and only compaction removes old ones."""
    table = Path(db_dir) / TABLE_DIR

    def count(folder: str, suffix: str) -> int:
        try:
            return sum(name.endswith(suffix) for name in os.listdir(table / folder))
        except OSError:
            return 0

    return {
        "versions": count("_versions", ".manifest"),
        "data_files": count("data", ".lance"),
        "bytes": directory_bytes(table),
    }


def current_version(db_dir: Path) -> int:
    """The healed version in use (0: the index was never healed, or CURRENT is unreadable)."""
    pointer = adapters_root(db_dir) / CURRENT_FILE
    try:
        return int(pointer.read_text().strip())
    except (OSError, ValueError):
        return 0
