"""Decode attention on the CPU kernel: one query position per row, over the KV cache in place.

XLA:CPU copies each layer's attended slice out of the stacked cache before its two products:
on Phi-3-mini's batch-1 decode over 128 slots, the copies alone were 7% of a step. The
kernel's second target (``decode_attention.h``, in the library of :func:`phijax.kernels.matmul`,
registered with it) reads the layer where the cache holds it, and only the slots the mask
shows. Its numerics are the pure path's (:func:`phijax.model.attention.attention`) but for the
order of the sums. Inference only: it has no derivative (gradients take the pure path, which
runs without a cache).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

TARGET = "phijax_cpu_attention"
"""The prefix of the builds' attention targets: build ``b`` registers ``f"{TARGET}_{b}"``."""
LANES = 16
"""Every build's head size must be a multiple of this (the widest build's vector)."""


def target(build: str) -> str:
    """The attention target that ``build`` registers."""
    return f"{TARGET}_{build}"


def fits(head_dim: int, dtype) -> bool:
    """Whether the kernel attends over a cache of ``head_dim`` and ``dtype``."""
    return jnp.dtype(dtype) == jnp.float32 and head_dim % LANES == 0


def decode_attention(
    build: str, q: jax.Array, k: jax.Array, v: jax.Array, layer, mask: jax.Array
) -> jax.Array:
    """``q [batch, q_heads, head_dim]`` (f32) attending to layer ``layer`` of the cache
    ``k, v [layers, batch, kv_heads, max_seq, head_dim]``, over its first ``slots`` positions
    where ``mask [batch, slots]`` shows them (:func:`phijax.model.attention.attention_mask`'s
    row of the query) → ``[batch, q_heads, head_dim]`` f32. ``build``: one that
    :func:`phijax.kernels.builds` lists, which registers its targets (the model's
    ``Backend.kernel``)."""
    b, hq, d = q.shape
    chex.assert_rank([k, v], 5)
    chex.assert_equal_shape([k, v])
    chex.assert_axis_dimension(k, 1, b)
    chex.assert_axis_dimension(k, 4, d)
    chex.assert_shape(mask, (b, None))
    out = jax.ShapeDtypeStruct((b, hq, d), jnp.float32)
    ffi = jax.ffi.ffi_call(target(build), out, vmap_method="sequential")
    return ffi(q.astype(jnp.float32), k, v, jnp.asarray(layer, jnp.int32), mask)


def reference(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, layer: int, mask: np.ndarray
) -> np.ndarray:
    """:func:`decode_attention` in numpy float64: the kernel's self-check."""
    keys, values = k[layer].astype(np.float64), v[layer].astype(np.float64)
    n, groups = mask.shape[1], q.shape[1] // keys.shape[1]
    keys, values = (np.repeat(a[:, :, :n], groups, axis=1) for a in (keys, values))
    scores = np.einsum("bhtd,bhd->bht", keys, q.astype(np.float64)) / np.sqrt(q.shape[-1])
    scores = np.where(mask[:, None], scores, np.finfo(np.float32).min)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bht,bhtd->bhd", probs, values)
