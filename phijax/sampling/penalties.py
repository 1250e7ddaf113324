"""Stages that lower the logits of tokens already in the history: the repetition, frequency
and presence penalties, and DRY (penalize tokens that would extend a repeat)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from phijax.sampling.params import SamplerParams
from phijax.sampling.state import SamplerState

DRY_MAX_MATCH = 64  # longest repeat DRY measures (tokens)


def repetition(logits: jax.Array, state: SamplerState, p: SamplerParams) -> jax.Array:
    """Repetition (HF/llama.cpp/candle rule), frequency and presence penalties over the last
    ``repeat_last_n`` tokens (generated only, unless ``penalize_prompt``). ``[b, V]``."""
    floor = jnp.where(p.penalize_prompt, 0, state.prompt_len)
    start = _window_start(state, p.repeat_last_n, floor)
    pos = jnp.arange(state.history.shape[1])[None, :]
    in_window = (pos >= start[:, None]) & (pos < state.length[:, None])
    counts = _by_token(state.history, logits.shape[1], jnp.float32).add(
        in_window.astype(jnp.float32), mode="drop"
    )
    seen = counts > 0
    pen = p.repetition_penalty[:, None]
    out = jnp.where(seen, jnp.where(logits > 0, logits / pen, logits * pen), logits)
    return out - counts * p.frequency_penalty[:, None] - seen * p.presence_penalty[:, None]


def dry(logits: jax.Array, state: SamplerState, p: SamplerParams) -> jax.Array:
    """DRY: ``multiplier * base ** (n - allowed_length)`` off each token that would extend a
    repeat of ``n >= allowed_length`` tokens of the last ``dry_last_n``. ``[b, V]``."""
    start = _window_start(state, p.dry_last_n, 0)
    lengths = dry_match_lengths(state.history, state.length, start, p.dry_breakers)
    best = _by_token(state.history, logits.shape[1], jnp.int32).max(lengths, mode="drop")
    allowed = p.dry_allowed_length[:, None]
    penalty = p.dry_multiplier[:, None] * p.dry_base[:, None] ** (best - allowed).astype(
        jnp.float32
    )
    return jnp.where(best >= allowed, logits - penalty, logits)


def dry_match_lengths(history, length, start, breakers):
    """For each position ``j`` of ``history [b, S]``: the length of the longest run of tokens
    ending at ``j - 1`` that equals the run ending at the last token (``length - 1``), within
    ``[start, length)`` and crossing no breaker token; capped at ``DRY_MAX_MATCH``. ``[b, S]``."""
    b, seq = history.shape
    rows = jnp.arange(b)[:, None]
    j = jnp.arange(seq)[None, :]
    is_breaker = jnp.take_along_axis(breakers, history, axis=1)
    last = length[:, None] - 1

    def extend(m, carry):  # compare history[j - 1 - m] with history[last - m]
        run, total = carry
        a, c = j - 1 - m, last - m
        valid = (a >= start[:, None]) & (j < last + 1) & (c > a)
        ha = history[rows, jnp.clip(a, 0, seq - 1)]
        hc = history[rows, jnp.clip(c, 0, seq - 1)]
        ba = is_breaker[rows, jnp.clip(a, 0, seq - 1)]
        run = run & valid & (ha == hc) & ~ba
        return run, total + run

    # a loop, not 64 unrolled gathers: the unrolled form doubled the sampler's compile time
    start_carry = (jnp.ones((b, seq), jnp.bool_), jnp.zeros((b, seq), jnp.int32))
    return jax.lax.fori_loop(0, DRY_MAX_MATCH, extend, start_carry)[1]


def _window_start(state: SamplerState, last_n: jax.Array, floor) -> jax.Array:
    """``[b]``: the first position of the last ``last_n`` tokens (-1: all), not before ``floor``."""
    n = jnp.where(last_n < 0, state.history.shape[1], last_n)
    return jnp.maximum(state.length - n, floor)


def _by_token(history: jax.Array, vocab: int, dtype):
    """A zero ``[b, vocab]`` table indexed at each row's history tokens, to scatter per-position
    values into (``.add``/``.max`` with ``mode="drop"``)."""
    b = history.shape[0]
    return jnp.zeros((b, vocab), dtype).at[jnp.arange(b)[:, None], history]
