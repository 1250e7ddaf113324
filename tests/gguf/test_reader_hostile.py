"""Truncated, corrupted, random and hand-crafted hostile files: every one is a PhijaxError.

None may crash with a raw struct/numpy/Index error, hang, or allocate memory in
proportion to a count the header claims rather than to the file's real size.
"""

from __future__ import annotations

import shutil
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phijax.errors import GGUFFormatError, HubError, PhijaxError, UnsupportedError
from phijax.gguf import GGUFFile

MAX_PEAK_BYTES = 64 << 20  # for files of at most a few MB


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def _kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return _str(key) + struct.pack("<I", vtype) + payload


def _tensor(name: str, dims: list[int], ggml_type: int = 0, offset: int = 0) -> bytes:
    head = _str(name) + struct.pack("<I", len(dims))
    return (
        head + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ggml_type, offset)
    )


def _file(
    kvs: list[bytes] = (),
    tensors: list[bytes] = (),
    data: bytes = b"",
    *,
    version: int = 3,
    n_kv: int | None = None,
    n_tensors: int | None = None,
    magic: bytes = b"GGUF",
) -> bytes:
    n_kv = len(kvs) if n_kv is None else n_kv
    n_tensors = len(tensors) if n_tensors is None else n_tensors
    head = magic + struct.pack("<IQQ", version, n_tensors, n_kv) + b"".join(kvs) + b"".join(tensors)
    return head + b"\0" * (-len(head) % 32) + data


UINT32, STRING, ARRAY = 4, 8, 9
ARCH = _kv("general.architecture", STRING, _str("phi3"))
F32_TENSOR = _tensor("t", [8])


def _parse(tmp_path: Path, blob: bytes, name: str = "case.gguf"):
    path = tmp_path / name
    path.write_bytes(blob)
    return GGUFFile(path)


