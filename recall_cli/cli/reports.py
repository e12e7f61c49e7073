"""What `index`, `heal` and `stats` print for people (query results are output.py's)."""

from __future__ import annotations

import contextlib
import sys
import time

import typer

from recall_cli.paths import display_path, printable


@contextlib.contextmanager
def profiled(asked: bool):
    """`recall index --profile` (or RECALL_PROFILE=1): the stage profile on stderr at the end."""
    from recall_cli import profiling

    if not (asked or profiling.requested()):
        yield
        return
    profiling.start()
    try:
        yield
    finally:
        profile = profiling.stop()
        sys.stderr.write(profile.report() + "\n")


def report_index(summary, json_out: bool, quiet: bool) -> None:
    """An index run's summary: JSON on stdout, or one line on stderr when something changed."""
    if json_out:
        import json

        typer.echo(json.dumps(summary.as_dict()))
        return
    changed = summary.added + summary.updated + summary.moved + summary.removed + summary.failed
    if quiet or not changed:
        return  # quiet when nothing changed (cron-friendly)
    typer.echo(
        f"recall: {summary.added} added, {summary.updated} updated, {summary.moved} moved, "
        f"{summary.removed} removed, {summary.failed} failed, {summary.skipped} skipped, "
        f"{summary.unchanged} unchanged ({summary.seconds:.1f} s)",
        err=True,
    )


def format_heal(report: dict) -> str:
    lines = []
    if "version" in report:
        lines.append(f"recall: healed adapters v{report['version']} ({report['adapter_bytes'] / 1024:.0f} KiB)")
    for modality, info in report.get("modalities", {}).items():
        cos = ", ".join(f"{e}: {c.get('heldout_mean', c['train_mean']):.3f}" for e, c in info["cosine"].items())
        accuracy = info["predictor"].get("heldout_accuracy")
        lines.append(
            f"  {modality}: exits {info['exits']}, cosine to full depth (held-out files) {cos}; "
            f"predictor held-out accuracy {accuracy if accuracy is None else round(accuracy, 3)}, "
            f"mean blocks {info['label_mean_blocks']:.2f} of {info['depth']}"
        )
    refresh = report.get("refresh", {})
    lines.append(
        f"  refreshed {refresh.get('refreshed', 0)} stale coarse embeddings"
        + (f" ({refresh['failed']} could not be re-read)" if refresh.get("failed") else "")
    )
    return "\n".join(lines)


