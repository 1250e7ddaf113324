"""Sampling: a validated :class:`Sampler` and one pure, batched, jit-able sampling chain.

``sample(keys, logits, state, params, order) -> (tokens, logprobs, state)`` is a
pure function of a JAX key per row: rows never share randomness, so a row's
tokens do not depend on what else is in the batch. Parameters are per row
(:class:`SamplerParams`, arrays ``[batch]``), so different strategies run side by
side in one batch, and every stage is always in the compiled chain (a stage no
row uses is skipped at run time by ``lax.cond``): switching strategies or values
never recompiles. Only ``order`` is static.

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

Thresholds that need a sort elsewhere (top-k, top-p, typical-p) are read off
the 64 largest candidates (``lax.top_k``) when those hold enough mass in
every row, and otherwise found by bisection over the order-preserving integer image of f32
values (32 rounds of masked sums): exact either way, never a full sort of the
vocabulary (a sort of [32, 49152] takes 300 ms on XLA:CPU).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from phijax.errors import ConfigError

STAGES = (
    "penalties", "dry", "top_n_sigma", "top_k", "typical_p", "top_p", "min_p", "xtc",
    "epsilon", "eta", "temperature",
)  # fmt: skip
# llama.cpp's default chain (common_params_sampling.samplers), with HF's epsilon
# and eta cutoffs (absent from llama.cpp) placed after min_p.
LLAMACPP_ORDER = STAGES
# Candle's order (apply_repeat_penalty, then LogitsProcessor): repeat penalty, temperature, top-p.
CANDLE_ORDER = ("penalties", "temperature", "top_p")
DRY_MAX_MATCH = 64  # longest repeat DRY measures (tokens)
# Top tokens searched first for top-k / top-p / typical-p thresholds. Measured: a second
# tier of 1024 costs more at batch 32 (lax.top_k 1024 ~15 ms) than it saves.
CANDIDATES = 64
_NEG_INF = -jnp.inf


@dataclass(frozen=True)
class Sampler:
    """How to pick the next token; frozen and validated. Defaults sample the plain softmax.

    Every field is a value per row: a batch may mix samplers freely, except
    ``order`` (the stage order, static under jit), which must be shared.
    Disabled values: ``top_k=0``, ``top_p=1``, ``min_p=0``, ``typical_p=1``,
    ``epsilon_cutoff=0``, ``eta_cutoff=0``, ``top_n_sigma=0``,
    ``xtc_probability=0``, ``mirostat_tau=0``, ``repetition_penalty=1``,
    ``presence_penalty=0``, ``frequency_penalty=0``, ``dry_multiplier=0``.
    ``repeat_last_n=-1`` means the whole sequence; ``dry_last_n`` likewise.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    top_n_sigma: float = 0.0
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    mirostat_tau: float = 0.0
    mirostat_eta: float = 0.1
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_last_n: int = 64
    penalize_prompt: bool = False
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_last_n: int = -1
    dry_sequence_breakers: tuple[str, ...] = ("\n", ":", '"', "*")
    logit_bias: tuple[tuple[int, float], ...] = ()
    order: tuple[str, ...] = LLAMACPP_ORDER

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"Sampler.{name} = {getattr(self, name)!r}; allowed: {allowed}.")

        def number(name: str) -> float:
            value = getattr(self, name)
            check(
                name,
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value),
                "a finite number",
            )
            return float(value)

        def integer(name: str) -> int:
            value = getattr(self, name)
            check(
                name,
                isinstance(value, (int, np.integer)) and not isinstance(value, bool),
                "an integer",
            )
            return int(value)

        check("temperature", number("temperature") >= 0, ">= 0 (0 is greedy)")
        check("top_k", integer("top_k") >= 0, ">= 0 (0 is off)")
        check("top_p", 0 < number("top_p") <= 1, "0 < top_p <= 1 (1 is off)")
        check("min_p", 0 <= number("min_p") <= 1, "0 <= min_p <= 1 (0 is off)")
        check("typical_p", 0 < number("typical_p") <= 1, "0 < typical_p <= 1 (1 is off)")
        check(
            "epsilon_cutoff",
            0 <= number("epsilon_cutoff") < 1,
            "0 <= epsilon_cutoff < 1 (0 is off)",
        )
        check("eta_cutoff", 0 <= number("eta_cutoff") < 1, "0 <= eta_cutoff < 1 (0 is off)")
        check("top_n_sigma", number("top_n_sigma") >= 0, ">= 0 (0 is off)")
        check(
            "xtc_probability",
            0 <= number("xtc_probability") <= 1,
            "0 <= xtc_probability <= 1 (0 is off)",
        )
        check(
            "xtc_threshold",
            0 <= number("xtc_threshold") <= 1,
            "0 <= xtc_threshold <= 1 (> 0.5 is off)",
        )
        check("mirostat_tau", number("mirostat_tau") >= 0, ">= 0 (0 is off)")
        check("mirostat_eta", 0 < number("mirostat_eta") <= 1, "0 < mirostat_eta <= 1")
        check("repetition_penalty", number("repetition_penalty") > 0, "> 0 (1 is off)")
        number("presence_penalty")
        number("frequency_penalty")
        check(
            "repeat_last_n",
            integer("repeat_last_n") >= -1,
            ">= -1 (-1 is the whole sequence, 0 is off)",
        )
        check("penalize_prompt", isinstance(self.penalize_prompt, bool), "True or False")
        check("dry_multiplier", number("dry_multiplier") >= 0, ">= 0 (0 is off)")
        check("dry_base", number("dry_base") >= 1, ">= 1")
        check("dry_allowed_length", integer("dry_allowed_length") >= 1, ">= 1")
        check("dry_last_n", integer("dry_last_n") >= -1, ">= -1 (-1 is the whole sequence)")
        breakers = self.dry_sequence_breakers
        check(
            "dry_sequence_breakers",
            isinstance(breakers, tuple) and all(isinstance(b, str) and b for b in breakers),
            "a tuple of non-empty strings",
        )
        bias = self.logit_bias
        check(
            "logit_bias",
            isinstance(bias, tuple) and all(
                isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], (int, np.integer)) and p[0] >= 0
                and isinstance(p[1], (int, float)) and not math.isnan(p[1]) for p in bias
            ),
            "a tuple of (token_id, bias) pairs, bias a number or -inf",
        )  # fmt: skip
        unknown = [s for s in self.order if s not in STAGES]
        check("order", isinstance(self.order, tuple) and not unknown and len(set(self.order)) == len(self.order),
              f"a tuple of distinct stages from {STAGES}")  # fmt: skip

    @classmethod
    def greedy(cls) -> Sampler:
        """Always the most likely token (temperature 0)."""
        return cls(temperature=0.0)

    @classmethod
    def candle(
        cls,
        temperature: float = 1.0,
        top_p: float = 1.0,
        repeat_penalty: float = 1.2,
        repeat_last_n: int = 64,
    ) -> Sampler:
        """Candle's sampler, with the Candle haiku program's settings (docs/sampling.md): repeat
        penalty over the last ``repeat_last_n`` generated tokens, temperature, then nucleus."""
        return cls(temperature=temperature, top_p=top_p, repetition_penalty=repeat_penalty,
                   repeat_last_n=repeat_last_n, order=CANDLE_ORDER)  # fmt: skip

    @classmethod
    def from_mapping(cls, fields: Mapping[str, Any], *, drop_unknown: bool = False) -> Sampler:
        """A Sampler from field names and values (a stored row, mapped lm_eval gen_kwargs).

        Keys that are not fields raise a ConfigError naming them, or with ``drop_unknown``
        are left out."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - names)
        if unknown and not drop_unknown:
            raise ConfigError(
                f"Sampler fields {unknown} do not exist; use {', '.join(sorted(names))}."
            )
        return cls(**{k: v for k, v in fields.items() if k in names})

    def replace(self, **changes: Any) -> Sampler:
        return dataclasses.replace(self, **changes)


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
_INT_FIELDS = {"top_k", "repeat_last_n", "dry_allowed_length", "dry_last_n"}


def stack(samplers: Sequence[Sampler], vocab_size: int, breaker_mask=None) -> SamplerParams:
    """Per-row parameters for ``samplers`` (one per row). ``breaker_mask(strings) -> bool [vocab]``
    maps DRY sequence breakers to token ids (tokens whose text contains one)."""
    orders = {s.order for s in samplers}
    if len(orders) > 1:
        raise ConfigError(
            f"samplers in one batch must share their stage order; got {sorted(orders)}. "
            "Run them in separate generate() calls."
        )
    columns = {}
    for name in _SCALARS:
        dtype = (
            np.int32
            if name in _INT_FIELDS
            else np.bool_
            if name == "penalize_prompt"
            else np.float32
        )
        columns[name] = jnp.asarray(np.array([getattr(s, name) for s in samplers], dtype))
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


# -- helpers ------------------------------------------------------------------


def _is_top(logits: jax.Array) -> jax.Array:
    """bool ``[b, V]``: each row's most likely token(s). A max and a compare: on XLA:CPU an
    argmax over the vocabulary costs 10x more."""
    return logits >= jnp.max(logits, axis=-1, keepdims=True)


def _keep_top(logits: jax.Array, keep: jax.Array) -> jax.Array:
    """Apply the bool ``keep [b, V]`` mask, always keeping each row's most likely token."""
    return jnp.where(keep | _is_top(logits), logits, _NEG_INF)


