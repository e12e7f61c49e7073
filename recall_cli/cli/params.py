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
NoOcrOption = typer.Option(
    False, "--no-ocr", help="Do not read text inside images (also: RECALL_OCR=0); names and metadata still count."
)

# media metadata filters of `recall query` (query/mediafilter.py)
TakenAfterOption = typer.Option(
    None, "--taken-after", help="Only media taken on or after DATE (else file time).", metavar="DATE"
)
TakenBeforeOption = typer.Option(
    None, "--taken-before", help="Only media taken on or before DATE (else file time).", metavar="DATE"
)
CameraOption = typer.Option(None, "--camera", help="Only photos from a camera named like TEXT.", metavar="TEXT")
NearOption = typer.Option(
    None, "--near", help="Only media taken near PLACE ('Lisbon', 'Paris, FR') or 'LAT,LON[,KM]'.", metavar="PLACE"
)
ArtistOption = typer.Option(None, "--artist", help="Only audio and video whose artist contains TEXT.", metavar="TEXT")
