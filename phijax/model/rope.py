"""Rotary position embeddings, "neox" style (rotate halves), as Phi-3 and HF use them.

Partial rotary: only the first ``rotary_dim`` dims of each head rotate.
LongRoPE (Phi-3-128k, Phi-3.5, Phi-4-mini): per-frequency divisors, short or
long, and cos/sin scaled by an attention factor. HF switches short→long when
the running sequence passes the original context; we choose once, from the
static cache length (as llama.cpp chooses from its context size), so a
compiled step never changes its constants mid-sequence. Linear scaling
divides positions by a factor.
"""

from __future__ import annotations

import chex
import jax.numpy as jnp
import numpy as np

from phijax.config import Phi3Config


def inverse_frequencies(
    config: Phi3Config,
    cache_len: int,
    long_factors: np.ndarray | None = None,
    short_factors: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """``inv_freq`` f32 ``[rotary_dim // 2]`` and the cos/sin scale, for a cache of ``cache_len``."""
    exponents = np.arange(0, config.rotary_dim, 2, dtype=np.float64) / config.rotary_dim
    inv_freq = 1.0 / (config.rope_theta**exponents)
    scale = 1.0
    if config.rope_scaling == "linear":
        inv_freq = inv_freq / config.rope_scaling_factor
    elif config.rope_scaling == "longrope":
        use_long = cache_len > config.original_context_length
        factors = long_factors if use_long else short_factors
        if factors is None or factors.shape != inv_freq.shape:
            raise ValueError(f"LongRoPE needs {inv_freq.shape[0]} factors, got {factors!r}")
        inv_freq = inv_freq / factors.astype(np.float64)
        scale = config.rope_attn_factor
    return inv_freq.astype(np.float32), scale


def rope_angles(positions: jnp.ndarray, inv_freq: jnp.ndarray, scale: float) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos, sin f32 ``[batch, seq, rotary_dim // 2]`` for int ``positions [batch, seq]``."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(angles) * scale, jnp.sin(angles) * scale


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotate ``x [batch, seq, heads, head_dim]`` by ``cos/sin [batch, seq, rotary_dim // 2]``."""
    half = cos.shape[-1]
    chex.assert_rank(x, 4)
    chex.assert_equal_shape_prefix([x, cos], 2)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    xf = x.astype(jnp.float32)
    x1, x2, rest = xf[..., :half], xf[..., half : 2 * half], xf[..., 2 * half :]
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)
    return rotated.astype(x.dtype)
