"""KVCache: the attention keys and values of every layer, preallocated at a static size."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp

from phijax.config import Phi3Config


@jax.tree_util.register_dataclass
@dataclass
class KVCache:
    """k, v ``[layers, batch, kv_heads, max_seq, head_dim]``; lengths int32 ``[batch]``
    (how many positions of each row are filled). Donated to every step so XLA
    updates it in place; rows of different lengths share the batch. Heads come before
    positions so attention reads each head's keys in place: in the order
    ``[batch, max_seq, kv_heads, ...]`` XLA:CPU transposed the attended cache in every
    layer of every step (2-3x the attention time, ``benchmarks/bench_products.py``)."""

    k: jax.Array
    v: jax.Array
    lengths: jax.Array

    # The logical axes of ``k`` and ``v`` (phijax.sharding's names): the one place the
    # cache's axis order is written; shapes, sharding and sizes all follow it.
    AXES: ClassVar[tuple[str, ...]] = ("layers", "batch", "kv_heads", "seq", "head_dim")

    @staticmethod
    def shape_for(config: Phi3Config, batch: int, max_seq: int) -> tuple[int, ...]:
        """The shape of ``k`` (and ``v``), in the order of :attr:`AXES`."""
        sizes = {
            "layers": config.num_layers,
            "batch": batch,
            "kv_heads": config.num_kv_heads,
            "seq": max_seq,
            "head_dim": config.head_dim,
        }
        return tuple(sizes[axis] for axis in KVCache.AXES)

    @classmethod
    def create(cls, config: Phi3Config, batch: int, max_seq: int, dtype=jnp.float32) -> KVCache:
        shape = cls.shape_for(config, batch, max_seq)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch,), jnp.int32))

    @property
    def batch(self) -> int:
        return self.k.shape[self.AXES.index("batch")]

    @property
    def max_seq(self) -> int:
        return self.k.shape[self.AXES.index("seq")]

    @staticmethod
    def bytes_for(config: Phi3Config, batch: int, max_seq: int, dtype=jnp.float32) -> int:
        """Memory a cache of this size takes, for planning before allocation."""
        per = math.prod(KVCache.shape_for(config, batch, max_seq))
        return 2 * per * jnp.dtype(dtype).itemsize
