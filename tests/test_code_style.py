"""The repository is `ruff check` and `ruff format` clean (CI runs this with the tests), and its
text points only at files it contains and names things a reader can look up."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
BINARY = {".gguf", ".npz", ".png", ".so", ".pyd", ".pyc"}
SKIPPED_DIRS = {
    ".git", "build", "dist", "results", "__pycache__", ".pytest_cache", ".ruff_cache", ".venv", "venv"
}  # fmt: skip
# A markdown file named on its own or by a relative path (not inside a URL or another path).
MARKDOWN = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.md)\b")
# Markdown files phijax writes (``phijax report``), not ones the repository holds.
WRITTEN = {"report.md"}
OUTSIDE = re.compile(r"\.\./shared\b")
# "The seed" for the program or file phijax was ported from means nothing to a reader: name it
# (docs/sampling.md, docs/formats.md). A PRNG seed is fine.
SEED_AS_ORIGIN = re.compile(
    r"\bseed(?:'s\b| program| file| itself\b)|\bthe seed:|\bcandle seed\b", re.IGNORECASE
)


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff(command):
    ruff = shutil.which("ruff") or pytest.fail(
        "ruff is a test dependency: pip install -e '.[test]'"
    )
    proc = subprocess.run([ruff, *command, str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, f"ruff {' '.join(command)}:\n{proc.stdout}{proc.stderr}"


def _text_files() -> list[Path]:
    """The repository's files (tracked, or new and not ignored), or its tree outside a git
    checkout; binary files left out."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            capture_output=True, text=True, cwd=ROOT, check=True,
        ).stdout.splitlines()  # fmt: skip
        paths = [ROOT / p for p in listed]
    else:
        paths = [
            p for p in ROOT.rglob("*")
            if not SKIPPED_DIRS.intersection(p.relative_to(ROOT).parts)
            and not any(part.endswith(".egg-info") for part in p.parts)
        ]  # fmt: skip
    return [p for p in paths if p.is_file() and p.suffix not in BINARY]


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        return []


def test_no_pointers_outside_the_repository():
    """Every markdown file the text names is in the repository; nothing points at the private
    notes folder beside the checkout."""
    files = _text_files()
    held = {p.relative_to(ROOT).as_posix() for p in files} | {p.name for p in files}
    dangling = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in files
        for n, line in enumerate(_lines(path), 1)
        if OUTSIDE.search(line)
        or any(name not in held and name not in WRITTEN for name in MARKDOWN.findall(line))
    ]
    assert not dangling, "files the repository does not have:\n" + "\n".join(dangling)


def test_no_seed_wording():
    """The program and the file phijax started from are named, not called "the seed"."""
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in _text_files()
        for n, line in enumerate(_lines(path), 1)
        if SEED_AS_ORIGIN.search(line)
    ]
    assert not found, (
        "name it (Candle's sampler / the Candle haiku program, docs/sampling.md; Microsoft's "
        "Phi-3-mini-4k-instruct-q4.gguf, docs/formats.md):\n" + "\n".join(found)
    )


MAX_MODULE_LINES = 450
"""Small modules with one job each (docs/architecture.md): a module past this is split."""


def test_modules_stay_small():
    long = {
        path.relative_to(ROOT).as_posix(): n
        for path in (ROOT / "phijax").rglob("*.py")
        if (n := len(_lines(path))) > MAX_MODULE_LINES
    }
    assert not long, f"over {MAX_MODULE_LINES} lines (split them): {long}"
