"""Command-line options that several commands take, declared once so that their spelling and help
cannot drift between commands."""

from __future__ import annotations

import typer

ModelOption = typer.Option(None, "--model", "-m", help="Embedding model for a new index: minilm, imagebind-huge.")
DeviceOption = typer.Option(None, "--device", help="auto, cpu, cuda or mps.")
DtypeOption = typer.Option(
    None,
    "--dtype",
    help="Precision: auto (bf16 on a CPU with native bfloat16, checked against fp32; else fp32; fp16 on GPUs), "
    "fp32, bf16 or fp16.",
)
WeightsOption = typer.Option(None, "--weights", help="Model weights file or folder (manual placement).")
HiddenOption = typer.Option(False, "--hidden", help="Include hidden files and directories.")
NoIgnoreOption = typer.Option(
    False, "--no-ignore", help="Disregard .gitignore/.ignore/.recallignore and the OS-junk list."
)
ExcludeOption = typer.Option(
    [], "--exclude", "-x", help="Skip paths matching this gitignore-style glob (repeatable).", metavar="GLOB"
)
FollowOption = typer.Option(
    False, "--follow", "-L", help="Follow symlinks that lead out of the indexed directories (never by default)."
)
DbOption = typer.Option(
    None, "--db", help="Index directory (default: $RECALL_DB, else the per-user data dir).", metavar="DIR"
)
