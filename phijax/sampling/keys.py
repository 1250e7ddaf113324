"""The PRNG key rule: one key stream per sample, so a row's tokens do not depend on the rest
of its batch."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def step_keys(base: jax.Array, step: jax.Array) -> jax.Array:
    """Keys ``[b]`` for generation step ``step``: ``fold_in(base_row, step)``, where
    ``base_row = fold_in(PRNGKey(seed), sample_index)`` (see :func:`base_keys`)."""
    return jax.vmap(lambda k: jax.random.fold_in(k, step))(base)


def base_keys(seed: int, sample_indices: Sequence[int]) -> jax.Array:
    """``fold_in(PRNGKey(seed), s)`` per row: sample ``s``'s key stream, independent of the batch."""
    root = jax.random.PRNGKey(seed)
    return jnp.stack([jax.random.fold_in(root, int(s)) for s in sample_indices])
