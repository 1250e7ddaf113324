"""The sampling chain against a plain numpy reference written here, stage by stage.

The reference sorts (the way HF and llama.cpp do) where phijax bisects, works in
float64, and handles one row at a time; phijax runs every row of a mixed batch
in one compiled chain.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phijax import sampling
from phijax.sampling import Sampler

V = 300


def _softmax(x):
    x = np.asarray(x, np.float64)
    finite = np.isfinite(x)
    e = np.where(finite, np.exp(x - x[finite].max()), 0.0)
    return e / e.sum()


def _keep(x, keep):
    keep = keep.copy()
    keep[np.argmax(x)] = True
    return np.where(keep, x, -np.inf)


def _threshold_set(keys, weights, target):
    """The fewest largest ``keys`` whose ``weights`` sum to >= target (ties at the edge kept)."""
    order = np.argsort(-keys, kind="stable")
    cum = np.cumsum(weights[order])
    edge = keys[order][np.argmax(cum >= target - 1e-12)]
    return keys >= edge


def reference(logits, s: Sampler, history, prompt_len, coin=1.0, mu=None):
    """One row of the chain in numpy: ``logits [V]``, ``history`` the sequence so far."""
    x = np.asarray(logits, np.float64).copy()
    vocab = len(x)
    for token, bias in s.logit_bias:
        x[token] += bias
    n = len(history)
    for stage in s.order:
        p = _softmax(x)
        if stage == "penalties" and s.repeat_last_n != 0:
            window_n = n if s.repeat_last_n < 0 else s.repeat_last_n
            start = max(n - window_n, 0 if s.penalize_prompt else prompt_len)
            counts = np.bincount(np.asarray(history[start:n], np.int64), minlength=vocab).astype(
                np.float64
            )
            seen = counts > 0
            x = np.where(
                seen, np.where(x > 0, x / s.repetition_penalty, x * s.repetition_penalty), x
            )
            x = x - counts * s.frequency_penalty - seen * s.presence_penalty
        elif stage == "dry" and s.dry_multiplier > 0:
            start = 0 if s.dry_last_n < 0 else max(n - s.dry_last_n, 0)
            best = np.zeros(vocab, np.int64)
            for j in range(1, n):
                length = 0
                while (
                    length < sampling.DRY_MAX_MATCH
                    and j - 1 - length >= start
                    and history[j - 1 - length] == history[n - 1 - length]
                ):
                    length += 1
                best[history[j]] = max(best[history[j]], length)
            hit = best >= s.dry_allowed_length
            x = np.where(hit, x - s.dry_multiplier * s.dry_base ** (best - s.dry_allowed_length), x)
        elif stage == "top_n_sigma" and s.top_n_sigma > 0:
            f = x[np.isfinite(x)]
            x = _keep(x, x >= x.max() - s.top_n_sigma * f.std())
        elif stage == "top_k" and 0 < s.top_k < vocab:
            x = _keep(x, x >= np.sort(x)[::-1][s.top_k - 1])
        elif stage == "typical_p" and s.typical_p < 1:
            logp = np.log(np.where(p > 0, p, 1.0))
            entropy = -np.sum(np.where(p > 0, p * logp, 0.0))
            deviation = np.where(p > 0, np.abs(-logp - entropy), np.inf)
            x = _keep(x, _threshold_set(-deviation, p, s.typical_p))
        elif stage == "top_p" and s.top_p < 1:
            x = _keep(x, _threshold_set(p, p, s.top_p))
        elif stage == "min_p" and s.min_p > 0:
            x = _keep(x, p >= s.min_p * p.max())
        elif stage == "xtc" and s.xtc_probability > 0:
            above = p >= s.xtc_threshold
            if coin < s.xtc_probability and above.sum() >= 2 and s.xtc_threshold <= 0.5:
                x = np.where(above & (p > p[above].min()), -np.inf, x)
        elif stage == "epsilon" and s.epsilon_cutoff > 0:
            x = _keep(x, p >= s.epsilon_cutoff)
        elif stage == "eta" and s.eta_cutoff > 0:
            entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0))
            x = _keep(x, p >= min(s.eta_cutoff, math.sqrt(s.eta_cutoff) * math.exp(-entropy)))
        elif stage == "temperature":
            x = x / s.temperature if s.temperature > 0 else _keep(x, np.zeros(vocab, bool))
    if "temperature" not in s.order:
        x = x / s.temperature if s.temperature > 0 else _keep(x, np.zeros(vocab, bool))
    if s.mirostat_tau > 0:
        p = _softmax(x)
        x = _keep(x, -np.log2(np.where(p > 0, p, 1e-300)) <= mu)
    return x


STRATEGIES = {
    "plain": Sampler(),
    "temperature": Sampler(temperature=0.7),
    "greedy": Sampler.greedy(),
    "top_k": Sampler(top_k=17),
    "top_k_large": Sampler(top_k=250),
    "top_p": Sampler(top_p=0.6),
    "top_p_wide": Sampler(top_p=0.995, temperature=1.3),
    "min_p": Sampler(min_p=0.05),
    "typical_p": Sampler(typical_p=0.5),
    "epsilon": Sampler(epsilon_cutoff=0.004),
    "eta": Sampler(eta_cutoff=0.01),
    "top_n_sigma": Sampler(top_n_sigma=1.0),
    "xtc": Sampler(xtc_probability=1.0, xtc_threshold=0.01),
    "repetition": Sampler(repetition_penalty=1.3, repeat_last_n=8),
    "repetition_prompt": Sampler(repetition_penalty=1.3, repeat_last_n=-1, penalize_prompt=True),
    "presence_frequency": Sampler(presence_penalty=0.5, frequency_penalty=0.3, repeat_last_n=16),
    "dry": Sampler(dry_multiplier=0.8, dry_allowed_length=2),
    "logit_bias": Sampler(logit_bias=((3, 5.0), (7, -math.inf))),
    "mirostat": Sampler(mirostat_tau=4.0, mirostat_eta=0.2),
    "candle": Sampler.candle(top_p=0.9, repeat_penalty=1.2),
    "chain": Sampler(top_k=40, top_p=0.9, min_p=0.02, temperature=0.8, repetition_penalty=1.1),
}


def _history(rng, prompt_len, total):
    """A sequence with repeats, so penalties and DRY have something to find."""
    motif = rng.integers(0, V, 5)
    seq = np.concatenate([motif, rng.integers(0, V, 4), motif, rng.integers(0, V, total)])[:total]
    seq[27:30] = motif[:3]  # the sequence (30 tokens) ends by repeating the motif's start
    return seq.astype(np.int32)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    names = list(STRATEGIES)
    samplers = [STRATEGIES[k] for k in names]
    logits = (rng.standard_normal((len(names), V)) * 3).astype(np.float32)
    seq = 40
    history = np.stack([_history(rng, 12, seq) for _ in names])
    lengths = np.full(len(names), 30, np.int32)
    prompt_len = np.full(len(names), 12, np.int32)
    return names, samplers, logits, history, lengths, prompt_len


def _params(samplers):
    return sampling.stack(samplers, V)


@pytest.mark.parametrize("order", [sampling.LLAMACPP_ORDER, sampling.CANDLE_ORDER])
def test_chain_matches_numpy_reference(batch, order):
    names, samplers, logits, history, lengths, prompt_len = batch
    samplers = [s.replace(order=order) for s in samplers]
    params = _params(samplers)
    state = sampling.SamplerState(
        jnp.asarray(history), jnp.asarray(lengths), jnp.asarray(prompt_len), params.mirostat_tau * 2
    )
    coins = jnp.zeros(len(names))
    got = np.asarray(
        jax.jit(sampling.filtered_logits, static_argnums=3)(
            jnp.asarray(logits), state, params, order, coins
        )
    )
    for r, (name, s) in enumerate(zip(names, samplers, strict=True)):
        want = reference(
            logits[r], s, history[r, : lengths[r]], prompt_len[r], coin=0.0, mu=2 * s.mirostat_tau
        )
        np.testing.assert_array_equal(np.isfinite(got[r]), np.isfinite(want), err_msg=name)
        finite = np.isfinite(want)
        # f32 stages vs a float64 reference: a stage changes a kept value by a few elementwise
        # operations (no sum over the vocabulary), under 2 eps of the largest magnitude in the
        # row; at most 4.4e-5 over 11 stages. Measured: at most 8.2e-7 (temperature).
        scale = max(np.abs(logits[r]).max(), np.abs(want[finite]).max())
        atol = 2 * len(order) * np.finfo(np.float32).eps * scale
        np.testing.assert_allclose(got[r][finite], want[finite], rtol=0, atol=atol, err_msg=name)


def test_every_strategy_changes_something(batch):
    """Guards the reference test against vacuous passes: each strategy alters the plain logits."""
    names, samplers, logits, history, lengths, prompt_len = batch
    plain = reference(logits[0], Sampler(), history[0, : lengths[0]], prompt_len[0])
    for r, (name, s) in enumerate(zip(names, samplers, strict=True)):
        if name == "plain":
            continue
        mu = 2 * s.mirostat_tau
        out = reference(logits[r], s, history[r, : lengths[r]], prompt_len[r], coin=0.0, mu=mu)
        base = reference(logits[r], Sampler(), history[r, : lengths[r]], prompt_len[r])
        assert not np.array_equal(out, base), name
    assert np.isfinite(plain).all()


def test_bisection_fallback_is_exact():
    """A flat distribution: the kept sets need more than the candidates hold (bisection)."""
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((4, 4096)) * 0.01).astype(np.float32)
    s = [Sampler(top_p=0.97), Sampler(top_k=3000), Sampler(typical_p=0.9), Sampler(top_k=500)]
    params = sampling.stack(s, 4096)
    hist = jnp.zeros((4, 4), jnp.int32)
    state = sampling.SamplerState(
        hist, jnp.zeros(4, jnp.int32), jnp.zeros(4, jnp.int32), jnp.zeros(4)
    )
    got = np.asarray(
        sampling.filtered_logits(
            jnp.asarray(logits), state, params, sampling.LLAMACPP_ORDER, jnp.ones(4)
        )
    )
    for r in range(4):
        want = reference(logits[r], s[r], [], 0)
        np.testing.assert_array_equal(np.isfinite(got[r]), np.isfinite(want))
        kept = np.isfinite(got[r]).sum()
        assert kept == 500 if r == 3 else kept > sampling.CANDIDATES
    # a row alone gives the same set as in the batch
    alone = sampling.filtered_logits(jnp.asarray(logits[3:]), jax.tree.map(lambda a: a[3:], state),
                                     jax.tree.map(lambda a: a[3:], params), sampling.LLAMACPP_ORDER, jnp.ones(1))  # fmt: skip
    np.testing.assert_array_equal(np.isfinite(alone[0]), np.isfinite(got[3]))


def test_draws_follow_the_filtered_distribution():
    """Inverse-CDF draws: empirical frequencies match the chain's probabilities."""
    logits = jnp.asarray(np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32)))
    params = sampling.stack([Sampler(top_p=0.9)], 4)
    state = sampling.SamplerState(
        jnp.zeros((1, 2), jnp.int32), jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32), jnp.zeros(1)
    )
    keys = jax.vmap(lambda t: sampling.step_keys(sampling.base_keys(0, [0]), t))(jnp.arange(20000))

    def one(k):
        return sampling.sample(k, logits, state, params)[0][0]

    tokens = np.asarray(jax.jit(jax.vmap(one))(keys))
    freq = np.bincount(tokens, minlength=4) / len(tokens)
    # 20,000 draws: a frequency's binomial std is <= sqrt(0.25 / 20000) = 0.0035; 0.015 is 4.2 std
    np.testing.assert_allclose(freq, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0], atol=0.015)


