"""Which kernel builds must run here, decided without asking the kernel.

Where a C++ compiler is on the PATH, phijax's install builds the kernel (``setup.py``); CI
installs and tests on the same machine, so a compiler on the PATH now stands for one at
install time. There, every build whose instructions this CPU has (read from
``/proc/cpuinfo``, not from the kernel under test) must be present, load and pass its
check: a missing or wrong build fails these tests instead of skipping them. Without a
compiler the kernel is legitimately absent, and only then are its tests skipped.
"""

from __future__ import annotations

import functools
import shutil
import sys

import pytest

from phijax import kernels

COMPILERS = ("c++", "g++", "clang++")
NEEDS = {
    "avx512vnni": {"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx2", "fma", "f16c"},
    "avx512": {"avx512f", "avx2", "fma", "f16c"},
    "avx2": {"avx2", "fma", "f16c"},
    "generic": set(),
}
"""The CPU flags (``/proc/cpuinfo`` names) each build's code uses (``setup.py``)."""


def compiler() -> str | None:
    """A C++ compiler on the PATH where setuptools uses it (not Windows: MSVC is not on it)."""
    found = (shutil.which(c) for c in COMPILERS)
    return None if sys.platform == "win32" else next(filter(None, found), None)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (Linux x86); empty elsewhere, where only the portable build
    is required."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_runs(build: str) -> bool:
    return NEEDS[build] <= cpu_flags()


@pytest.fixture(scope="session")
def cxx() -> str:
    """The C++ compiler on the PATH; skips where there is none."""
    found = compiler()
    if found is None:
        pytest.skip("no C++ compiler on the PATH: phijax installs without its kernel here")
    return found


@pytest.fixture(scope="session")
def expected_builds() -> tuple[str, ...]:
    """The builds that must run here; skips where no compiler is on the PATH."""
    if compiler() is None:
        pytest.skip("no C++ compiler on the PATH: phijax installs without its kernel here")
    return tuple(b for b in kernels.BUILDS if cpu_runs(b))


@pytest.fixture(params=kernels.BUILDS)
def build(request) -> str:
    """Each build in turn: skipped only on a CPU without its instructions, or where no
    compiler could have built it; otherwise it must be among :func:`kernels.builds`."""
    name = request.param
    if not cpu_runs(name):
        pytest.skip(f"this CPU lacks the {name} build's instructions ({sorted(NEEDS[name])})")
    if name not in kernels.builds():
        if compiler():
            pytest.fail(
                f"the {name} build must run here (a compiler is on the PATH): "
                f"{kernels.status(name)}"
            )
        pytest.skip(f"no C++ compiler on the PATH: {kernels.status(name)}")
    return name


@pytest.fixture
def default_kernel() -> str:
    """The build ``linear`` uses; required where a compiler is, unless turned off."""
    if not kernels.available():
        if compiler() and kernels.requested() != "off":
            pytest.fail(f"the kernel must run here (a compiler is on the PATH): {kernels.status()}")
        pytest.skip(f"the CPU kernel is {kernels.status()}")
    return kernels.chosen()
