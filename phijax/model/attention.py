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
    f32 = jnp.float32
    if s == 1:
        # Decode: the unit query axis left out of both products. With it, XLA:CPU copies each
        # layer's attended keys and values transposed in every step (Phi-3-mini, batch 1,
        # 2048 keys: 149 against 75 ms of attention per token).
        scores = jnp.einsum("bktd,bkgd->bkgt", k, qg[:, 0], preferred_element_type=f32)
        scores = scores[:, :, :, None]
    else:
        scores = jnp.einsum("bktd,bskgd->bkgst", k, qg, preferred_element_type=f32)
    scores = jnp.where(mask[:, None, None], scores * (d**-0.5), jnp.finfo(f32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    if s == 1:
        out = jnp.einsum(
            "bkgt,bktd->bkgd", probs[:, :, :, 0].astype(v.dtype), v, preferred_element_type=f32
        )[:, None]
    else:
        out = jnp.einsum("bkgst,bktd->bskgd", probs.astype(v.dtype), v, preferred_element_type=f32)
    weights = probs.reshape(b, hq, s, n_keys) if return_weights else None
    return out.reshape(b, s, hq, d).astype(q.dtype), weights
