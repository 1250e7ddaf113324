"""What the sampling chain carries from one step to the next: the token history (for the
penalties and DRY) and mirostat's ``mu``."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from phijax.sampling.params import SamplerParams


class SamplerState(NamedTuple):
    """What the chain carries between steps: the token ``history [batch, seq]`` (prompt then
    generated), its per-row ``length`` and ``prompt_len`` ``[batch]``, and mirostat's ``mu``."""

    history: jax.Array
    length: jax.Array
    prompt_len: jax.Array
    mu: jax.Array


def init_state(history: jax.Array, prompt_len: jax.Array, params: SamplerParams) -> SamplerState:
    """State before the first sampled token: ``history`` holds the prompts (padded)."""
    # length: its own buffer (it is donated to decode, which keeps prompt_len unchanged)
    return SamplerState(history, prompt_len, jnp.array(prompt_len), 2.0 * params.mirostat_tau)


def accept(state: SamplerState, tokens: jax.Array) -> SamplerState:
    """Append ``tokens [batch]`` to the history (beyond its end, nothing is kept)."""
    rows = jnp.arange(tokens.shape[0])
    history = state.history.at[rows, state.length].set(tokens, mode="drop")
    return state._replace(history=history, length=state.length + 1)