def _when(active: jax.Array, stage, logits: jax.Array, *args) -> jax.Array:
    """``stage`` on the rows where ``active [b]``; skipped entirely when no row needs it."""

    def run(x):
        return jnp.where(active[:, None], stage(x, *args), x)

    return jax.lax.cond(jnp.any(active), run, lambda x: x, logits)


def _probs(logits: jax.Array) -> jax.Array:
    return jax.nn.softmax(logits, axis=-1)


def _sortable(x: jax.Array) -> jax.Array:
    """An int32 image of f32 ``x`` with the same order (for bisection on values)."""
    i = jax.lax.bitcast_convert_type(x, jnp.int32)
    return jnp.where(i < 0, i ^ jnp.int32(0x7FFFFFFF), i)


def _largest_threshold(keys: jax.Array, weights: jax.Array, target: jax.Array) -> jax.Array:
    """Per row, the largest int ``t`` with ``sum(weights[keys >= t]) >= target`` (bisection).

    ``keys`` int32 ``[b, V]`` (from :func:`_sortable`), ``weights`` f32 ``[b, V]``,
    ``target [b]``. Keeping ``keys >= t`` keeps the fewest largest keys reaching the target.
    """
    lo = jnp.min(keys, axis=-1)
    hi = jnp.max(keys, axis=-1)

    def body(_, bounds):
        lo, hi = bounds  # invariant: mass(keys >= lo) >= target; answer in [lo, hi]
        mid = lo // 2 + hi // 2 + (lo % 2 + hi % 2 + 1) // 2  # ceil((lo + hi) / 2), no overflow
        mass = jnp.sum(jnp.where(keys >= mid[:, None], weights, 0.0), axis=-1)
        ok = mass >= target
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    lo, _ = jax.lax.fori_loop(0, 32, body, (lo, hi))
    return lo