def test_mirostat_updates_mu():
    logits = jnp.asarray(np.random.default_rng(2).standard_normal((1, 50)).astype(np.float32) * 2)
    params = sampling.stack([Sampler(mirostat_tau=3.0, mirostat_eta=0.5)], 50)
    state = sampling.init_state(jnp.zeros((1, 8), jnp.int32), jnp.ones(1, jnp.int32), params)
    tok, _, new = sampling.sample(sampling.base_keys(0, [0]), logits, state, params)
    p = _softmax(reference(np.asarray(logits[0]), Sampler(mirostat_tau=3.0), [0], 1, mu=6.0))
    surprise = -np.log2(p[int(tok[0])])
    # f32 softmax over 50 logits vs float64: p within 2·sqrt(50)·eps relative (the random walk
    # of tests/numerics.py over the normalizer, and exp's rounding), so the surprise within
    # that / ln 2 and mu within eta (0.5) times it, plus mu's own rounding: 1.9e-6. Measured:
    # 4.7e-8 (the old rtol 1e-5 allowed 6e-5).
    want = 6.0 - 0.5 * (surprise - 3.0)
    eps = float(np.finfo(np.float32).eps)
    atol = 0.5 * 2 * np.sqrt(50) * eps / np.log(2) + eps * abs(want)
    np.testing.assert_allclose(float(new.mu[0]), want, rtol=0, atol=atol)
    assert int(new.length[0]) == 2 and int(new.history[0, 1]) == int(tok[0])


