"""Run python or recall in a child process under a restriction: a file size limit, or bound by
file permissions although the tests run as root (root without the capabilities that bypass them,
or the user nobody)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

# Starts a python command under a restriction: a launcher rather than preexec_fn, since forking a
# process that runs lancedb's threads and then running Python code in the child can deadlock.
LAUNCH = """
import ctypes, os, resource, signal, sys
how, value, command = sys.argv[1], sys.argv[2], sys.argv[3:]
if how == "fsize":  # writes past the limit fail with EFBIG instead of killing the process
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(value), int(value)))
elif how == "nodac":  # root without these is bound by permission bits like anyone (PR_CAPBSET_DROP)
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
elif how == "nobody":
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
os.execv(sys.executable, [sys.executable, *command])
"""


def python(*args, under=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    """`python ARGS...` in the repository, under (how, value) of LAUNCH when given."""
    command = [sys.executable, *map(str, args)]
    if under is not None:
        command = [sys.executable, "-c", LAUNCH, under[0], str(under[1]), *command[1:]]
    return subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env=dict(os.environ, **(env or {})), timeout=timeout
    )


def recall(*args, under=None, env=None) -> subprocess.CompletedProcess:
    return python("-m", "recall_cli", *args, under=under, env=env)


def binds(under, base: Path, env=None) -> tuple[bool, str]:
    """Whether python started `under` that restriction runs recall's code but cannot write into
    a 0500 folder; and what it said."""
    probe = base / "probe"
    probe.mkdir(mode=0o500)
    try:
        code = f"import recall_cli, os; print('ran'); open(os.path.join({str(probe)!r}, 'x'), 'w')"
        result = python("-c", code, under=under, env=env, timeout=60)
    finally:
        probe.chmod(0o700)
        shutil.rmtree(probe, ignore_errors=True)
    last = (result.stderr.strip().splitlines() or ["it could write there"])[-1]
    return result.stdout.strip() == "ran" and last.startswith("PermissionError"), last
