"""Shell completion scripts for bash, zsh and fish, generated from the Typer app.

`python -m recall_cli.cli.completions DIR` (re)writes them; a test checks the shipped ones are
current.  The scripts ask `recall` itself for candidates, so they follow new options automatically.
"""

from __future__ import annotations

import sys
from pathlib import Path

SHELLS = {"bash": "recall.bash", "zsh": "_recall", "fish": "recall.fish"}


def completion_script(shell: str) -> str:
    from typer._completion_shared import get_completion_script

    return get_completion_script(prog_name="recall", complete_var="_RECALL_COMPLETE", shell=shell).rstrip() + "\n"


def write_all(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for shell, filename in SHELLS.items():
        (directory / filename).write_text(completion_script(shell))


if __name__ == "__main__":
    write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "completions"))
