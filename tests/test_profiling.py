"""The stage profile of an index run (`recall index --profile`): wall and CPU seconds per stage."""

from __future__ import annotations

import time

from recall_cli import profiling


def test_each_stage_gets_its_own_wall_and_cpu_seconds_without_the_stages_inside_it():
    profile = profiling.start()
    try:
        with profiling.stage("outer"):
            time.sleep(0.05)  # wall, no CPU
            with profiling.stage("inner"):
                deadline = time.process_time() + 0.05
                while time.process_time() < deadline:  # CPU
                    pass
    finally:
        profiling.stop()
    assert profile.cpu_seconds["inner"] >= 0.045 and profile.cpu_seconds["outer"] < 0.03
    assert profile.seconds["outer"] >= 0.045 and profile.seconds["inner"] >= 0.045
    report = profile.report()
    assert "CPU" in report.splitlines()[1] and "inner" in report and "(not in a stage)" in report
    assert profiling.stage("after") is profiling.stage("stopped")  # off: one shared do-nothing context
