"""Where the index lives: --db DIR, else $RECALL_DB, else the per-user data directory."""

from __future__ import annotations

import os
from pathlib import Path

DB_ENV = "RECALL_DB"


def default_db_dir() -> Path:
    """XDG data dir on Linux ($XDG_DATA_HOME/recall), platformdirs elsewhere."""
    import platformdirs

    return Path(platformdirs.user_data_dir("recall", appauthor=False)) / "index"


def resolve_db(db: str | os.PathLike | None) -> Path:
    chosen = db or os.environ.get(DB_ENV)
    return Path(chosen).expanduser().absolute() if chosen else default_db_dir()


def ensure_private_dir(path: Path) -> Path:
    """Create the index directory readable by its owner only (0700)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.chmod(path, 0o700)
    except OSError:
        pass
    return path


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
