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
from phijax.errors import ConfigError


def longrope_factors(
    config: Phi3Config,
    seq_limit: int,
    long_factors: np.ndarray | None,
    short_factors: np.ndarray | None,
) -> np.ndarray | None:
    """The LongRoPE divisor set ``[rotary_dim // 2]`` for sequences up to ``seq_limit``
    (long past the original context, else short); ``None`` without LongRoPE."""
    if config.rope_scaling != "longrope":
        return None
    use_long = seq_limit > (config.original_context_length or config.context_length)
    factors = long_factors if use_long else short_factors
    if factors is None or factors.shape != (config.rotary_dim // 2,):
        which = "rope_factors_long" if use_long else "rope_factors_short"
        got = "none" if factors is None else f"shape {list(factors.shape)}"
        raise ConfigError(
            f"LongRoPE needs a {which}.weight tensor of {config.rotary_dim // 2} factors; the file "
            f"has {got}. The file is incomplete: convert the model again."
        )
    return factors.astype(np.float32)


def inverse_frequencies(config: Phi3Config, factors: jnp.ndarray | None = None) -> jnp.ndarray:
    """``inv_freq`` f32 ``[rotary_dim // 2]``: base^(-2i/rotary_dim), divided by the linear
    factor or by the LongRoPE ``factors`` (a weight of the model, chosen at load)."""
    exponents = np.arange(0, config.rotary_dim, 2, dtype=np.float64) / config.rotary_dim
    inv_freq = 1.0 / (config.rope_theta**exponents)
    if config.rope_scaling == "linear":
        inv_freq = inv_freq / config.rope_scaling_factor
    inv_freq = jnp.asarray(inv_freq.astype(np.float32))
    return inv_freq / factors if config.rope_scaling == "longrope" else inv_freq


def rope_scale(config: Phi3Config) -> float:
    """The cos/sin scale: LongRoPE's attention factor, else 1."""
    return config.rope_attn_factor if config.rope_scaling == "longrope" else 1.0


def rope_angles(
    positions: jnp.ndarray, inv_freq: jnp.ndarray, scale: float
) -> tuple[jnp.ndarray, jnp.ndarray]:
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