def _keep_largest(values: jax.Array, weights: jax.Array, target: jax.Array) -> jax.Array:
    """bool ``[b, V]``: the fewest largest ``values`` whose ``weights`` sum to ``target [b]``
    (ties at the boundary kept). Read off the top ``CANDIDATES`` values when those hold
    enough weight in every row (the usual case: a nucleus or top-k within the most likely
    tokens), else bisected over the values' order-preserving integer image. Exact either way."""
    if values.shape[-1] <= CANDIDATES:
        return _bisected(values, weights, target)
    top, index = jax.lax.top_k(values, CANDIDATES)  # f32: XLA:CPU's fast path
    cum = jnp.cumsum(jnp.take_along_axis(weights, index, axis=-1), axis=-1)
    edge = jnp.take_along_axis(top, jnp.argmax(cum >= target[:, None], axis=-1)[:, None], axis=-1)
    return jax.lax.cond(
        jnp.all(cum[:, -1] >= target),
        lambda: values >= edge,
        lambda: _bisected(values, weights, target),
    )


def _bisected(values: jax.Array, weights: jax.Array, target: jax.Array) -> jax.Array:
    keys = _sortable(values)
    return keys >= _largest_threshold(keys, weights, target)[:, None]


# -- stages -------------------------------------------------------------------


