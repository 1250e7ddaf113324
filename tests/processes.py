"""Running a CLI command in a child process and killing it midway (resume tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def kill_midway(config: Path, results: Path, ready: Callable[[bytes], bool]) -> None:
    """Start ``phijax run config`` and SIGKILL it once ``ready(results file bytes)`` holds;
    fails if the run ends first (nothing would have been tested)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "phijax.cli", "run", str(config), "--quiet", "--no-plots"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and ready(results.read_bytes()):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
