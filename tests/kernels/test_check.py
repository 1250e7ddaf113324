"""The kernel's check: a build that passes is remembered for its file, check code, jaxlib
and CPU, so later processes skip it; a failure is never remembered."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from phijax import kernels
from phijax.kernels import check


@pytest.fixture
def markers(tmp_path, monkeypatch) -> Path:
    """An empty phijax cache; returns where passes are remembered."""
    monkeypatch.setenv("PHIJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PHIJAX_NO_CACHE", raising=False)
    return tmp_path / "cache" / "kernel_checks"


def test_a_pass_is_remembered_and_a_failure_is_not(default_kernel, markers, tmp_path, monkeypatch):
    library = importlib.import_module(f"phijax.kernels._cpu_matmul_{default_kernel}").__file__
    wrapper = kernels.__file__
    calls = []

    def right(build, max_rows, activations, x, w):
        calls.append(build)
        return kernels.matmul(x, w, build=build, max_rows=max_rows, activations=activations)

    def wrong(*args):
        return right(*args) * 1.001

    assert check.verdict(default_kernel, library, wrong, wrapper).startswith("wrong products")
    assert not markers.exists()  # a failure: checked again next time
    assert check.verdict(default_kernel, library, right, wrapper) == ""
    assert calls and len(list(markers.iterdir())) == 1
    calls.clear()
    assert check.verdict(default_kernel, library, wrong, wrapper) == ""  # remembered pass
    assert not calls

    changed = tmp_path / "wrapper.py"  # other code calling the kernel: checked again
    changed.write_text(Path(wrapper).read_text() + "\n# changed\n")
    assert check.verdict(default_kernel, library, wrong, str(changed)).startswith("wrong")
    monkeypatch.setenv("PHIJAX_NO_CACHE", "1")  # caches off: always checked
    assert check.verdict(default_kernel, library, wrong, wrapper).startswith("wrong")