def _penalties(logits, state: SamplerState, p: SamplerParams):
    b, vocab = logits.shape
    pos = jnp.arange(state.history.shape[1])[None, :]
    n = jnp.where(p.repeat_last_n < 0, state.history.shape[1], p.repeat_last_n)
    start = jnp.maximum(state.length - n, jnp.where(p.penalize_prompt, 0, state.prompt_len))
    in_window = (pos >= start[:, None]) & (pos < state.length[:, None])
    counts = (
        jnp.zeros((b, vocab), jnp.float32)
        .at[jnp.arange(b)[:, None], state.history]
        .add(in_window.astype(jnp.float32), mode="drop")
    )
    seen = counts > 0
    pen = p.repetition_penalty[:, None]
    out = jnp.where(seen, jnp.where(logits > 0, logits / pen, logits * pen), logits)
    return out - counts * p.frequency_penalty[:, None] - seen * p.presence_penalty[:, None]


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


def _dry(logits, state: SamplerState, p: SamplerParams):
    b, vocab = logits.shape
    n = jnp.where(p.dry_last_n < 0, state.history.shape[1], p.dry_last_n)
    start = jnp.maximum(state.length - n, 0)
    lengths = dry_match_lengths(state.history, state.length, start, p.dry_breakers)
    best = (
        jnp.zeros((b, vocab), jnp.int32)
        .at[jnp.arange(b)[:, None], state.history]
        .max(lengths, mode="drop")
    )
    allowed = p.dry_allowed_length[:, None]
    penalty = p.dry_multiplier[:, None] * p.dry_base[:, None] ** (best - allowed).astype(
        jnp.float32
    )
    return jnp.where(best >= allowed, logits - penalty, logits)


def _top_n_sigma(logits, p: SamplerParams):
    finite = jnp.isfinite(logits)
    count = jnp.maximum(finite.sum(-1, keepdims=True), 1)
    x = jnp.where(finite, logits, 0.0)
    mean = x.sum(-1, keepdims=True) / count
    std = jnp.sqrt(jnp.where(finite, (x - mean) ** 2, 0.0).sum(-1, keepdims=True) / count)
    top = jnp.max(logits, -1, keepdims=True)
    return _keep_top(logits, logits >= top - p.top_n_sigma[:, None] * std)


def _top_k(logits, p: SamplerParams):
    return _keep_top(
        logits, _keep_largest(logits, jnp.ones_like(logits), p.top_k.astype(jnp.float32))
    )


def _top_p(logits, p: SamplerParams):
    probs = _probs(logits)
    return _keep_top(logits, _keep_largest(probs, probs, p.top_p * jnp.sum(probs, -1)))


def _typical_p(logits, p: SamplerParams):
    probs = _probs(logits)
    logp = jax.nn.log_softmax(logits, axis=-1)
    entropy = -jnp.sum(jnp.where(probs > 0, probs * logp, 0.0), -1, keepdims=True)
    closeness = jnp.where(probs > 0, -jnp.abs(-logp - entropy), -jnp.inf)  # larger: more typical
    return _keep_top(logits, _keep_largest(closeness, probs, p.typical_p * jnp.sum(probs, -1)))


def _min_p(logits, p: SamplerParams):
    probs = _probs(logits)
    return _keep_top(logits, probs >= p.min_p[:, None] * jnp.max(probs, -1, keepdims=True))


def _xtc(logits, p: SamplerParams, coin):
    probs = _probs(logits)
    above = probs >= p.xtc_threshold[:, None]
    least_above = jnp.min(jnp.where(above, probs, jnp.inf), -1, keepdims=True)
    remove = above & (probs > least_above)
    fire = (coin < p.xtc_probability) & (above.sum(-1) >= 2) & (p.xtc_threshold <= 0.5)
    return jnp.where(fire[:, None] & remove, _NEG_INF, logits)


