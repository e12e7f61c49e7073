"""Stage profile of an index run (`recall index --profile`, or RECALL_PROFILE=1): seconds spent in
each stage (scan, hashing, decoding, the first k0 blocks, the predictor, regrouping, the remaining
blocks, heads, INT4 packing, writes...), printed to stderr at the end.

Off by default and then nearly free: `stage()` hands back one shared do-nothing context.  When on,
a stage's time excludes the stages nested in it, so the shares add up to the wall time (stages run
by a second thread at the same time add up to more).  Each stage also gets the process's CPU
seconds spent while it ran: on a shared machine other work inflates wall time far more than CPU
time, so CPU seconds are what compare across runs.  In the run's main thread those are the
process's (every thread: torch's own, and the threads decoding photos ahead for it, whose own
stages count them again); in any other thread (an encode worker, the overlap's encoder) the
thread's, so stages of encode workers running side by side are not counted twice."""

from __future__ import annotations

import contextlib
import os
import threading
import time

PROFILE_ENV = "RECALL_PROFILE"

_NOTHING = contextlib.nullcontext()


class Profile:
    def __init__(self):
        self.started = time.perf_counter()
        self.started_cpu = time.process_time()
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()
        self._local = threading.local()  # per thread: open stages, [name, start, nested s, start CPU, nested CPU]

    @contextlib.contextmanager
    def stage(self, name: str):
        stack = self._local.__dict__.setdefault("stack", [])
        frame = [name, time.perf_counter(), 0.0, _cpu_clock(), 0.0]
        stack.append(frame)
        try:
            yield
        finally:
            stack.pop()
            elapsed, elapsed_cpu = time.perf_counter() - frame[1], _cpu_clock() - frame[3]
            if stack:
                stack[-1][2] += elapsed
                stack[-1][4] += elapsed_cpu
            with self._lock:
                self.seconds[name] = self.seconds.get(name, 0.0) + elapsed - frame[2]
                self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + elapsed_cpu - frame[4]
                self.calls[name] = self.calls.get(name, 0) + 1

    def report(self) -> str:
        wall = time.perf_counter() - self.started
        cpu = time.process_time() - self.started_cpu
        rows = sorted(self.seconds.items(), key=lambda item: -item[1])
        rows.append(("(not in a stage)", max(0.0, wall - sum(self.seconds.values()))))
        outside_cpu = max(0.0, cpu - sum(self.cpu_seconds.values()))
        lines = [f"profile: {wall:.2f} s wall, {cpu:.2f} s CPU (this process, every thread)"]
        lines.append(f"  {'stage':<30} {'wall':>10}  {'share':>6}  {'CPU':>8}")
        for name, seconds in rows:
            calls = self.calls.get(name)
            stage_cpu = self.cpu_seconds.get(name, outside_cpu)
            lines.append(
                f"  {name:<30} {seconds:8.3f} s  {seconds / wall if wall else 0:6.1%}  {stage_cpu:6.3f} s"
                + (f"  ({calls} calls)" if calls else "")
            )
        return "\n".join(lines)


def _cpu_clock() -> float:
    """The process's CPU seconds in the main thread, the calling thread's in any other."""
    if threading.current_thread() is threading.main_thread():
        return time.process_time()
    return time.thread_time()


_current: Profile | None = None


def requested() -> bool:
    return os.environ.get(PROFILE_ENV, "") not in ("", "0")


def start() -> Profile:
    """Profile from now on (until stop)."""
    global _current
    _current = Profile()
    return _current


def stop() -> Profile | None:
    global _current
    profile, _current = _current, None
    return profile


def stage(name: str):
    """`with stage("hashing"): ...` counts the block's time when a profile runs."""
    profile = _current
    return _NOTHING if profile is None else profile.stage(name)


def timed(name: str, function, *args, **kwargs):
    """`function(*args, **kwargs)`, its time counted as stage `name` when a profile runs."""
    with stage(name):
        return function(*args, **kwargs)
