"""Causal grouped-query attention over a KV cache, with per-row lengths and a sliding window."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def attention_mask(
    q_pos: jnp.ndarray, kv_len: jnp.ndarray, n_keys: int, window: int | None
) -> jnp.ndarray:
    """bool ``[batch, seq, n_keys]``: query at position p sees key slot t iff t <= p,
    t < kv_len and, with a window, p - t < window (HF's rule). Slot t holds position t."""
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
    mask: jnp.ndarray,
    *,
    return_weights: bool = False,
) -> tuple[jnp.ndarray, jnp.ndarray | None]:
    """Softmax attention in f32.

    q ``[batch, seq, q_heads, head_dim]``; k, v ``[batch, kv_heads, keys, head_dim]`` (the
    cache's order: keys-first products read each head's keys in place, no transpose);
    mask bool ``[batch, seq, keys]`` (:func:`attention_mask`, built once per forward pass).
    Returns ``[batch, seq, q_heads, head_dim]`` in q's dtype and, if asked, the
    probabilities ``[batch, q_heads, seq, keys]`` (f32).
    """
    b, s, hq, d = q.shape
    hkv, n_keys = k.shape[1], k.shape[2]
    chex.assert_equal_shape([k, v])
    chex.assert_axis_dimension(k, 0, b)
    chex.assert_shape(mask, (b, s, n_keys))
    groups = hq // hkv
    qg = q.reshape(b, s, hkv, groups, d)
    scores = jnp.einsum("bktd,bskgd->bkgst", k, qg, preferred_element_type=jnp.float32)
    scores = scores * (d**-0.5)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum(
        "bkgst,bktd->bskgd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    weights = probs.reshape(b, hq, s, n_keys) if return_weights else None
    return out.reshape(b, s, hq, d).astype(q.dtype), weights