def _epsilon(logits, p: SamplerParams):
    return _keep_top(logits, _probs(logits) >= p.epsilon_cutoff[:, None])


def _eta(logits, p: SamplerParams):
    probs = _probs(logits)
    logp = jax.nn.log_softmax(logits, axis=-1)
    entropy = -jnp.sum(jnp.where(probs > 0, probs * logp, 0.0), -1, keepdims=True)
    eta = jnp.minimum(p.eta_cutoff[:, None], jnp.sqrt(p.eta_cutoff[:, None]) * jnp.exp(-entropy))
    return _keep_top(logits, probs >= eta)


def _temperature(logits, p: SamplerParams):
    t = p.temperature[:, None]
    greedy = jnp.where(_is_top(logits), logits, _NEG_INF)
    return jnp.where(t > 0, logits / jnp.where(t > 0, t, 1.0), greedy)


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
    for stage in order:
        if stage == "penalties":
            on = (
                (p.repetition_penalty != 1) | (p.presence_penalty != 0) | (p.frequency_penalty != 0)
            ) & (p.repeat_last_n != 0)
            x = _when(on, _penalties, x, state, p)
        elif stage == "dry":
            x = _when(p.dry_multiplier > 0, _dry, x, state, p)
        elif stage == "top_n_sigma":
            x = _when(p.top_n_sigma > 0, _top_n_sigma, x, p)
        elif stage == "top_k":
            x = _when((p.top_k > 0) & (p.top_k < x.shape[-1]), _top_k, x, p)
        elif stage == "typical_p":
            x = _when(p.typical_p < 1, _typical_p, x, p)
        elif stage == "top_p":
            x = _when(p.top_p < 1, _top_p, x, p)
        elif stage == "min_p":
            x = _when(p.min_p > 0, _min_p, x, p)
        elif stage == "xtc":
            x = _when(p.xtc_probability > 0, _xtc, x, p, coins)
        elif stage == "epsilon":
            x = _when(p.epsilon_cutoff > 0, _epsilon, x, p)
        elif stage == "eta":
            x = _when(p.eta_cutoff > 0, _eta, x, p)
        elif stage == "temperature":
            x = _temperature(x, p)
    if "temperature" not in order:
        x = _temperature(x, p)
    return _when(p.mirostat_tau > 0, _mirostat, x, state.mu)


def _mirostat(logits, mu):
    """Mirostat v2 truncation: keep tokens whose surprise ``-log2 p`` is at most ``mu``."""
    probs = _probs(logits)
    return _keep_top(logits, -jnp.log2(probs) <= mu[:, None])


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
    probs = _probs(x)
    # A greedy row has only its top token left (exact ties aside): the draw returns it.
    tokens = _inverse_cdf(probs, draws).astype(jnp.int32)
    picked = jnp.take_along_axis(probs, tokens[:, None], axis=-1)[:, 0]
    mu = jnp.where(
        miro, state.mu - params.mirostat_eta * (-jnp.log2(picked) - params.mirostat_tau), state.mu
    )
    logprobs = jnp.take_along_axis(
        jax.nn.log_softmax(logits.astype(jnp.float32), -1), tokens[:, None], axis=-1
    )[:, 0]
    return tokens, logprobs, accept(state._replace(mu=mu), tokens)


def step_keys(base: jax.Array, step: jax.Array) -> jax.Array:
    """Keys ``[b]`` for generation step ``step``: ``fold_in(base_row, step)``, where
    ``base_row = fold_in(PRNGKey(seed), sample_index)`` (see :func:`base_keys`)."""
    return jax.vmap(lambda k: jax.random.fold_in(k, step))(base)


def base_keys(seed: int, sample_indices: Sequence[int]) -> jax.Array:
    """``fold_in(PRNGKey(seed), s)`` per row: sample ``s``'s key stream, independent of the batch."""
    root = jax.random.PRNGKey(seed)
    return jnp.stack([jax.random.fold_in(root, int(s)) for s in sample_indices])
