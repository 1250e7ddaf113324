"""setup.py: the kernel's three builds where jaxlib's FFI headers are importable; none, with a
message and no error, where they are not (``pip install --no-build-isolation .`` in an
environment without jaxlib used to stop the whole install with an AttributeError)."""

from __future__ import annotations

import platform
import runpy
import sys
from pathlib import Path

import pytest
import setuptools

SETUP = Path(__file__).resolve().parents[2] / "setup.py"


def extension_modules(monkeypatch) -> list[setuptools.Extension]:
    """The extension modules setup.py asks setuptools to build."""
    seen = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: seen.update(kw))
    runpy.run_path(str(SETUP), run_name="__main__")
    return seen["ext_modules"]


def extensions(monkeypatch) -> list[str]:
    return [e.name for e in extension_modules(monkeypatch)]


def test_a_header_change_rebuilds_every_kernel(monkeypatch):
    """``setup.py build_ext --inplace`` rebuilds a build only when its sources or ``depends``
    changed: every header beside the kernel's source must be among them (a changed
    ``int8_dot.h`` once left stale builds in place)."""
    headers = sorted(
        str(h.relative_to(SETUP.parent)) for h in SETUP.parent.glob("phijax/kernels/*.h")
    )
    assert headers
    for ext in extension_modules(monkeypatch):
        assert sorted(ext.depends) == headers, ext.name


@pytest.mark.skipif(sys.platform == "win32", reason="one portable build on Windows")
def test_setup_builds_four_kernels_with_jaxlib(monkeypatch):
    names = extensions(monkeypatch)
    assert names[0] == "phijax.kernels._cpu_matmul_generic"
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert sorted(names[1:]) == [
            "phijax.kernels._cpu_matmul_avx2",
            "phijax.kernels._cpu_matmul_avx512",
            "phijax.kernels._cpu_matmul_avx512vnni",
        ]


def test_setup_skips_the_kernel_without_jaxlib(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "jaxlib", None)  # find_spec("jaxlib") is then None
    assert extensions(monkeypatch) == []
    err = capsys.readouterr().err
    assert "jaxlib" in err and "the CPU kernel is not built" in err
