"""A missing, unloadable or wrong kernel fails the suite where a compiler is; it never skips.

Tested the way such kernels were found: a copy of the phijax package with its builds moved
aside, or one of them replaced, imported by a subprocess that runs this directory's tests
(``python -m pytest`` puts the copy first on ``sys.path``, ahead of the editable install).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from importlib.util import find_spec
from pathlib import Path

import pytest

import phijax

REPO = Path(__file__).resolve().parents[2]
PACKAGE = Path(phijax.__file__).resolve().parent
EXT = sysconfig.get_config_var("EXT_SUFFIX")


def copy_package(root: Path, *, source_tree: bool) -> Path:
    """phijax without its builds under ``root``; as a source checkout (setup.py and
    pyproject.toml beside it) or as an installed package would be. Returns its kernels dir."""
    shutil.copytree(
        PACKAGE, root / "phijax", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__")
    )
    if source_tree:
        for name in ("setup.py", "pyproject.toml"):
            shutil.copy(REPO / name, root / name)
    return root / "phijax" / "kernels"


def run_suite(root: Path, select: str) -> subprocess.CompletedProcess:
    """This directory's tests matching ``select``, with phijax imported from ``root``."""
    env = {k: v for k, v in os.environ.items() if k != "PHIJAX_CPU_KERNEL"}
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(REPO)]
    args += [
        "-c",
        str(REPO / "pyproject.toml"),
        "-k",
        select,
        str(Path(__file__).parent / "test_cpu_matmul.py"),
    ]
    return subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def assert_fails(run: subprocess.CompletedProcess, *messages: str) -> str:
    """The run failed, skipped nothing but builds this CPU cannot run (an AVX2-only CPU and
    the AVX-512 builds) and printed ``messages``; returns its summary line."""
    out = run.stdout + run.stderr
    counts = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    skips = [line for line in run.stdout.splitlines() if line.startswith("SKIPPED")]
    other_skips = [line for line in skips if "this CPU lacks the" not in line]
    assert run.returncode == 1 and "failed" in counts and not other_skips, out[-3000:]
    for message in messages:
        assert message in out, out[-3000:]
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("source_tree", [True, False], ids=["source-tree", "installed"])
def test_missing_builds_fail_the_suite(cxx: str, tmp_path: Path, source_tree: bool):
    """The builds moved aside: in a source checkout (Python imports the unbuilt tree, which
    shadows the installed package) status says so and how to build it in place."""
    copy_package(tmp_path, source_tree=source_tree)
    want = (
        f"not built in the source tree {tmp_path}"
        if source_tree
        else "not built (no _cpu_matmul_generic"
    )
    assert_fails(run_suite(tmp_path, "built_and_runs"), want)


@pytest.mark.slow
def test_an_unloadable_build_fails_the_suite(cxx: str, tmp_path: Path):
    kernels = copy_package(tmp_path, source_tree=False)
    for so in PACKAGE.joinpath("kernels").glob(f"*{EXT}"):
        shutil.copy(so, kernels / so.name)
    (kernels / f"_cpu_matmul_generic{EXT}").write_bytes(b"not a shared object")
    assert_fails(run_suite(tmp_path, "built_and_runs"), "not loadable (")


PLANTED = ("Simd::sum(Simd::add(acc[r][c][0], acc[r][c][1])) - off", "- off", "+ off")
"""A wrong build: the mins' sign flipped (``+ min`` instead of ``- min``)."""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="builds the copy with Linux's flags")
def test_a_wrong_build_fails_the_suite(cxx: str, expected_builds, tmp_path: Path):
    """A portable build with the mins' sign flipped, beside correct vector builds: its check
    refuses it, and every test of that build fails, while the others still pass."""
    kernels = copy_package(tmp_path, source_tree=False)
    for so in PACKAGE.joinpath("kernels").glob(f"*{EXT}"):
        if "generic" not in so.name:
            shutil.copy(so, kernels / so.name)
    source = (PACKAGE / "kernels" / "cpu_matmul.cc").read_text()
    line, old, new = PLANTED
    assert source.count(line) == 1, "the planted line moved: update PLANTED"
    (tmp_path / "wrong.cc").write_text(source.replace(line, line.replace(old, new)))
    jaxlib = Path(find_spec("jaxlib").origin).parent / "include"
    args = [cxx, "-std=c++17", "-O1", "-shared", "-fPIC", "-fvisibility=hidden", "-w"]
    args += [f"-I{sysconfig.get_paths()['include']}", f"-I{jaxlib}", f"-I{PACKAGE / 'kernels'}"]
    args += ["-DPHIJAX_MODULE=_cpu_matmul_generic", str(tmp_path / "wrong.cc")]
    subprocess.run(
        [*args, "-o", str(kernels / f"_cpu_matmul_generic{EXT}")], check=True, timeout=300
    )
    run = run_suite(tmp_path, "built_and_runs or (every_layout and Q4_K)")
    counts = assert_fails(
        run, "generic: failed its check (wrong products for int8 blocks of 16, with mins)"
    )
    # Q4_K with and without mins, two-level, interleaved, fused: per build
    passed = 5 * (len(expected_builds) - 1)
    assert counts.startswith(f"1 failed, {passed} passed") and "5 errors" in counts, counts
