"""Sampling: a validated :class:`Sampler` and one pure, batched, jit-able sampling chain.

``sample(keys, logits, state, params, order) -> (tokens, logprobs, state)`` is a
pure function of a JAX key per row: rows never share randomness, so a row's
tokens do not depend on what else is in the batch. Parameters are per row
(:class:`SamplerParams`, arrays ``[batch]``), so different strategies run side by
side in one batch. A compiled chain holds either the light stages alone (greedy,
temperature, penalties) or every stage, a stage no row uses skipped at run time by
``lax.cond`` (:func:`compiled_chain`): values never recompile, and strategies at
most once more. Only ``order`` is static.

The chain works on logits ``[batch, vocab]``; a stage removes tokens by setting
them to ``-inf`` and always keeps the most likely token. Stages (see
docs/sampling.md for each rule and its source):

``logit_bias``   add a per-token bias (always first)
``penalties``    repetition (HF/llama.cpp/candle rule), frequency and presence penalties
                 over the last ``repeat_last_n`` tokens (generated only, unless
                 ``penalize_prompt``)
``dry``          DRY: penalize tokens that would extend a repeat of the context
``top_n_sigma``  keep logits >= max - n * std
``top_k``        keep the k largest logits (ties at the boundary kept)
``typical_p``    locally typical sampling
``top_p``        nucleus: the smallest most-probable set with mass >= p
``min_p``        keep p >= min_p * p_max
``xtc``          exclude top choices (with probability ``xtc_probability``)
``epsilon``      HF epsilon cutoff: keep p >= epsilon
``eta``          HF eta cutoff: keep p >= min(eta, sqrt(eta) * exp(-entropy))
``temperature``  divide by T; T == 0 is greedy

Then mirostat v2 (when ``mirostat_tau > 0``) truncates by surprise and adapts
its ``mu``; then one categorical draw (inverse CDF of one uniform per row).

Thresholds that need a sort elsewhere (top-k, top-p, typical-p) are exact and never sort
the whole vocabulary (:mod:`phijax.sampling.threshold`).

Modules: :mod:`~phijax.sampling.sampler` (the :class:`Sampler` and the stage orders),
:mod:`~phijax.sampling.params` (its values per row), :mod:`~phijax.sampling.state` (what
the chain carries between steps), :mod:`~phijax.sampling.penalties` and
:mod:`~phijax.sampling.filters` (the stages), :mod:`~phijax.sampling.chain` (their order,
mirostat and the draw), :mod:`~phijax.sampling.keys` (the PRNG key rule).
"""

from phijax.sampling.chain import LIGHT_STAGES, Chain, compiled_chain, filtered_logits, sample
from phijax.sampling.keys import base_keys, step_keys
from phijax.sampling.params import SamplerParams, stack
from phijax.sampling.penalties import DRY_MAX_MATCH, dry_match_lengths
from phijax.sampling.sampler import CANDLE_ORDER, LLAMACPP_ORDER, STAGES, Sampler
from phijax.sampling.state import SamplerState, accept, init_state
from phijax.sampling.threshold import CANDIDATES

__all__ = [
    "CANDIDATES",
    "CANDLE_ORDER",
    "DRY_MAX_MATCH",
    "LIGHT_STAGES",
    "LLAMACPP_ORDER",
    "STAGES",
    "Chain",
    "Sampler",
    "SamplerParams",
    "SamplerState",
    "accept",
    "base_keys",
    "compiled_chain",
    "dry_match_lengths",
    "filtered_logits",
    "init_state",
    "sample",
    "stack",
    "step_keys",
]