def _check(tmp_path: Path, blob: bytes) -> GGUFFile | PhijaxError:
    """Parse ``blob``: a GGUFFile or a PhijaxError, within time and memory bounds, never anything else."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        result = _parse(tmp_path, blob)
    except PhijaxError as e:
        result = e
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - start < 5
    assert peak < MAX_PEAK_BYTES + 4 * len(blob)
    return result


def test_valid_minimal_file(tmp_path):
    f = _parse(tmp_path, _file([ARCH], [F32_TENSOR], np.arange(8, dtype=np.float32).tobytes()))
    assert f.metadata == {"general.architecture": "phi3"}
    np.testing.assert_array_equal(f.raw("t").view(np.float32), np.arange(8))


@pytest.mark.parametrize(
    ("blob", "error", "message"),
    [
        (b"", GGUFFormatError, "0 bytes"),
        (b"GGUF\x03\x00", GGUFFormatError, "shorter than a GGUF header"),
        (b"PK\x03\x04" + b"\0" * 40, GGUFFormatError, "not a GGUF file"),
        (b"tjgg" + b"\0" * 40, UnsupportedError, "legacy GGML"),
        (_file(version=1), UnsupportedError, "version 1"),
        (_file(version=4), UnsupportedError, "version 4"),
        (_file(version=3 << 24), UnsupportedError, "big-endian"),
        (_file(n_kv=1 << 62), GGUFFormatError, "metadata entries"),
        (_file(n_tensors=(1 << 64) - 1), GGUFFormatError, "tensors, more than"),
        (
            _file([_str("k") + struct.pack("<I", 99) + b"\0" * 8]),
            GGUFFormatError,
            "unknown value type 99",
        ),
        (
            _file([_str(b"\xff\xfe") + struct.pack("<I", UINT32) + b"\0" * 4]),
            GGUFFormatError,
            "UTF-8",
        ),
        (_file([_kv("", UINT32, b"\0" * 4)]), GGUFFormatError, "empty"),
        (_file([ARCH, ARCH]), GGUFFormatError, "appears twice"),
        (_file([_kv("k", STRING, struct.pack("<Q", (1 << 64) - 1))]), GGUFFormatError, "truncated"),
        (
            _file([_kv("k", ARRAY, struct.pack("<IQ", 0, 1 << 40))]),
            GGUFFormatError,
            "claims 1099511627776 elements",
        ),
        (
            _file([_kv("k", ARRAY, struct.pack("<IQ", STRING, 1 << 60))]),
            GGUFFormatError,
            "more than the file holds",
        ),
        (
            _file([_kv("k", ARRAY, struct.pack("<IQ", ARRAY, 1) * 50 + b"\0" * 64)]),
            GGUFFormatError,
            "nests arrays deeper",
        ),
        (
            _file([_kv("general.alignment", UINT32, struct.pack("<I", 0))]),
            GGUFFormatError,
            "alignment",
        ),
        (
            _file([_kv("general.alignment", UINT32, struct.pack("<I", 48))]),
            GGUFFormatError,
            "power of two",
        ),
        (_file([_kv("general.alignment", STRING, _str("32"))]), GGUFFormatError, "alignment"),
        (_file([], [_tensor("t", [])]), GGUFFormatError, "rank 0"),
        (_file([], [_tensor("t", [1] * 5)]), GGUFFormatError, "rank 5"),
        (_file([], [_tensor("t", [0])]), GGUFFormatError, "invalid dims"),
        (_file([], [_tensor("t", [1 << 40, 1 << 40])]), GGUFFormatError, "invalid dims"),
        (_file([], [_tensor("t", [8], ggml_type=99)]), UnsupportedError, "ggml type 99"),
        (
            _file([], [_tensor("t", [33], ggml_type=8)]),
            GGUFFormatError,
            "multiple of the Q8_0 block",
        ),
        (
            _file([], [_tensor("t", [8], offset=4)], b"\0" * 64),
            GGUFFormatError,
            "not a multiple of the alignment",
        ),
        (_file([], [_tensor("t", [8], offset=1 << 40)]), GGUFFormatError, "file is truncated"),
        (_file([], [_tensor("t", [1 << 30])]), GGUFFormatError, "file is truncated"),
        (_file([], [F32_TENSOR, F32_TENSOR], b"\0" * 32), GGUFFormatError, "duplicate name"),
        (
            _file([], [_tensor("a", [16]), _tensor("b", [8], offset=32)], b"\0" * 64),
            GGUFFormatError,
            "overlap",
        ),
    ],
)
def test_hostile_header(tmp_path, blob, error, message):
    result = _check(tmp_path, blob)
    assert isinstance(result, error), result
    assert message in str(result)
    assert str(tmp_path / "case.gguf") in str(result)


def test_truncation_at_every_offset_of_a_synthetic_model(tmp_path, tiny_phi3_gguf):
    blob = tiny_phi3_gguf.read_bytes()
    full = GGUFFile(tiny_phi3_gguf)
    data_end = max(t.offset + t.nbytes for t in full.tensors.values())
    header_end = full.data_offset
    offsets = list(range(header_end + 1)) + list(range(header_end, len(blob), 97))
    for n in offsets:
        result = _check(tmp_path, blob[:n])
        if isinstance(result, GGUFFile):
            assert n >= data_end, f"truncation at {n} of {len(blob)} was accepted"
        else:
            assert str(tmp_path / "case.gguf") in str(result)


@pytest.mark.slow
def test_truncation_of_a_real_model(tmp_path, smollm2_gguf):
    full = GGUFFile(smollm2_gguf)
    rng = np.random.default_rng(0)
    cuts = sorted(
        {
            *rng.integers(24, full.data_offset, 24).tolist(),
            full.data_offset - 1,
            full.data_offset + 1,
        }
    )
    with open(smollm2_gguf, "rb") as f:
        head = f.read(full.data_offset + 2)
    for n in cuts:
        assert isinstance(_check(tmp_path, head[:n]), GGUFFormatError), n
    cut = tmp_path / "cut.gguf"
    with open(smollm2_gguf, "rb") as src, open(cut, "wb") as dst:
        shutil.copyfileobj(src, dst)
        dst.truncate(full.size - 1000)
    with pytest.raises(GGUFFormatError, match="truncated"):
        GGUFFile(cut)


def test_random_byte_flips_in_a_synthetic_model(tmp_path, tiny_phi3_gguf):
    """A seeded loop of 1-4 byte corruptions, mostly in the header where the structure is."""
    blob = bytearray(tiny_phi3_gguf.read_bytes())
    header_end = GGUFFile(tiny_phi3_gguf).data_offset
    rng = np.random.default_rng(1234)
    outcomes = {"parsed": 0, "rejected": 0}
    for _ in range(1500):
        mutated = bytearray(blob)
        for _ in range(rng.integers(1, 5)):
            pos = rng.integers(0, header_end) if rng.random() < 0.9 else rng.integers(0, len(blob))
            mutated[pos] = rng.integers(0, 256)
        result = _check(tmp_path, bytes(mutated))
        outcomes["parsed" if isinstance(result, GGUFFile) else "rejected"] += 1
    assert outcomes["rejected"] > 100 and outcomes["parsed"] > 100, outcomes


def test_corrupt_data_section_still_dequantizes(tmp_path, tiny_phi3_gguf):
    blob = bytearray(tiny_phi3_gguf.read_bytes())
    f = GGUFFile(tiny_phi3_gguf)
    info = f.tensor("blk.0.ffn_down.weight")
    blob[info.offset : info.offset + info.nbytes] = np.random.default_rng(0).bytes(info.nbytes)
    out = _parse(tmp_path, bytes(blob)).dequantize(info.name)
    assert out.shape == info.shape


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tail=st.binary(max_size=2048), version=st.sampled_from([2, 3]))
def test_random_bytes_after_a_valid_preamble(tmp_path, tail, version):
    result = _check(tmp_path, b"GGUF" + struct.pack("<I", version) + tail)
    assert isinstance(result, (GGUFFile, PhijaxError))


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(blob=st.binary(max_size=512))
def test_random_bytes(tmp_path, blob):
    assert isinstance(_check(tmp_path, blob), PhijaxError)


def test_missing_file_is_a_hub_error(tmp_path):
    with pytest.raises(HubError):
        GGUFFile(tmp_path / "nope.gguf")
