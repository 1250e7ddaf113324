"""Stages that remove tokens (set them to ``-inf``, always keeping each row's most likely
token) or rescale the logits: top-n-sigma, top-k, typical-p, top-p, min-p, XTC, the epsilon
and eta cutoffs, temperature, and mirostat v2's truncation. Each maps logits ``[b, V]`` and
per-row parameters to logits ``[b, V]``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from phijax.sampling.params import SamplerParams
from phijax.sampling.threshold import keep_largest

_NEG_INF = -jnp.inf


def top_n_sigma(logits: jax.Array, p: SamplerParams) -> jax.Array:
    """Keep logits >= max - n * std (the std of the finite logits)."""
    finite = jnp.isfinite(logits)
    count = jnp.maximum(finite.sum(-1, keepdims=True), 1)
    x = jnp.where(finite, logits, 0.0)
    mean = x.sum(-1, keepdims=True) / count
    std = jnp.sqrt(jnp.where(finite, (x - mean) ** 2, 0.0).sum(-1, keepdims=True) / count)
    top = jnp.max(logits, -1, keepdims=True)
    return _keep_top(logits, logits >= top - p.top_n_sigma[:, None] * std)


def top_k(logits: jax.Array, p: SamplerParams) -> jax.Array:
    """Keep the k largest logits (ties at the boundary kept)."""
    return _keep_top(
        logits, keep_largest(logits, jnp.ones_like(logits), p.top_k.astype(jnp.float32))
    )


def top_p(logits: jax.Array, p: SamplerParams) -> jax.Array:
    """Nucleus: keep the smallest most-probable set with mass >= p."""
    probs = probabilities(logits)
    return _keep_mass(logits, probs, probs, p.top_p)


def typical_p(logits: jax.Array, p: SamplerParams) -> jax.Array:
    """Locally typical sampling: keep the tokens whose surprise is nearest the entropy, up to
    mass p."""
    probs, logp, entropy = _entropy(logits)
    closeness = jnp.where(probs > 0, -jnp.abs(-logp - entropy), -jnp.inf)  # larger: more typical
    return _keep_mass(logits, closeness, probs, p.typical_p)


def min_p(logits: jax.Array, p: SamplerParams) -> jax.Array:
    """Keep p >= min_p * p_max."""
    probs = probabilities(logits)
    return _keep_top(logits, probs >= p.min_p[:, None] * jnp.max(probs, -1, keepdims=True))


def xtc(logits: jax.Array, p: SamplerParams, coin: jax.Array) -> jax.Array:
    """Exclude top choices: where ``coin [b] < xtc_probability``, remove every token at or above
    the threshold but the least likely of them."""
    probs = probabilities(logits)
    above = probs >= p.xtc_threshold[:, None]
    least_above = jnp.min(jnp.where(above, probs, jnp.inf), -1, keepdims=True)
    remove = above & (probs > least_above)
    fire = (coin < p.xtc_probability) & (above.sum(-1) >= 2) & (p.xtc_threshold <= 0.5)
    return jnp.where(fire[:, None] & remove, _NEG_INF, logits)


def epsilon(logits: jax.Array, p: SamplerParams) -> jax.Array:
    """HF epsilon cutoff: keep p >= epsilon."""
    return _keep_top(logits, probabilities(logits) >= p.epsilon_cutoff[:, None])


def eta(logits: jax.Array, p: SamplerParams) -> jax.Array:
    """HF eta cutoff: keep p >= min(eta, sqrt(eta) * exp(-entropy))."""
    probs, _, entropy = _entropy(logits)
    cutoff = jnp.minimum(p.eta_cutoff[:, None], jnp.sqrt(p.eta_cutoff[:, None]) * jnp.exp(-entropy))
    return _keep_top(logits, probs >= cutoff)


def temperature(logits: jax.Array, p: SamplerParams) -> jax.Array:
    """Divide by T; T == 0 is greedy (only the most likely token is left)."""
    t = p.temperature[:, None]
    greedy = jnp.where(_is_top(logits), logits, _NEG_INF)
    return jnp.where(t > 0, logits / jnp.where(t > 0, t, 1.0), greedy)


def mirostat(logits: jax.Array, mu: jax.Array) -> jax.Array:
    """Mirostat v2 truncation: keep tokens whose surprise ``-log2 p`` is at most ``mu [b]``."""
    probs = probabilities(logits)
    return _keep_top(logits, -jnp.log2(probs) <= mu[:, None])


def probabilities(logits: jax.Array) -> jax.Array:
    """The softmax over the vocabulary, ``[b, V]``."""
    return jax.nn.softmax(logits, axis=-1)


def _entropy(logits: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Probabilities and log-probabilities ``[b, V]``, and the entropy ``[b, 1]``."""
    probs = probabilities(logits)
    logp = jax.nn.log_softmax(logits, axis=-1)
    entropy = -jnp.sum(jnp.where(probs > 0, probs * logp, 0.0), -1, keepdims=True)
    return probs, logp, entropy


def _keep_mass(logits: jax.Array, rank: jax.Array, probs: jax.Array, mass: jax.Array) -> jax.Array:
    """Keep the fewest tokens, largest ``rank`` first, whose ``probs`` reach ``mass [b]`` of
    the row's total."""
    return _keep_top(logits, keep_largest(rank, probs, mass * jnp.sum(probs, -1)))


def _is_top(logits: jax.Array) -> jax.Array:
    """bool ``[b, V]``: each row's most likely token(s). A max and a compare: on XLA:CPU an
    argmax over the vocabulary costs 10x more."""
    return logits >= jnp.max(logits, axis=-1, keepdims=True)


def _keep_top(logits: jax.Array, keep: jax.Array) -> jax.Array:
    """Apply the bool ``keep [b, V]`` mask, always keeping each row's most likely token."""
    return jnp.where(keep | _is_top(logits), logits, _NEG_INF)
