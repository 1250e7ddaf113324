"""Causal grouped-query attention over a KV cache, with per-row lengths and a sliding window."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def attention_mask(q_pos: jnp.ndarray, kv_len: jnp.ndarray, n_keys: int, window: int | None) -> jnp.ndarray:
    """bool ``[batch, seq, n_keys]``: query at position p sees key t iff t <= p, t < kv_len and,
    with a window, p - t < window (HF's rule)."""
    t = jnp.arange(n_keys, dtype=jnp.int32)[None, None, :]
    p = q_pos[:, :, None]
    mask = (t <= p) & (t < kv_len[:, None, None])
    if window is not None:
        mask &= p - t < window
    return mask


def attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    q_pos: jnp.ndarray,
    kv_len: jnp.ndarray,
    window: int | None = None,
) -> jnp.ndarray:
    """Softmax attention in f32.

    q ``[batch, seq, q_heads, head_dim]``; k, v ``[batch, keys, kv_heads, head_dim]``;
    q_pos int ``[batch, seq]`` (absolute positions); kv_len int ``[batch]`` (valid keys per row).
    Returns ``[batch, seq, q_heads, head_dim]`` in q's dtype.
    """
    b, s, hq, d = q.shape
    hkv = k.shape[2]
    chex.assert_equal_shape([k, v])
    chex.assert_axis_dimension(k, 0, b)
    groups = hq // hkv
    qg = q.reshape(b, s, hkv, groups, d)
    scores = jnp.einsum("bskgd,btkd->bkgst", qg, k, preferred_element_type=jnp.float32)
    scores = scores * (d**-0.5)
    mask = attention_mask(q_pos, kv_len, k.shape[1], window)[:, None, None]
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgst,btkd->bskgd", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, s, hq, d).astype(q.dtype)
