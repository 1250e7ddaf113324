"""Random well-formed GGUF blocks of every quantized ggml type, for bit-exactness tests."""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT

from phijax.gguf.synthetic import F16_FIELDS


def random_blocks(qtype: QT, n_blocks: int, seed: int) -> np.ndarray:
    """``[n_blocks, type_size]`` random bytes, with every f16 scale field a random finite half.

    Scale bits are uniform over all finite halves (zeros, subnormals and the
    extremes included); the payload bytes are uniform, so every bit field is hit.
    """
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (n_blocks, GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8)
    for offset in F16_FIELDS.get(qtype, ()):
        bits = rng.integers(0, 1 << 16, n_blocks, dtype=np.uint16)
        bits[(bits & 0x7C00) == 0x7C00] &= np.uint16(0xBFFF)  # inf/NaN exponent -> finite
        blocks[:, offset : offset + 2] = bits.view(np.uint8).reshape(n_blocks, 2)
    return blocks
