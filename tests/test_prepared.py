"""Prepared weights (phijax.prepared): a packed load's parameters written once, then mapped back.

The second load must give the same parameters bit for bit as loading the file, and a
changed file, another policy, or a damaged entry must never be used.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from gguf import GGMLQuantizationType

import phijax
from phijax import prepared
from phijax.gguf.synthetic import write_phi3

Q4_K_M = Path(__file__).parent / "fixtures" / "model" / "q4_k_m.gguf"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty phijax cache in which files of any size get prepared weights."""
    monkeypatch.setenv("PHIJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PHIJAX_NO_CACHE", raising=False)
    monkeypatch.setattr(prepared, "MIN_BYTES", 0)
    return tmp_path / "cache" / "prepared"


@pytest.fixture
def gguf(tmp_path) -> Path:
    """A copy of the fixture, so a test may touch or change it."""
    return Path(shutil.copy(Q4_K_M, tmp_path / "model.gguf"))


def _leaves(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(model.params)]


def _assert_same_params(a, b) -> None:
    assert jax.tree.structure(a.params) == jax.tree.structure(b.params)
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)


@pytest.mark.parametrize("options", [{}, {"activations": "int8"}], ids=["default", "int8"])
def test_second_load_maps_the_same_parameters(cache, gguf, options, monkeypatch):
    """The next load maps the entry (reads nothing) and ``map_prepared=False`` reads it: both
    give the first load's parameters and logits bit for bit, and stay whole when the entry is
    evicted (its file deleted) while they are in use."""
    first = phijax.load(gguf, progress=False, **options)
    assert "prepared weights saved to" in first.load_summary
    (entry,) = cache.iterdir()
    assert {p.name for p in entry.iterdir()} == {"manifest.json", "weights.bin"}
    with monkeypatch.context() as m:
        m.setattr(prepared, "read_aligned", lambda *a, **k: pytest.fail("read, not mapped"))
        mapped = phijax.load(gguf, progress=False, **options)
    assert "prepared weights mapped from" in mapped.load_summary
    read = phijax.load(gguf, progress=False, map_prepared=False, **options)
    assert "prepared weights read from" in read.load_summary
    ids = [5, 17, 42, 7, 99]
    expected = np.asarray(first.logits(ids))
    shutil.rmtree(entry)
    for model in (mapped, read):
        _assert_same_params(first, model)
        np.testing.assert_array_equal(np.asarray(model.logits(ids)), expected)
    monkeypatch.setenv("PHIJAX_NO_CACHE", "1")
    plain = phijax.load(gguf, progress=False, **options)
    assert "prepared weights" not in plain.load_summary
    _assert_same_params(plain, mapped)


def test_a_changed_file_or_policy_is_not_read(cache, gguf, monkeypatch):
    phijax.load(gguf, progress=False)
    assert "mapped from" in phijax.load(gguf, progress=False).load_summary
    (first,) = cache.iterdir()
    other = phijax.load(gguf, progress=False, activations="int8")
    assert "saved to" in other.load_summary  # another policy: another entry
    assert first.exists()
    sizes = [(entry / "weights.bin").stat().st_size for entry in cache.iterdir()]
    monkeypatch.setattr(prepared, "KEEP_BYTES", sum(sizes))  # room for these two entries only
    os.utime(first, (1, 1))  # the default entry is now the least recently used
    st = gguf.stat()
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert "saved to" in phijax.load(gguf, progress=False).load_summary
    assert len(list(cache.iterdir())) == 2 and not first.exists()  # it went to make room


def test_another_kernel_order_is_another_entry(cache, gguf, monkeypatch):
    """The matrices' order (``Backend.interleaves``) follows the build by backend.py's code,
    not by a field of the policy: a release that changes it must not map the old order."""
    first = phijax.load(gguf, progress=False).backend.interleaves
    other = None if first else "f32"
    monkeypatch.setattr(phijax.backend.Backend, "interleaves", property(lambda self: other))
    assert "saved to" in phijax.load(gguf, progress=False).load_summary
    assert len(list(cache.iterdir())) == 2


@pytest.mark.parametrize("damage", ["truncated", "manifest", "foreign"])
def test_a_damaged_entry_is_rebuilt(cache, gguf, damage):
    first = phijax.load(gguf, progress=False)
    (entry,) = cache.iterdir()
    if damage == "truncated":
        with open(entry / "weights.bin", "r+b") as f:
            f.truncate(f.seek(0, 2) // 2)
    elif damage == "manifest":
        (entry / "manifest.json").write_text("{not json")
    else:  # a whole, readable entry whose arrays lie about the model's shapes
        manifest = json.loads((entry / "manifest.json").read_text())
        packed = next(p for p in manifest["params"] if "quant" in p)
        packed["leaves"]["values"]["shape"][0] //= 2
        (entry / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="unusable"):
        again = phijax.load(gguf, progress=False)
    assert "saved to" in again.load_summary
    _assert_same_params(first, again)
    assert "mapped from" in phijax.load(gguf, progress=False).load_summary


def test_none_for_small_files_dense_loads_or_when_caches_are_off(cache, gguf, monkeypatch):
    dense = phijax.load(gguf, progress=False, quantized=False, map_prepared=True)
    assert f"map_prepared ignored: {prepared.NONE_KEPT}" in dense.load_summary  # not silently
    monkeypatch.setenv("PHIJAX_NO_CACHE", "1")
    phijax.load(gguf, progress=False)
    monkeypatch.delenv("PHIJAX_NO_CACHE")
    monkeypatch.setattr(prepared, "MIN_BYTES", gguf.stat().st_size + 1)
    phijax.load(gguf, progress=False)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_longrope_factors_follow_the_sequence_limit(cache, tmp_path, tiny_config, monkeypatch):
    """LongRoPE's factor set is chosen from max_seq_len at load: each limit has its own entry,
    and each entry gives the factors a load from the file gives."""
    path = tmp_path / "longrope.gguf"
    config = tiny_config.replace(rope_scaling="longrope", original_context_length=32)
    write_phi3(path, config, qtype=GGMLQuantizationType.Q8_0)
    for limit in (16, None, 16, None):  # short factors, long factors, then each read back
        model = phijax.load(path, progress=False, max_seq_len=limit)
        with monkeypatch.context() as m:
            m.setenv("PHIJAX_NO_CACHE", "1")
            plain = phijax.load(path, progress=False, max_seq_len=limit)
        _assert_same_params(model, plain)
    assert "mapped from" in model.load_summary
    assert len(list(cache.iterdir())) == 2
    short = phijax.load(path, progress=False, max_seq_len=16).params.rope_factors[...]
    assert not np.array_equal(np.asarray(short), np.asarray(model.params.rope_factors[...]))
