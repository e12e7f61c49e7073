"""Every atheris target of tests/fuzz_targets.py runs for a few seconds and finds no crash.

libFuzzer needs a process of its own per target.  The run is bounded by time (about 40 s in all
on two cores, imports included) and starts from a fixed seed, so what it explores depends only on
how fast the machine is.  Longer runs: `python tests/fuzz_targets.py TARGET -max_total_time=600`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

HARNESS = Path(__file__).with_name("fuzz_targets.py")
# seconds of fuzzing per target: more for the decoders with the most code behind them
TARGETS = {"image": 3, "video": 3, "audio": 3, "text": 4, "sniff": 1, "query": 1, "date": 1, "ignore": 2, "exclude": 1}


@pytest.mark.parametrize("target", TARGETS)
def test_atheris_target_finds_no_crash(target, tmp_path):
    seconds = TARGETS[target]
    command = [
        sys.executable,
        str(HARNESS),
        target,
        f"-max_total_time={seconds}",
        "-seed=1",
        "-timeout=20",
        "-rss_limit_mb=4096",
        f"-artifact_prefix={tmp_path}/",
    ]
    # TMPDIR: the harness's scratch files land in tmp_path and go with it
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, env=env)
    artifacts = sorted(
        path.name
        for path in tmp_path.iterdir()
        if path.name.startswith(("crash-", "timeout-", "oom-", "leak-", "slow-unit-"))
    )
    report = "\n".join(line for line in result.stderr.splitlines() if not line.startswith("INFO: Instrumenting"))
    assert result.returncode == 0 and not artifacts, (
        f"atheris found a failing input for {target}: {artifacts} (kept in {tmp_path}; replay with "
        f"`python {HARNESS} {target} FILE`)\n{report[-4000:]}"
    )
    assert "Done" in result.stderr, report[-2000:]
