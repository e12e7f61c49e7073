"""Shared fixtures: run the real CLI in-process, and build small real folders to index."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recall_cli.cli.commands import app

REPO = Path(__file__).resolve().parent.parent

os.environ.setdefault("RECALL_DEVICE", "cpu")
# the suite compares models with their references in fp32; the automatic precision (bf16 on a CPU
# with native bfloat16) is tested on its own in tests/test_precision.py
os.environ.setdefault("RECALL_DTYPE", "fp32")
# a query would leave a query server running per test index: only the tests of that feature want one
os.environ.setdefault("RECALL_SERVER_AUTOSTART", "0")
# a new index calibrates its exits by default; tests/test_calibrate.py turns it on for itself, the
# other tests keep their full-depth indexes (and their time)
os.environ.setdefault("RECALL_CALIBRATE", "0")


class Cli:
    """`cli("query", "x", "--json")` -> click Result with exit_code, stdout, stderr."""

    def __init__(self, db: Path):
        self.db = db
        self.runner = CliRunner()

    def __call__(self, *args, stdin: str | None = None, db: bool = True):
        argv = [str(arg) for arg in args]
        if db:
            argv += ["--db", str(self.db)]
        result = self.runner.invoke(app, argv, input=stdin, catch_exceptions=False)
        return result


@pytest.fixture
def db_dir(tmp_path) -> Path:
    return tmp_path / "db"


@pytest.fixture
def cli(db_dir) -> Cli:
    return Cli(db_dir)


def write_files(root: Path, files: dict[str, str | bytes]) -> None:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def run_recall(*args, stdin: str | None = None, env: dict | None = None, timeout: int = 300):
    """The real `recall` in a fresh process (for import-cost and stdin/exit-code checks)."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "recall_cli", *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=REPO,
    )


def assert_clear_error(result, *phrases) -> None:
    """Exit 2, and stderr is one line `recall: ...` naming the problem (and each phrase): the
    contract for errors, checked on a CliRunner result or a subprocess result alike."""
    code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode(errors="replace")
    lines = stderr.strip().splitlines()
    assert code == 2, (code, stderr)
    assert len(lines) == 1 and lines[0].startswith("recall: "), stderr
    assert "Traceback" not in stderr and "unexpected error" not in stderr, stderr
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])


# a few short notes on distinct topics: enough for a query server to rank
SMALL_NOTES = {
    "trips/kayak.md": "Paddling the red kayak across the lake at sunset, the water was calm.",
    "trips/train.txt": "Train timetable from Berlin to Munich, departures every hour.",
    "home/recipe.txt": "Grandma's apple pie: flour, butter, sliced apples, cinnamon and sugar.",
    "home/taxes.txt": "Household documents: insurance, tax returns and the car's service history.",
    "code/fib.py": "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
}


def count_blocks(model, monkeypatch):
    """Wrap model.block: record (block index, sequences in the call)."""
    calls = []
    original = model.block

    def counted(modality, index, hidden, mask):
        calls.append((index, int(hidden.shape[0])))
        return original(modality, index, hidden, mask)

    monkeypatch.setattr(model, "block", counted)
    return calls
