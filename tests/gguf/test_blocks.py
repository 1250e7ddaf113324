"""phijax.gguf.blocks: each type's declared layout is the one its decoder returns.

dequant and relayout read the layout from the decoded fields' shapes, but
``relayout.common_layout`` (fusing parts of different types) reads the declared
``sub_block``, ``has_mins`` and ``nibbles`` without decoding: they must agree.
The values themselves are checked bit-exact through both consumers in test_dequant.py.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT

from phijax.gguf.blocks import BLOCK_TYPES

from blocks import random_blocks

N_BLOCKS = 5


@pytest.mark.parametrize("qtype", sorted(BLOCK_TYPES, key=lambda t: t.name), ids=lambda t: t.name)
def test_declared_layout_matches_decoded_fields(qtype: QT) -> None:
    block_type = BLOCK_TYPES[qtype]
    block_elems = GGML_QUANT_SIZES[qtype][0]
    fields = block_type.decode(jnp.asarray(random_blocks(qtype, N_BLOCKS, seed=700 + int(qtype))))

    codes = np.asarray(fields.codes)
    assert codes.shape in {(N_BLOCKS, 32), (N_BLOCKS, block_elems // 32, 32)}
    assert codes.size == N_BLOCKS * block_elems
    assert np.array_equal(codes, np.round(codes)) and codes.min() >= -128 and codes.max() <= 127

    groups = (N_BLOCKS, block_elems // block_type.sub_block)
    assert fields.scales.shape == groups and fields.scales.dtype == jnp.float32
    assert (fields.mins is not None) == block_type.has_mins
    if fields.mins is not None:
        assert fields.mins.shape == groups and fields.mins.dtype == jnp.float32

    assert (fields.packed is not None) == bool(block_type.nibbles)
    if block_type.nibbles:
        # In each group of g codes, byte j holds code j (low half) and code j + g/2 (high half):
        # their low 4 bits where codes have a fifth.
        g = block_type.nibbles
        packed = np.asarray(fields.packed).reshape(N_BLOCKS, -1, g // 2)
        grouped = codes.reshape(N_BLOCKS, -1, g) & 15
        assert codes.max() < (32 if block_type.fifth_bit else 16) and codes.min() >= 0
        assert fields.packed.dtype == jnp.uint8
        np.testing.assert_array_equal(packed & 15, grouped[..., : g // 2])
        np.testing.assert_array_equal(packed >> 4, grouped[..., g // 2 :])
