"""int8 activations: each row of ``x`` rounded to int8 per block, as llama.cpp does before a
quantized product (``load(..., activations="int8")``).

llama.cpp multiplies a quantized weight with an int8 copy of the activations, so its logits
carry that rounding. This mode reproduces it, to study llama.cpp's numerics (or to run at
its speed on CPU, ``phijax/kernels/int8_dot.h``): every packed product sees
:func:`fake_quant` ``(x)``, the value the int8 codes stand for, instead of ``x``.

- k-quant weights (blocks of 256): ggml's ``quantize_row_q8_K``: per 256, the value of
  largest magnitude ``max`` maps to -127; ``q = min(127, round(-127 / max · x))`` (ties to
  even), ``d = 1 / (-127 / max)``.
- the other types (blocks of 32): ``quantize_row_q8_0``/``q8_1``: ``q = round(127 / amax ·
  x)``, ``d = amax / 127`` stored as f16.

Derivatives pass straight through the rounding (:func:`fake_quant`'s derivative is the
identity): a gradient in this mode is the f32 product's, taken at the rounded activations.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

BLOCKS = (32, 256)
"""Activation blocks: 256 for k-quant weights (Q8_K), 32 for the others (Q8_0, Q8_1)."""


def quantize(x: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
    """``x [..., n]`` (f32, ``n`` a multiple of ``block``) → int8 codes ``[..., n]`` and each
    block's scale ``[..., n // block]`` f32, rounded as llama.cpp rounds (module docstring)."""
    if block not in BLOCKS:
        raise ValueError(f"activation block {block}: use one of {BLOCKS}")
    *lead, n = x.shape
    xb = x.astype(jnp.float32).reshape(*lead, n // block, block)
    amax = jnp.max(jnp.abs(xb), axis=-1)
    nonzero = amax > 0
    if block == 256:  # the first value of largest magnitude, with its sign
        first = jnp.argmax(jnp.abs(xb), axis=-1)
        signed = jnp.take_along_axis(xb, first[..., None], axis=-1)[..., 0]
        iscale = jnp.where(nonzero, -127.0 / jnp.where(nonzero, signed, 1.0), 0.0)
        q = jnp.minimum(127.0, jnp.round(iscale[..., None] * xb))
        d = jnp.where(nonzero, 1.0 / jnp.where(nonzero, iscale, 1.0), 0.0)
    else:
        inverse = jnp.where(nonzero, 127.0 / jnp.where(nonzero, amax, 1.0), 0.0)
        q = jnp.round(xb * inverse[..., None])
        d = (amax / 127.0).astype(jnp.float16).astype(jnp.float32)
    return q.astype(jnp.int8).reshape(*lead, n), d


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _rounded(x: jax.Array, block: int) -> jax.Array:
    q, d = quantize(x, block)
    *lead, n = x.shape
    values = q.reshape(*lead, n // block, block).astype(jnp.float32) * d[..., None]
    return values.reshape(x.shape).astype(x.dtype)


@_rounded.defjvp
def _rounded_jvp(block, primals, tangents):
    return _rounded(primals[0], block), tangents[0]


def fake_quant(x: jax.Array, block: int) -> jax.Array:
    """``x [..., n]`` replaced by what its int8 codes stand for (``q · d`` per block), in
    ``x``'s dtype; derivatives pass straight through."""
    return _rounded(x, block)
