"""The sampling chain: the stages in their order on the rows that use them, mirostat, then
one categorical draw per row."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from phijax.sampling import filters, penalties
from phijax.sampling.params import SamplerParams
from phijax.sampling.sampler import LLAMACPP_ORDER
from phijax.sampling.state import SamplerState, accept


def filtered_logits(
    logits: jax.Array,
    state: SamplerState,
    params: SamplerParams,
    order: tuple[str, ...],
    coins: jax.Array,
) -> jax.Array:
    """The chain up to the draw, mirostat included: ``logits [b, V]`` f32 with removed
    tokens at ``-inf``. ``coins [b]`` are the uniform draws XTC compares with its probability."""
    p = params
    x = _when(
        jnp.any(p.logit_bias != 0, axis=-1), lambda x: x + p.logit_bias, logits.astype(jnp.float32)
    )
    stages = _stages(state, p, coins, x.shape[-1])
    for stage in order:
        if stage == "temperature":
            x = filters.temperature(x, p)
        else:
            active, run, args = stages[stage]
            x = _when(active, run, x, *args)
    if "temperature" not in order:
        x = filters.temperature(x, p)
    return _when(p.mirostat_tau > 0, filters.mirostat, x, state.mu)


def sample(
    keys: jax.Array,
    logits: jax.Array,
    state: SamplerState,
    params: SamplerParams,
    order: tuple[str, ...] = LLAMACPP_ORDER,
) -> tuple[jax.Array, jax.Array, SamplerState]:
    """One token per row. ``keys [b]`` (one PRNG key per row), ``logits [b, V]``.

    Returns tokens int32 ``[b]``, their log-probabilities under the model (the raw
    logits' softmax, whatever the chain did) ``[b]``, and the state with the tokens
    accepted and mirostat's ``mu`` updated.
    """
    sub = jax.vmap(lambda k: jax.random.split(k, 2))(keys)
    coins = jax.vmap(jax.random.uniform)(sub[:, 0])
    draws = jax.vmap(jax.random.uniform)(sub[:, 1])
    x = filtered_logits(logits, state, params, order, coins)
    miro = params.mirostat_tau > 0
    probs = filters.probabilities(x)
    # A greedy row has only its top token left (exact ties aside): the draw returns it.
    tokens = _inverse_cdf(probs, draws).astype(jnp.int32)
    picked = _at(probs, tokens)
    mu = jnp.where(
        miro, state.mu - params.mirostat_eta * (-jnp.log2(picked) - params.mirostat_tau), state.mu
    )
    logprobs = _at(jax.nn.log_softmax(logits.astype(jnp.float32), -1), tokens)
    return tokens, logprobs, accept(state._replace(mu=mu), tokens)


def _stages(state: SamplerState, p: SamplerParams, coins: jax.Array, vocab: int) -> dict:
    """Each stage but temperature (which every row runs): the rows that use it ``[b]``, the
    stage, and its arguments after the logits."""
    penalized = (p.repetition_penalty != 1) | (p.presence_penalty != 0) | (p.frequency_penalty != 0)
    return {
        "penalties": (penalized & (p.repeat_last_n != 0), penalties.repetition, (state, p)),
        "dry": (p.dry_multiplier > 0, penalties.dry, (state, p)),
        "top_n_sigma": (p.top_n_sigma > 0, filters.top_n_sigma, (p,)),
        "top_k": ((p.top_k > 0) & (p.top_k < vocab), filters.top_k, (p,)),
        "typical_p": (p.typical_p < 1, filters.typical_p, (p,)),
        "top_p": (p.top_p < 1, filters.top_p, (p,)),
        "min_p": (p.min_p > 0, filters.min_p, (p,)),
        "xtc": (p.xtc_probability > 0, filters.xtc, (p, coins)),
        "epsilon": (p.epsilon_cutoff > 0, filters.epsilon, (p,)),
        "eta": (p.eta_cutoff > 0, filters.eta, (p,)),
    }


def _when(active: jax.Array, stage, logits: jax.Array, *args) -> jax.Array:
    """``stage`` on the rows where ``active [b]``; skipped entirely when no row needs it."""

    def run(x):
        return jnp.where(active[:, None], stage(x, *args), x)

    return jax.lax.cond(jnp.any(active), run, lambda x: x, logits)


def _at(values: jax.Array, tokens: jax.Array) -> jax.Array:
    """``values [b, V]`` at each row's token ``tokens [b]``: ``[b]``."""
    return jnp.take_along_axis(values, tokens[:, None], axis=-1)[:, 0]


def _inverse_cdf(probs: jax.Array, u: jax.Array) -> jax.Array:
    """Per row, the first token whose cumulative probability exceeds ``u · total``.

    Two levels (blocks of 256, then within the block): a flat cumsum over a large
    vocabulary is 10x slower on XLA:CPU.
    """
    b, vocab = probs.shape
    block = 256
    padded = jnp.pad(probs, ((0, 0), (0, -vocab % block))).reshape(b, -1, block)
    sums = padded.sum(-1)
    ends = jnp.cumsum(sums, axis=-1)
    target = u * ends[:, -1]
    k = jnp.minimum(jnp.argmax(ends > target[:, None], axis=-1), ends.shape[1] - 1)
    before = jnp.take_along_axis(ends - sums, k[:, None], axis=-1)
    row = jnp.take_along_axis(padded, k[:, None, None], axis=1)[:, 0]
    hit = jnp.cumsum(row, axis=-1) + before > target[:, None]
    last_nonzero = block - 1 - jnp.argmax(jnp.flip(row > 0, axis=-1), axis=-1)  # if rounding misses
    j = jnp.where(hit.any(-1), jnp.argmax(hit, axis=-1), last_nonzero)
    return jnp.minimum(k * block + j, vocab - 1)
