"""Every entry point pads lengths to buckets: twenty prompt lengths in one bucket compile once.

A compile is what a jit trace precedes (tests/tracing.py counts traces). The first length
of the sweep may compile (a new shape); the nineteen after it, in the same length bucket
(70..89 → 128) and the same row bucket, must not.
"""

from __future__ import annotations

import contextlib
from functools import partial
from pathlib import Path

import jax
import numpy as np
import pytest

import phijax
from phijax import Sampler

from tracing import count_traces, step_calls

FIXTURES = Path(__file__).parent / "fixtures" / "model"
LENGTHS = range(70, 90)  # within the 128 bucket of every entry point, also as score inputs (n - 1)


@pytest.fixture(scope="module")
def model():
    return phijax.load(FIXTURES / "gqa.gguf", progress=False)


def _prompts(model, lengths=LENGTHS) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [rng.integers(1, model.config.vocab_size, n).tolist() for n in lengths]


def _traces_after_first(call, prompts) -> list[int]:
    """Traces made by each call after the first (which may compile its shape)."""
    call(prompts[0])
    counts = []
    for p in prompts[1:]:
        with count_traces() as traces:
            call(p)
        counts.append(len(traces))
    return counts


CALLS = {
    "logits": lambda m, p: m.logits(p),
    "activations": lambda m, p: m.activations(p, ["layers.1.resid_post"]),
    "activations+edit": lambda m, p: m.activations(
        p, "layers.0.mlp_out", edits={"layers.0.resid_post": np.ones(64, np.float32)}
    ),
    "embed": lambda m, p: m.embed([p], padded=True),
    "score": lambda m, p: m.score([p[:-3]], [p[-3:]]),
    "loglikelihood": lambda m, p: m.loglikelihood([p[:-3]], [p[-3:]]),
    "generate": lambda m, p: m.generate(p, sampler=Sampler.greedy(), max_new_tokens=4),
    "generate+edit": lambda m, p: m.generate(
        p,
        sampler=Sampler.greedy(),
        max_new_tokens=4,
        edits={"layers.1.resid_post": np.full(64, 0.1, np.float32)},
    ),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_twenty_lengths_in_one_bucket_compile_once(model, name):
    call = CALLS[name]
    assert _traces_after_first(lambda p: call(model, p), _prompts(model)) == [0] * 19


def test_jitted_forward_on_padded_rows_compiles_once_per_bucket(model):
    """``phijax.pad`` (outside the jit) buckets the longest row, so ``jax.jit(phijax.forward)``
    sees one shape for the whole sweep. (A ragged Python list passed *into* a jitted function
    is a pytree whose structure is part of jit's cache key: each new length retraces.)"""
    fwd = jax.jit(phijax.forward)

    def call(p):
        tokens, lengths = phijax.pad([p, p[:5]])
        return fwd(model.params, tokens, lengths=lengths)

    assert _traces_after_first(call, _prompts(model)) == [0] * 19


def test_a_new_bucket_does_compile(model):
    """The counter sees compiles: a length in another bucket (140 → 256) traces again."""
    model.logits(_prompts(model, [40])[0])
    with count_traces() as traces:
        model.logits(_prompts(model, [140])[0])
    assert len(traces) >= 1


def test_a_first_generate_compiles_decode_once_and_no_separate_sampler(model, caplog):
    """The first token is sampled inside the decode step (the sampler chain compiles once
    per generate, not twice), and the decode step compiled on the background thread while
    the prefill ran is the one the decode calls use: one XLA compile of it, none after."""
    with logged_compiles(caplog) as compiled:
        model.generate(  # a shape no other test here compiles: 3 rows, top-2 alternatives
            _prompts(model, [9])[0], sampler=Sampler.greedy(), max_new_tokens=20,
            num_samples=3, top_logprobs=2,
        )  # fmt: skip
    assert sum("jit(decode)" in m for m in compiled) == 1, compiled
    assert not any("jit(_sample)" in m or "jit(sample)" in m for m in compiled), compiled


def test_greedy_compiles_the_light_chain_and_a_filter_the_whole_one_once(model):
    """A greedy request's decode program holds no top-k search (the light chain); the first
    request with a filter compiles the whole chain, after which switching strategies or
    values compiles nothing, greedy included."""
    p = _prompts(model, [13])[0]
    with step_calls("decode") as compiled:
        model.generate(p, sampler=Sampler.greedy(), max_new_tokens=3)
        assert 'custom_call_target="TopK"' not in compiled("decode").as_text()
    with step_calls("decode") as compiled:
        model.generate(p, sampler=Sampler(top_p=0.9), max_new_tokens=3)
        assert 'custom_call_target="TopK"' in compiled("decode").as_text()
    with count_traces() as traces:
        for sampler in (Sampler(top_k=4, min_p=0.1), Sampler(mirostat_tau=3.0, dry_multiplier=0.5),
                        Sampler(temperature=0.5, repetition_penalty=1.2), Sampler.greedy()):  # fmt: skip
            model.generate(p, sampler=sampler, max_new_tokens=3)
    assert traces == []


def test_a_big_cache_is_allocated_after_its_steps_compiled(model, caplog, monkeypatch):
    """A request whose cache is over ``driver.OVERLAP_CACHE_BYTES`` compiles its prefill and
    decode steps before the cache exists (their compile memory and the cache do not add up),
    each once: the calls that follow find them in JAX's caches."""
    from phijax import driver

    monkeypatch.setattr(driver, "OVERLAP_CACHE_BYTES", 0)
    compiled_before_cache = []
    create_cache = driver.create_cache

    def spy(*args, **kwargs):
        compiled_before_cache.extend(_compiles(caplog))
        return create_cache(*args, **kwargs)

    monkeypatch.setattr(driver, "create_cache", spy)
    with logged_compiles(caplog) as everything:
        model.generate(  # shapes no other test here compiles: 5 prompts (8 rows), 2 alternatives
            _prompts(model, [11] * 5), sampler=Sampler.greedy(), max_new_tokens=6,
            top_logprobs=2,
        )  # fmt: skip
    for step in ("jit(prefill)", "jit(decode)"):
        assert sum(step in m for m in compiled_before_cache) == 1, compiled_before_cache
        assert sum(step in m for m in everything) == 1, everything


def test_a_second_request_of_a_signature_does_not_lower_its_steps_again(model):
    """``jit(...).lower`` runs Python over every argument each time, even where JAX's caches
    hold the executable (Phi-3-mini's decode: about 50 ms of a core per request). A
    signature compiled before is handed back at once, and another shape or static value is
    not mistaken for it."""
    from phijax import steps

    x = jax.ShapeDtypeStruct((2, 3), np.float32)
    first = steps.compile_later(model_free_step, x, scale=2).result()
    again = steps.compile_later(model_free_step, x, scale=2)
    assert again.done() and again.result() is first
    assert steps.compile_now(model_free_step, x, scale=2) is first
    other_shape = steps.compile_now(
        model_free_step, jax.ShapeDtypeStruct((2, 4), np.float32), scale=2
    )
    other_static = steps.compile_now(model_free_step, x, scale=3)
    assert len({id(first), id(other_shape), id(other_static)}) == 3
    assert np.asarray(other_static(np.ones((2, 3), np.float32)))[0, 0] == 3


@partial(jax.jit, static_argnames=("scale",))
def model_free_step(x, *, scale: int):
    return x * scale


@contextlib.contextmanager
def logged_compiles(caplog):
    """Yields a list that, after the block, holds JAX's "Finished XLA compilation" messages
    of the block (``jax_log_compiles`` is global: the compile thread logs too)."""
    previous = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)
    compiled: list[str] = []
    try:
        with caplog.at_level("WARNING"):
            yield compiled
    finally:
        jax.config.update("jax_log_compiles", previous)
    compiled.extend(_compiles(caplog))


def _compiles(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "Finished XLA compilation" in r.getMessage()]