def test_logprobs_are_the_models_whatever_the_sampler():
    logits = jnp.asarray(np.random.default_rng(3).standard_normal((2, 20)).astype(np.float32))
    params = sampling.stack([Sampler(temperature=0.3, top_k=2), Sampler.greedy()], 20)
    state = sampling.init_state(jnp.zeros((2, 4), jnp.int32), jnp.ones(2, jnp.int32), params)
    tok, lp, _ = sampling.sample(sampling.base_keys(5, [0, 1]), logits, state, params)
    want = jax.nn.log_softmax(logits, -1)[jnp.arange(2), tok]
    # both f32 log-softmax over 20 logits, possibly fused differently: a few eps relative
    np.testing.assert_allclose(lp, want, rtol=1e-6)
    assert int(tok[1]) == int(jnp.argmax(logits[1]))


LIGHT = [
    Sampler.greedy(),
    Sampler(temperature=0.7),
    Sampler(temperature=0.9, repetition_penalty=1.3, presence_penalty=0.4),
    Sampler(temperature=0.8, frequency_penalty=0.5, logit_bias=((3, 2.0), (7, -1.0))),
    Sampler(top_k=V, top_p=1.0),  # a top-k that keeps the whole vocabulary removes nothing
]


def test_a_compiled_chain_holds_the_light_stages_unless_a_row_needs_more():
    light = sampling.Chain(("penalties", "temperature"), False)
    for s in LIGHT:
        assert sampling.compiled_chain(_params([s]), s.order) == light, s
    assert sampling.compiled_chain(_params(LIGHT), sampling.LLAMACPP_ORDER) == light
    whole = sampling.Chain(sampling.LLAMACPP_ORDER, True)
    for heavy in (Sampler(top_p=0.9), Sampler(mirostat_tau=3.0), Sampler(dry_multiplier=0.5),
                  Sampler(top_k=V - 1), Sampler(xtc_probability=0.5)):  # fmt: skip
        assert sampling.compiled_chain(_params([*LIGHT, heavy]), sampling.LLAMACPP_ORDER) == whole
    haiku = sampling.compiled_chain(_params([Sampler.candle()]), sampling.CANDLE_ORDER)
    assert haiku == light
    nucleus = sampling.compiled_chain(_params([Sampler.candle(top_p=0.9)]), sampling.CANDLE_ORDER)
    assert nucleus == sampling.Chain(sampling.CANDLE_ORDER, True)


