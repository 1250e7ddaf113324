"""How a GGUF tensor's bytes reach the device (:mod:`phijax.gguf.weights`)."""

from __future__ import annotations

import io
from pathlib import Path

import jax
import numpy as np
import pytest
from tqdm.auto import tqdm

from phijax.errors import ConfigError
from phijax.gguf import GGUFFile, weights
from phijax.gguf.weights import _read

FIXTURE = Path(__file__).parents[1] / "fixtures" / "model" / "q4_k_m.gguf"


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's host buffers")
def test_tensor_bytes_reach_xla_without_a_copy():
    """Each tensor is read into a 64-byte-aligned buffer, which XLA:CPU then uses in place:
    a load makes no second copy of the file in fresh memory (Phi-3-mini: 2.4 GB)."""
    f = GGUFFile(FIXTURE)
    for info in f.tensors.values():
        buf = _read(f, info)
        assert buf.ctypes.data % 64 == 0 and buf.nbytes == info.nbytes
        on_device = jax.device_put(buf)
        assert on_device.unsafe_buffer_pointer() == buf.ctypes.data, info.name
        with open(FIXTURE, "rb") as fh:
            fh.seek(info.offset)
            np.testing.assert_array_equal(
                np.asarray(on_device), np.frombuffer(fh.read(info.nbytes), np.uint8)
            )


def test_long_reads_go_in_pieces_on_threads(tmp_path, monkeypatch):
    """Past one READ_STEP a read is split over threads: every byte lands at its place
    (offset included), the bar counts them all, and a file that ends early is EOFError."""
    monkeypatch.setattr(weights, "READ_STEP", 4096)
    data = np.random.default_rng(0).integers(0, 256, 10 * 4096 + 123, dtype=np.uint8)
    path = tmp_path / "blob.bin"
    path.write_bytes(data.tobytes())
    with tqdm(total=data.size - 7, file=io.StringIO()) as bar:
        got = weights.read_aligned(path, 7, data.size - 7, bar)
        assert bar.n == data.size - 7
    np.testing.assert_array_equal(got, data[7:])
    with pytest.raises(EOFError, match="fewer than"):
        weights.read_aligned(path, 7, data.size, None)


@pytest.mark.parametrize("interleave", [True, "bf16"])
def test_an_unknown_order_is_refused_by_name(interleave):
    """``interleave`` names the kernel's activations; a bool (its type before the f32 order
    existed) or another string is refused, not read as some order."""
    with pytest.raises(ConfigError, match=r"interleave=.*one of \('f32', 'int8'\)"):
        weights.load_weights(GGUFFile(FIXTURE), None, interleave=interleave)
