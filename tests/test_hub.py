"""Source resolution: local paths, PyPI-shipped models, and the HF hub cache (offline)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from phijax import hub
from phijax.errors import HubError

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def _populate_hub_cache(cache, repo_id: str, filename: str, src) -> None:
    """Lay out a file the way huggingface_hub's cache stores it (refs/main → snapshot)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    target = repo / "snapshots" / SNAPSHOT / filename
    target.parent.mkdir(parents=True)
    shutil.copyfile(src, target)


def test_local_paths(tmp_path, tiny_phi3_gguf):
    assert hub.resolve(str(tiny_phi3_gguf)) == tiny_phi3_gguf
    assert hub.resolve(tiny_phi3_gguf) == tiny_phi3_gguf
    with pytest.raises(HubError, match="no such file"):
        hub.resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(HubError, match="not a file"):
        hub.resolve(str(tmp_path))


def test_pypi_source(smollm2_gguf):
    assert hub.resolve("pypi:smollm2") == smollm2_gguf
    with pytest.raises(HubError, match=r"available: gemma3-270m, .*phi3-vocab, .*smollm2\."):
        hub.resolve("pypi:llama-70b")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("org/repo/file.gguf", ("org/repo", "file.gguf")),
        ("hf://org/repo/sub/dir/file.gguf", ("org/repo", "sub/dir/file.gguf")),
        (
            hub.DEFAULT_SOURCE,
            ("microsoft/Phi-3-mini-4k-instruct-gguf", "Phi-3-mini-4k-instruct-q4.gguf"),
        ),
    ],
)
def test_parse_hub_source(source, expected):
    assert hub.parse_hub_source(source) == expected


@pytest.mark.parametrize("source", ["hf://org/repo", "hf://org//file.gguf", "hf://"])
def test_bad_hub_source(source):
    with pytest.raises(HubError, match=r"expected 'org/repo/file\.gguf'"):
        hub.resolve(source)


def test_offline_hit_from_a_prepopulated_cache(tmp_path, monkeypatch, tiny_phi3_gguf):
    _populate_hub_cache(tmp_path, "org/tiny", "tiny.gguf", tiny_phi3_gguf)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for source in ("org/tiny/tiny.gguf", "hf://org/tiny/tiny.gguf"):
        path = hub.resolve(source, cache_dir=tmp_path)
        assert path.read_bytes() == tiny_phi3_gguf.read_bytes()
        assert SNAPSHOT in str(path)


def test_offline_miss_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        HubError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
    ):
        hub.resolve(hub.DEFAULT_SOURCE, cache_dir=tmp_path)


def test_cli_resolves_from_the_hub_cache_in_a_fresh_process(tmp_path, tiny_phi3_gguf):
    _populate_hub_cache(tmp_path, "org/tiny", "tiny.gguf", tiny_phi3_gguf)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "phijax.cli", "inspect", "org/tiny/tiny.gguf"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "phi3" in proc.stdout and SNAPSHOT in proc.stdout
