"""The sampling chain: the stages in their order on the rows that use them, mirostat, then
one categorical draw per row; and which of them a compiled chain holds."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from phijax.sampling import filters, penalties
from phijax.sampling.params import SamplerParams
from phijax.sampling.sampler import LLAMACPP_ORDER
from phijax.sampling.state import SamplerState, accept

# The stages of the light chain, which every compiled chain holds: greedy and temperature
# sampling with the penalties (the haiku program's sampler) need no other.
LIGHT_STAGES = ("penalties", "temperature")


class Chain(NamedTuple):
    """What a compiled chain holds (a static, hashable spec): its stages in order, and
    whether mirostat follows them."""

    order: tuple[str, ...]
    mirostat: bool


def compiled_chain(params: SamplerParams, order: tuple[str, ...]) -> Chain:
    """The chain to compile for a batch of ``params`` sharing ``order``: the whole order and
    mirostat where any row uses a stage beyond :data:`LIGHT_STAGES` or mirostat, so that
    switching between such samplers never recompiles; else only the light stages, whose
    decode program compiles in about half the time (docs/sampling.md). A row's tokens are
    the same in either chain: a stage no row uses changes nothing."""
    active = _active(params, params.logit_bias.shape[-1])
    heavy = [rows for stage, rows in active.items() if stage not in LIGHT_STAGES]
    if bool(jnp.any(jnp.stack(heavy))):  # one read back to the host, not one per stage
        return Chain(tuple(order), True)
    return Chain(tuple(s for s in order if s in LIGHT_STAGES), False)


def filtered_logits(
    logits: jax.Array,
    state: SamplerState,
    params: SamplerParams,
    order: tuple[str, ...],
    coins: jax.Array,
    *,
    mirostat: bool = True,
) -> jax.Array:
    """The chain up to the draw, mirostat included unless ``mirostat=False``: ``logits [b, V]``
    f32 with removed tokens at ``-inf``. ``coins [b]`` are the uniform draws XTC compares with
    its probability."""
    p = params
    x = _when(
        jnp.any(p.logit_bias != 0, axis=-1), lambda x: x + p.logit_bias, logits.astype(jnp.float32)
    )
    active = _active(p, x.shape[-1])
    stages = _stages(state, p, coins)
    for stage in order:
        if stage == "temperature":
            x = filters.temperature(x, p)
        else:
            run, args = stages[stage]
            x = _when(active[stage], run, x, *args)
    if "temperature" not in order:
        x = filters.temperature(x, p)
    return _when(active["mirostat"], filters.mirostat, x, state.mu) if mirostat else x


def sample(
    keys: jax.Array,
    logits: jax.Array,
    state: SamplerState,
    params: SamplerParams,
    order: tuple[str, ...] = LLAMACPP_ORDER,
    *,
    mirostat: bool = True,
) -> tuple[jax.Array, jax.Array, SamplerState]:
    """One token per row. ``keys [b]`` (one PRNG key per row), ``logits [b, V]``. ``order`` and
    ``mirostat`` are what the chain holds (:func:`compiled_chain`).

    Returns tokens int32 ``[b]``, their log-probabilities under the model (the raw
    logits' softmax, whatever the chain did) ``[b]``, and the state with the tokens
    accepted and mirostat's ``mu`` updated.
    """
    sub = jax.vmap(lambda k: jax.random.split(k, 2))(keys)
    coins = jax.vmap(jax.random.uniform)(sub[:, 0])
    draws = jax.vmap(jax.random.uniform)(sub[:, 1])
    x = filtered_logits(logits, state, params, order, coins, mirostat=mirostat)
    probs = filters.probabilities(x)
    # A greedy row has only its top token left (exact ties aside): the draw returns it.
    tokens = _inverse_cdf(probs, draws).astype(jnp.int32)
    if mirostat:
        surprise = -jnp.log2(_at(probs, tokens))
        mu = jnp.where(
            params.mirostat_tau > 0,
            state.mu - params.mirostat_eta * (surprise - params.mirostat_tau),
            state.mu,
        )
        state = state._replace(mu=mu)
    logprobs = _at(jax.nn.log_softmax(logits.astype(jnp.float32), -1), tokens)
    return tokens, logprobs, accept(state, tokens)


def _active(p: SamplerParams, vocab: int) -> dict[str, jax.Array]:
    """The rows ``[b]`` that use each stage but temperature (which every row runs), and
    mirostat."""
    penalized = (p.repetition_penalty != 1) | (p.presence_penalty != 0) | (p.frequency_penalty != 0)
    return {
        "penalties": penalized & (p.repeat_last_n != 0),
        "dry": p.dry_multiplier > 0,
        "top_n_sigma": p.top_n_sigma > 0,
        "top_k": (p.top_k > 0) & (p.top_k < vocab),
        "typical_p": p.typical_p < 1,
        "top_p": p.top_p < 1,
        "min_p": p.min_p > 0,
        "xtc": p.xtc_probability > 0,
        "epsilon": p.epsilon_cutoff > 0,
        "eta": p.eta_cutoff > 0,
        "mirostat": p.mirostat_tau > 0,
    }


def _stages(state: SamplerState, p: SamplerParams, coins: jax.Array) -> dict:
    """Each stage but temperature: the stage, and its arguments after the logits."""
    return {
        "penalties": (penalties.repetition, (state, p)),
        "dry": (penalties.dry, (state, p)),
        "top_n_sigma": (filters.top_n_sigma, (p,)),
        "top_k": (filters.top_k, (p,)),
        "typical_p": (filters.typical_p, (p,)),
        "top_p": (filters.top_p, (p,)),
        "min_p": (filters.min_p, (p,)),
        "xtc": (filters.xtc, (p, coins)),
        "epsilon": (filters.epsilon, (p,)),
        "eta": (filters.eta, (p,)),
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
