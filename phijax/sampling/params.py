""":class:`Sampler` values as per-row arrays, the form the compiled chain reads: a batch
mixes samplers without recompiling."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from phijax.errors import ConfigError
from phijax.sampling.sampler import Sampler


class SamplerParams(NamedTuple):
    """:class:`Sampler` values stacked per row: arrays ``[batch]`` (``logit_bias`` and
    ``dry_breakers`` ``[batch, vocab]``)."""

    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array
    min_p: jax.Array
    typical_p: jax.Array
    epsilon_cutoff: jax.Array
    eta_cutoff: jax.Array
    top_n_sigma: jax.Array
    xtc_probability: jax.Array
    xtc_threshold: jax.Array
    mirostat_tau: jax.Array
    mirostat_eta: jax.Array
    repetition_penalty: jax.Array
    presence_penalty: jax.Array
    frequency_penalty: jax.Array
    repeat_last_n: jax.Array
    penalize_prompt: jax.Array
    dry_multiplier: jax.Array
    dry_base: jax.Array
    dry_allowed_length: jax.Array
    dry_last_n: jax.Array
    logit_bias: jax.Array
    dry_breakers: jax.Array


_SCALARS = [f for f in SamplerParams._fields if f not in ("logit_bias", "dry_breakers")]
# each scalar's dtype; the others are float32
_DTYPES = {
    "top_k": np.int32, "repeat_last_n": np.int32, "dry_allowed_length": np.int32,
    "dry_last_n": np.int32, "penalize_prompt": np.bool_,
}  # fmt: skip


def stack(
    samplers: Sequence[Sampler],
    vocab_size: int,
    breaker_mask: Callable[[tuple[str, ...]], np.ndarray] | None = None,
) -> SamplerParams:
    """Per-row parameters for ``samplers`` (one per row). ``breaker_mask(strings) -> bool [vocab]``
    maps DRY sequence breakers to token ids (tokens whose text contains one)."""
    orders = {s.order for s in samplers}
    if len(orders) > 1:
        raise ConfigError(
            f"samplers in one batch must share their stage order; got {sorted(orders)}. "
            "Run them in separate generate() calls."
        )
    columns = {
        name: jnp.asarray(
            np.array([getattr(s, name) for s in samplers], _DTYPES.get(name, np.float32))
        )
        for name in _SCALARS
    }
    bias = np.zeros((len(samplers), vocab_size), np.float32)
    breakers = np.zeros((len(samplers), vocab_size), np.bool_)
    for i, s in enumerate(samplers):
        for token, value in s.logit_bias:
            if token >= vocab_size:
                raise ConfigError(
                    f"Sampler.logit_bias names token {token}, outside the vocabulary (0..{vocab_size - 1})."
                )
            bias[i, token] += value
        if s.dry_multiplier > 0 and breaker_mask is not None:
            breakers[i] = breaker_mask(s.dry_sequence_breakers)
    return SamplerParams(
        **columns, logit_bias=jnp.asarray(bias), dry_breakers=jnp.asarray(breakers)
    )