def format_stats(stats: dict) -> str:
    lines = [
        f"index        {stats['db']}",
        f"model        {stats['model']} ({stats['model_version'] or 'not loaded yet'})",
        f"precision    {_precision_line(stats.get('precision'))}",
        f"roots        {', '.join(display_path(root) for root in stats['roots']) or '-'}",
        f"files        {stats['files']}  (ok {stats['files_by_status']['ok']}, "
        f"failed {stats['files_by_status']['error']}, skipped {stats['files_by_status']['skipped']})",
    ]
    for modality, entry in sorted(stats["by_modality"].items()):
        lines.append(f"  {modality:<10} {entry['files']} files, {entry['units']} units")
    media = stats.get("media") or {}
    if media.get("files"):
        lines.append(
            f"media        {media['files']} files: {media['capture_date']} with a capture date, {media['gps']} with "
            f"GPS, {media['ocr_text']} with text read by OCR, {media['metadata_notes']} with metadata ignored"
        )
        lines += [f"  {display_path(note['path'])}: {note['note']}" for note in media.get("notes", [])[:5]]
    table = stats["table"]
    lines.append(
        f"disk         {human_bytes(stats['disk_bytes'])} (table {human_bytes(table['bytes'])}: "
        f"{table['versions']} versions, {table['data_files']} data files)"
    )
    ee = stats.get("early_exit")
    if ee and ee["units"]:
        mode = "full depth (--full)" if ee["full_depth_index"] else "early exit"
        lines.append(
            f"encoding     {mode}; {ee['compute_skipped']:.1%} of encoder blocks skipped "
            f"({ee['blocks_run']} of {ee['blocks_full']} block-units run)"
        )
        for modality, counts in sorted(ee["exit_histogram"].items()):
            bars = ", ".join(
                f"{exit_block}: {count}" for exit_block, count in sorted(counts.items(), key=lambda item: int(item[0]))
            )
            lines.append(f"  exits {modality:<6} (of {ee['depth'][modality]} blocks)  {bars}")
        lines.append(f"refinement   {ee['waiting_refinement']} units waiting")
        per_unit = f", {human_bytes(int(ee['cache_bytes_per_unit']))} per unit" if ee["cache_units"] else ""
        lines.append(
            f"cache        {human_bytes(ee['cache_bytes'])} of {human_bytes(ee['cache_budget'])} budget "
            f"({ee['cache_units']} units{per_unit})"
        )
    lines.extend(calibration_lines(stats.get("calibration")))
    healing = stats.get("healing") or {}
    if healing.get("adapter_version"):
        lines.append(
            f"healing      adapters v{healing['adapter_version']}; {healing['stale']} coarse rows stale "
            "(refresh: `recall heal --refresh-only`)"
        )
    else:
        lines.append("healing      not healed (full depth until calibration or `recall heal`)")
    when = stats["last_index_at"]
    lines.append(f"last index   {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(when)) if when else 'never'}")
    if stats["failures"]:
        lines.append("failures (first 20; retry with `recall index --retry-failed`):")
        lines.extend(f"  {display_path(item['path'])}: {printable(item['error'])}" for item in stats["failures"])
    return "\n".join(lines)


def _precision_line(precision: dict | None) -> str:
    if not precision:
        return "not chosen yet (the first index run chooses it)"
    return f"{precision['name']} ({precision['reason']})"


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def format_server_status(status: dict) -> str:
    return "\n".join(
        [
            f"server       pid {status['pid']} ({status['kind']})",
            f"index        {display_path(status['index'])}",
            f"uptime       {status['uptime_s']:.0f} s",
            f"queries      {status['queries']}",
            f"memory       {status['memory_mib']:.0f} MiB",
        ]
    )


CALIBRATION_WORDS = {
    "collecting": "not done yet: the sample files are being indexed (an index run with new files continues)",
    "healing": "interrupted while healing (the next index run with new files calibrates again)",
    "deferred": "deferred",
    "rejected": "not used, full depth",
}


def calibration_lines(state: dict | None) -> list[str]:
    """`recall stats`: the calibration of a new index's exits, in one line (plus one per modality)."""
    if not state:
        return []
    status = state.get("status")
    if status != "done":
        reason = f": {state['reason']}" if state.get("reason") else ""
        return [f"calibration  {CALIBRATION_WORDS.get(status, status)}{reason}"]
    units = sum((state.get("sample_units") or {}).values())
    lines = [
        f"calibration  v{state.get('version')} from {units} units of {state.get('sample_files')} files, "
        f"{state.get('heal_seconds', 0):.1f} s healing"
    ]
    for modality, info in sorted((state.get("modalities") or {}).items()):
        cosines = ", ".join(f"{e}: {c:.3f}" for e, c in sorted(info["heldout_cosine"].items(), key=lambda i: int(i[0])))
        enabled = ",".join(map(str, info["enabled_exits"])) or "none"
        lines.append(f"  {modality:<6} held-out cosine {cosines}; exits used {enabled}")
        retrieval = info.get("heldout_retrieval")
        if retrieval:
            k, m = next(iter(retrieval.values()))["k"], next(iter(retrieval.values()))["m"]
            shares = ", ".join(
                f"{e}: {r['candidates']:.2f}/{r['coarse']:.2f}"
                for e, r in sorted(retrieval.items(), key=lambda i: int(i[0]))
            )
            lines.append(f"  {modality:<6} held-out top-{k} found in top-{m}/top-{k}: {shares}")
    return lines
