"""One-query attention (decode): the same numbers as the general form, without copying the cache.

Decode attends one query per row; :func:`phijax.model.attention.attention` then leaves the
unit query axis out of both products, because with it XLA:CPU copied each layer's keys and
values transposed in every step (docs/benchmarks.md, "Twelfth step").
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phijax.model.attention import attention, attention_mask

from numerics import F32_EPS

BATCH, Q_HEADS, HEAD_DIM, KEYS = 2, 8, 32, 64


def _inputs(kv_heads: int, queries: int, batch: int = BATCH):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    q = jax.random.normal(keys[0], (batch, queries, Q_HEADS, HEAD_DIM))
    k = jax.random.normal(keys[1], (batch, kv_heads, KEYS, HEAD_DIM))
    v = jax.random.normal(keys[2], (batch, kv_heads, KEYS, HEAD_DIM))
    return q, k, v


@pytest.mark.parametrize("kv_heads", [Q_HEADS, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("window", [None, 24])
def test_one_query_equals_the_last_row_of_several(kv_heads, window):
    """Rows at different lengths (40 and 57 keys filled): the last of three queries, alone,
    gives the general form's last row and probabilities. They differ by summation order
    alone: over at most max(head_dim, keys) terms, 2·sqrt(K)·eps of the values' scale
    (tests/numerics.py), as softmax weights sum to 1."""
    q, k, v = _inputs(kv_heads, 3)
    lengths = jnp.array([40, 57])
    positions = lengths[:, None] - 3 + jnp.arange(3)[None]
    mask = attention_mask(positions, lengths, KEYS, window)
    out, probs = attention(q, k, v, mask, return_weights=True)
    one, one_probs = attention(q[:, -1:], k, v, mask[:, -1:], return_weights=True)

    atol = 2 * math.sqrt(max(HEAD_DIM, KEYS)) * F32_EPS * float(jnp.abs(v).max())
    np.testing.assert_allclose(one, out[:, -1:], atol=atol, rtol=0)
    np.testing.assert_allclose(one_probs, probs[:, :, -1:], atol=2 * KEYS * F32_EPS, rtol=0)
    assert one_probs[0, :, 0, 40:].max() == 0  # past the row's length: no weight


@pytest.mark.parametrize("kv_heads", [Q_HEADS, 2], ids=["mha", "gqa"])
def test_one_query_copies_neither_keys_nor_values(kv_heads):
    """The compiled decode attention at batch 1 has no copy or transpose as large as the keys:
    it reads the cache ``[batch, kv_heads, keys, head_dim]`` in place (the general form, given
    one query at batch 1, transposed both K and V on XLA:CPU)."""
    q, k, v = _inputs(kv_heads, 1, batch=1)
    mask = attention_mask(jnp.full((1, 1), KEYS - 1), jnp.full((1,), KEYS), KEYS, None)
    text = jax.jit(lambda q, k, v: attention(q, k, v, mask)[0]).lower(q, k, v).compile().as_text()
    moved = []
    for shape, op in re.findall(r"= f32\[([\d,]*)\]\S* (copy|transpose)\(", text):
        if math.prod(int(n) for n in shape.split(",") if n) >= k.size:
            moved.append(f"{op} f32[{shape}]")
    assert not moved, moved