def test_the_light_chain_samples_as_the_whole_chain():
    """Rows that use only light stages: the same tokens, log-probabilities and state, bit for
    bit, from the light chain and the whole chain, each compiled on its own."""
    rng = np.random.default_rng(4)
    b = len(LIGHT)
    logits = jnp.asarray(rng.standard_normal((b, V)).astype(np.float32) * 3)
    history = jnp.asarray(np.stack([_history(rng, 12, 40) for _ in range(b)]))
    params = _params(LIGHT)
    state = sampling.init_state(history, jnp.full(b, 12, jnp.int32), params)
    state = state._replace(length=jnp.full(b, 30, jnp.int32))
    chain = sampling.compiled_chain(params, sampling.LLAMACPP_ORDER)
    sample = jax.jit(sampling.sample, static_argnames=("order", "mirostat"))
    for step in range(20):
        keys = sampling.step_keys(sampling.base_keys(9, list(range(b))), step)
        light = sample(keys, logits, state, params, order=chain.order, mirostat=False)
        whole = sample(keys, logits, state, params, order=sampling.LLAMACPP_ORDER, mirostat=True)
        jax.tree.map(np.testing.assert_array_equal, light, whole)
        state = light[2]
    drawn = np.asarray(state.history[:, 30:50])
    assert len({tuple(row) for row in drawn[1:5]}) == 4  # the sampled rows drew, and differ
