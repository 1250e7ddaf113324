"""The PRNG key rule: a row's key stream is fold_in(fold_in(PRNGKey(seed), sample), step)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from phijax import sampling


def test_key_rule():
    base = sampling.base_keys(7, [0, 3])
    keys = sampling.step_keys(base, jnp.int32(5))
    root = jax.random.PRNGKey(7)
    want = jax.random.fold_in(jax.random.fold_in(root, 3), 5)
    np.testing.assert_array_equal(keys[1], want)
