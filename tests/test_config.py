"""Phi3Config: read from real and synthetic GGUF metadata, validated with errors that name the key."""

from __future__ import annotations

import dataclasses

import gguf
import numpy as np
import pytest

from phijax.config import Phi3Config
from phijax.errors import ConfigError, UnsupportedError
from phijax.gguf import GGUFFile
from phijax.gguf.synthetic import write_phi3


def test_smollm2_as_llama(smollm2_gguf):
    c = Phi3Config.from_gguf(GGUFFile(smollm2_gguf))
    assert (c.architecture, c.num_layers, c.hidden_size, c.intermediate_size) == (
        "llama",
        30,
        576,
        1536,
    )
    assert (c.num_heads, c.num_kv_heads, c.head_dim, c.rotary_dim, c.kv_groups) == (9, 3, 64, 64, 3)
    assert (c.vocab_size, c.context_length, c.rope_theta) == (49152, 8192, 100000.0)
    assert c.tie_word_embeddings and c.sliding_window is None and c.rope_scaling is None
    assert hash(c) == hash(c.replace())


def test_gemma3_is_not_a_phi3_architecture(gemma3_gguf):
    with pytest.raises(
        UnsupportedError, match="gemma3 is not a Phi-3-family architecture; supported: phi3, llama"
    ):
        Phi3Config.from_gguf(GGUFFile(gemma3_gguf))


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"num_kv_heads": 4},
        {"rotary_dim": 8},
        {"sliding_window": 7},
        {"tie_word_embeddings": True},
        {"head_dim": 8, "rotary_dim": 8},
        {"rope_scaling": "longrope", "original_context_length": 32, "rope_attn_factor": 1.25},
    ],
    ids=["plain", "mha", "partial-rotary", "sliding-window", "tied", "head-dim-key", "longrope"],
)
def test_synthetic_round_trip(tmp_path, tiny_config, changes):
    config = tiny_config.replace(**changes)
    path = tmp_path / "m.gguf"
    write_phi3(path, config)
    got = Phi3Config.from_gguf(GGUFFile(path))
    # eps is stored as f32 in GGUF
    assert got == config.replace(rms_norm_eps=float(np.float32(config.rms_norm_eps)))


def test_longrope_attn_factor_defaults_to_hf_formula(tmp_path, tiny_config):
    path = tmp_path / "m.gguf"
    config = tiny_config.replace(rope_scaling="longrope", original_context_length=32)
    write_phi3(path, config)
    # rewrite without the attn_factor key: HF's sqrt(1 + ln(s)/ln(orig)), s = 128/32
    f = GGUFFile(path)
    del f.metadata["phi3.rope.scaling.attn_factor"]
    assert Phi3Config.from_gguf(f).rope_attn_factor == pytest.approx(
        np.sqrt(1 + np.log(4) / np.log(32))
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_layers", 0, "num_layers = 0 must be a positive integer"),
        ("hidden_size", 3.5, "hidden_size = 3.5"),
        ("num_kv_heads", 3, "num_kv_heads = 3 must divide num_heads = 4"),
        ("rotary_dim", 7, "rotary_dim = 7 must be even"),
        ("rotary_dim", 32, "at most head_dim = 16"),
        ("rms_norm_eps", float("nan"), "rms_norm_eps = nan"),
        ("sliding_window", 0, "sliding_window = 0"),
        ("rope_scaling", "yarn", "rope_scaling = 'yarn' is not supported"),
        ("architecture", "gemma3", "gemma3 is not a Phi-3-family architecture"),
    ],
)
def test_validation_names_the_field(tiny_config, field, value, message):
    with pytest.raises((ConfigError, UnsupportedError), match=message.replace("(", r"\(")):
        dataclasses.replace(tiny_config, **{field: value})


def _write_metadata_only(path, arch: str, **keys) -> None:
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in keys.items():
        w.add_uint32(f"{arch}.{key}", value) if isinstance(value, int) else w.add_string(
            f"{arch}.{key}", value
        )
    w.add_tensor("token_embd.weight", np.zeros((16, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


BASE_KEYS = {
    "context_length": 64,
    "embedding_length": 8,
    "feed_forward_length": 16,
    "block_count": 1,
    "attention.head_count": 2,
}


def test_missing_key_is_named(tmp_path):
    keys = {k: v for k, v in BASE_KEYS.items() if k != "block_count"}
    _write_metadata_only(tmp_path / "m.gguf", "phi3", **keys)
    with pytest.raises(ConfigError, match=r"'phi3\.block_count' is missing"):
        Phi3Config.from_gguf(GGUFFile(tmp_path / "m.gguf"))


def test_inconsistent_value_names_the_gguf_key(tmp_path):
    _write_metadata_only(tmp_path / "m.gguf", "phi3", **BASE_KEYS, **{"attention.head_count_kv": 3})
    with pytest.raises(
        ConfigError, match=r"m\.gguf.*num_kv_heads = 3.*phi3\.attention\.head_count_kv"
    ):
        Phi3Config.from_gguf(GGUFFile(tmp_path / "m.gguf"))


def test_wrongly_typed_value_is_named(tmp_path):
    _write_metadata_only(tmp_path / "m.gguf", "llama", **{**BASE_KEYS, "block_count": "thirty"})
    with pytest.raises(ConfigError, match=r"llama\.block_count = 'thirty' must be a int"):
        Phi3Config.from_gguf(GGUFFile(tmp_path / "m.gguf"))
