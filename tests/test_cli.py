"""CLI surface: help stays light, completions are current, stats, commands not yet available."""

import json
import subprocess
import sys

from conftest import REPO, run_recall, write_files

from recall_cli.cli.completions import SHELLS, completion_script


def test_help_lists_commands_without_loading_heavy_modules():
    probe = (
        "import sys; from recall_cli.cli.commands import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('MODULES', 'torch' in sys.modules, 'lancedb' in sys.modules)"
    )
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    for command in ("index", "query", "watch", "heal", "stats"):
        assert command in output
    assert "MODULES False False" in output


def test_python_dash_m_and_version():
    done = run_recall("--version")
    assert done.returncode == 0 and done.stdout.startswith("recall ")


def test_shipped_completions_are_current():
    for shell, filename in SHELLS.items():
        shipped = (REPO / "completions" / filename).read_text()
        assert shipped == completion_script(shell), f"regenerate: make completions ({filename})"


def test_stats_counts_and_json(cli, tmp_path):
    root = tmp_path / "files"
    write_files(root, {"a.md": "alpha notes", "b.txt": "beta notes", "c.bin": bytes(range(256))})
    assert cli("index", root).exit_code == 0
    stats = json.loads(cli("stats", "--json").stdout)
    assert stats["model"] == "minilm" and stats["files"] == 3
    assert stats["files_by_status"] == {"ok": 2, "error": 0, "skipped": 1}
    assert stats["by_modality"] == {"text": {"files": 2, "units": 2}}
    assert stats["disk_bytes"] > 0 and stats["last_index_at"] is not None
    human = cli("stats").stdout
    assert "minilm" in human and "text       2 files, 2 units" in human


def test_stats_loads_neither_torch_nor_lancedb(cli, db_dir, tmp_path):
    """`recall stats` reads the manifest and the adapter pointer only: instant, even from cron."""
    write_files(tmp_path / "notes", {"a.txt": "a short note about kayaks"})
    assert cli("index", tmp_path / "notes").exit_code == 0
    probe = (
        "import sys; from recall_cli.cli.commands import app\n"
        f"try:\n    app(['stats', '--db', {str(db_dir)!r}])\nexcept SystemExit:\n    pass\n"
        "print('MODULES', 'torch' in sys.modules, 'lancedb' in sys.modules)"
    )
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "files" in output and "MODULES False False" in output


def test_stats_on_missing_index_is_a_clear_error(cli):
    result = cli("stats")
    assert result.exit_code == 2 and "no index" in result.stderr


def test_stats_reports_healing_state(cli, tmp_path):
    root = tmp_path / "files"
    write_files(root, {"a.md": "alpha notes"})
    assert cli("index", root).exit_code == 0
    stats = json.loads(cli("stats", "--json").stdout)
    assert stats["healing"] == {"adapter_version": 0, "stale": 0}
    assert "not healed" in cli("stats").stdout
