"""QuantArray: a weight kept as its GGUF blocks' integers and block scales.

``values [rows, cols]`` int8 are the quant codes with their zero point removed
(or IQ4 levels); ``scales`` and ``mins`` ``[rows, cols // block]`` f32 hold each
sub-block's ``d · scale`` and ``dmin · min``; the weight is
``scales · values - mins``. That is the same product-then-subtract as
ggml's own formulas, and every product is exact in f32 (see
:mod:`phijax.gguf.dequant`), so decoding a QuantArray is bit-identical to
dequantizing the file: a lossless re-layout, about 1.25 bytes per weight
(int8 + f32 scale and min per 32), not a requantization.

A QuantArray is a pytree: it flows through ``jit``, ``scan`` and sharding like
an array, and :func:`phijax.model.layers.linear` decodes it inside the compiled
step (on GPU/TPU XLA fuses the decode into the matmul).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclass
class QuantArray:
    """``values`` int8 ``[..., rows, cols]``; ``scales``, ``mins`` f32 ``[..., rows, cols // block]``
    (``mins`` may be ``None``); leading axes (a layer stack) are allowed."""

    values: jax.Array
    scales: jax.Array
    mins: jax.Array | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.values.shape

    @property
    def ndim(self) -> int:
        return self.values.ndim

    @property
    def block(self) -> int:
        """Elements per scale along a row."""
        return self.values.shape[-1] // self.scales.shape[-1]

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes for x in jax.tree.leaves(self))

    def __getitem__(self, index) -> QuantArray:
        """Index leading axes (rows, or layers of a stack) of every part alike."""
        return jax.tree.map(lambda x: x[index], self)

    def take(self, rows: jax.Array) -> QuantArray:
        """Rows ``rows [...]`` (an embedding lookup without decoding the whole table)."""
        return jax.tree.map(lambda x: jnp.take(x, rows, axis=0), self)

    def dequantize(self, dtype=jnp.float32) -> jax.Array:
        """The weight ``[..., rows, cols]``: ``scales · values - mins`` in f32, cast once."""
        *lead, cols = self.values.shape
        groups = self.scales.shape[-1]
        q = self.values.reshape(*lead, groups, cols // groups).astype(jnp.float32)
        w = self.scales[..., None] * q
        if self.mins is not None:
            w = w - self.mins[..., None]
        return w.reshape(*lead, cols).astype(dtype)


def dense(w: jax.Array | QuantArray, dtype) -> jax.Array:
    """``w`` as a dense array of ``dtype`` (decoded if it is a QuantArray)."""
    return w.dequantize(dtype) if isinstance(w, QuantArray) else w
