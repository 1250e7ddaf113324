"""The repository is `ruff check` and `ruff format` clean (CI runs this with the tests)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff(command):
    ruff = shutil.which("ruff") or pytest.fail(
        "ruff is a test dependency: pip install -e '.[test]'"
    )
    proc = subprocess.run([ruff, *command, str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, f"ruff {' '.join(command)}:\n{proc.stdout}{proc.stderr}"
