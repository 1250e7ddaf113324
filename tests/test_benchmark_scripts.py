"""The benchmark scripts that build compiled steps' calls by hand still run. They are not
tests and time nothing here: a script left behind by a change of a step's arguments fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_bench_sampling_runs_every_strategy():
    """``bench_sampling.py`` calls ``steps.decode`` with the chain ``generate`` compiles."""
    out = subprocess.run(
        [sys.executable, "benchmarks/bench_sampling.py", "--model", "pypi:smollm2", "--batch", "1",
         "--reps", "1", "--random-prompts"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("batch")]
    assert len(rows) == 8 and all(" ms " in row for row in rows), out.stdout
