"""The compiled steps: module-level jitted functions of the weights, cache, keys and tokens.

Nothing static here owns an array: the static arguments are small hashable
specs (bucket sizes, the sampler chain's stages, edit functions), and the
weights are a pytree whose structure carries the config by value. So a second
load of the same file reuses the compiled steps, and ``del model`` frees it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from phijax import sampling
from phijax.cache import KVCache
from phijax.model import hooks as hk
from phijax.model.forward import (
    decoder,
    embed,
    final,
    forward_with_activations,
    run_layer,
    shared_context,
)
from phijax.model.forward import unembed as _unembed
from phijax.model.layers import Context
from phijax.model.phi3 import Phi3


@partial(
    jax.jit,
    static_argnames=("attend_len", "edit_fns"),
    donate_argnames=("cache",),
)
def prefill(
    params: Phi3,
    tokens: jax.Array,
    positions: jax.Array,
    cache: KVCache,
    kv_len: jax.Array,
    logit_index: jax.Array,
    edit_arrays: dict[str, jax.Array],
    *,
    attend_len: int,
    edit_fns: hk.EditFns = (),
) -> tuple[jax.Array, KVCache]:
    """One prefill chunk ``tokens [batch, chunk]`` at ``positions [batch, chunk]`` into the
    cache; logits ``[batch, 1, vocab]`` at each row's offset ``logit_index [batch, 1]``."""
    hooks = hk.Hooks(edit_arrays, edit_fns)
    return decoder(
        params,
        embed(params, tokens),
        positions,
        kv_len,
        cache=cache,
        attend_len=attend_len,
        hooks=hooks,
        logit_index=logit_index,
    )


def _sample(logits, base_keys, step, sstate, sparams, *, chain, top_n):
    keys = sampling.step_keys(base_keys, step)
    tokens, logprobs, sstate = sampling.sample(
        keys, logits, sstate, sparams, chain.order, mirostat=chain.mirostat
    )
    if top_n:
        alt_lp, alt_ids = jax.lax.top_k(jax.nn.log_softmax(logits, axis=-1), top_n)
    else:
        b = logits.shape[0]
        alt_lp, alt_ids = jnp.zeros((b, 0)), jnp.zeros((b, 0), jnp.int32)
    return tokens, logprobs, alt_ids, alt_lp, sstate


class DecodeState(NamedTuple):
    """What the decode loop carries from one call to the next (donated to each call).

    ``cache``; ``tokens [batch]``: each row's last sampled token; ``logits [batch, vocab]``
    f32: the prefill's last logits, which the first step samples from instead of running
    a forward pass (while ``fresh``); ``sampler``: the sampler's state; ``done [batch]``:
    rows that take no more tokens (a stop id, the budget, or the caller's own stop);
    ``step``: the index of the next token, which picks the PRNG keys of its draw."""

    cache: KVCache
    tokens: jax.Array
    logits: jax.Array
    fresh: jax.Array
    sampler: sampling.SamplerState
    done: jax.Array
    step: jax.Array


class DecodeOut(NamedTuple):
    """One decode call's tokens ``[batch, steps]`` (-1 where a row was done), their
    logprobs, and the top alternatives' ids and logprobs ``[batch, steps, top_n]`` (device
    arrays; the engine maps them to numpy for the host's bookkeeping)."""

    tokens: jax.Array
    logprobs: jax.Array
    alt_ids: jax.Array
    alt_lp: jax.Array


def start_decode(
    cache: KVCache, logits: jax.Array, sampler: sampling.SamplerState, done: jax.Array
) -> DecodeState:
    """The loop's state after a prefill: ``logits [batch, vocab]`` are each row's last."""
    b = logits.shape[0]
    return DecodeState(
        cache, jnp.zeros((b,), jnp.int32), jnp.asarray(logits, jnp.float32), jnp.bool_(True),
        sampler, jnp.asarray(done), jnp.int32(0),
    )  # fmt: skip


@partial(
    jax.jit,
    static_argnames=("attend_len", "steps", "chain", "top_n", "edit_fns"),
    donate_argnames=("state",),
)
def decode(
    params: Phi3,
    state: DecodeState,
    count: jax.Array,
    budget: jax.Array,
    stop_ids: jax.Array,
    base_keys: jax.Array,
    sparams: sampling.SamplerParams,
    edit_arrays: dict[str, jax.Array],
    *,
    attend_len: int,
    steps: int,
    chain: sampling.Chain,
    top_n: int,
    edit_fns: hk.EditFns = (),
) -> tuple[DecodeOut, DecodeState]:
    """Up to ``count <= steps`` sampled tokens per row in one ``while_loop``, which ends
    early once every row is done (a stop id, or ``budget [batch]`` more tokens taken), so
    a short request or an early stop costs no forward passes past its end. Each step runs
    the forward pass of the last tokens (unless the state's logits are fresh from the
    prefill), then samples. ``count`` is traced: the first call takes one token (it
    streams as soon as it exists) with the same compiled program as the later calls, so
    the sampler chain compiles once per generate, not twice."""
    b = state.tokens.shape[0]
    hooks = hk.Hooks(edit_arrays, edit_fns)

    def forward(s: DecodeState) -> tuple[jax.Array, KVCache]:
        pos = s.cache.lengths
        logits, cache = decoder(
            params,
            embed(params, s.tokens[:, None]),
            pos[:, None],
            jnp.where(s.done, pos, pos + 1),
            cache=s.cache,
            attend_len=attend_len,
            hooks=hooks,
        )
        return logits[:, 0].astype(jnp.float32), cache

    def sampled(t, s: DecodeState, out: DecodeOut, logits: jax.Array):
        live = ~s.done
        nxt, lp, alt_ids, alt_lp, new_sampler = _sample(
            logits, base_keys, s.step, s.sampler, sparams, chain=chain, top_n=top_n
        )
        sampler = jax.tree.map(
            lambda new, old: jnp.where(live.reshape(-1, *[1] * (new.ndim - 1)), new, old),
            new_sampler,
            s.sampler,
        )
        nxt = jnp.where(live, nxt, s.tokens)
        out = DecodeOut(
            out.tokens.at[:, t].set(jnp.where(live, nxt, -1)),
            out.logprobs.at[:, t].set(jnp.where(live, lp, 0.0)),
            out.alt_ids.at[:, t].set(alt_ids),
            out.alt_lp.at[:, t].set(alt_lp),
        )
        done = s.done | jnp.isin(nxt, stop_ids) | (t + 1 >= budget)
        return (
            t + 1,
            DecodeState(s.cache, nxt, logits, jnp.bool_(False), sampler, done, s.step + 1),
            out,
        )

    def forward_unless_fresh(s: DecodeState) -> DecodeState:
        # A loop of zero or one trip, not a cond: the first token after a prefill samples
        # the prefill's logits, and a cache passed through a cond (one branch writing it,
        # one not) is copied whole by XLA in every step; a loop's state stays in place.
        def run(s: DecodeState) -> DecodeState:
            logits, cache = forward(s)
            return s._replace(cache=cache, logits=logits, fresh=jnp.bool_(True))

        return jax.lax.while_loop(lambda s: ~s.fresh, run, s)

    def step(carry):
        t, s, out = carry
        s = forward_unless_fresh(s)
        return sampled(t, s, out, s.logits)

    def more(carry):
        t, s, _ = carry
        return (t < count) & ~jnp.all(s.done)

    out = DecodeOut(
        jnp.full((b, steps), -1, jnp.int32),
        jnp.zeros((b, steps), jnp.float32),
        jnp.zeros((b, steps, top_n), jnp.int32),
        jnp.zeros((b, steps, top_n), jnp.float32),
    )
    _, state, out = jax.lax.while_loop(more, step, (jnp.int32(0), state, out))
    return out, state


_COMPILER = ThreadPoolExecutor(1, thread_name_prefix="phijax-compile")
_COMPILED: OrderedDict[Hashable, jax.stages.Compiled] = OrderedDict()  # by signature, newest last
_COMPILED_MAX = 64
_COMPILED_LOCK = threading.Lock()


def _signature(step, args: tuple, kwargs: dict) -> Hashable:
    """What JAX's caches key ``step(*args, **kwargs)`` on: the arguments' tree, each
    array's (or ``ShapeDtypeStruct``'s) shape, dtype, weak type and sharding, other leaves
    by value, and the static keyword arguments."""
    leaves, tree = jax.tree.flatten(args)
    types = tuple(
        (x.shape, x.dtype, getattr(x, "weak_type", False), getattr(x, "sharding", None))
        if hasattr(x, "dtype")
        else x
        for x in leaves
    )
    return step, tree, types, tuple(sorted(kwargs.items()))


def _compiled(key: Hashable) -> jax.stages.Compiled | None:
    with _COMPILED_LOCK:
        if key in _COMPILED:
            _COMPILED.move_to_end(key)
        return _COMPILED.get(key)


def _compile(key: Hashable, step, args: tuple, kwargs: dict) -> jax.stages.Compiled:
    compiled = _compiled(key) or step.lower(*args, **kwargs).compile()
    with _COMPILED_LOCK:
        _COMPILED[key] = compiled
        while len(_COMPILED) > _COMPILED_MAX:
            _COMPILED.popitem(last=False)
    return compiled


def compile_now(step, *args, **kwargs) -> jax.stages.Compiled:
    """``step.lower(*args, **kwargs).compile()``, once per signature. JAX caches the
    executable, not the tracing that ``lower`` repeats: for Phi-3-mini's decode, about 50
    ms of a core on every request, beside the prefill it should overlap."""
    return _compile(_signature(step, args, kwargs), step, args, kwargs)


def compile_later(step, *args, **kwargs) -> Future | None:
    """:func:`compile_now` on a background thread, so XLA compiles on another core while
    the caller runs something else (a signature compiled before: a finished future). The
    later call of ``step`` on arrays of these types finds the executable in JAX's caches
    (the lowering is cached by its inputs' types, the executable on the lowering). ``args``
    may hold ``jax.ShapeDtypeStruct`` for arrays that do not exist yet. A ``step`` that is
    not a jitted function (a caller's wrapper) compiles at its call, as usual (None)."""
    if not hasattr(step, "lower"):
        return None
    key = _signature(step, args, kwargs)
    compiled = _compiled(key)
    if compiled is None:
        return _COMPILER.submit(_compile, key, step, args, kwargs)
    done: Future = Future()
    done.set_result(compiled)
    return done


whole_pass = jax.jit(forward_with_activations, static_argnames=("edit_fns", "names", "head"))
whole_pass.__doc__ = forward_with_activations.__doc__

unembed = jax.jit(_unembed)
unembed.__doc__ = _unembed.__doc__


# -- research passes one layer at a time ----------------------------------------
#
# A research pass (logits, activations, scores of a padded batch) jitted whole unrolls every
# layer into one program: its compile time grows with depth (SmolLM2's 30 layers: 8-12 s on
# a loaded 2-core machine). Called one layer at a time, every layer with the same edits and
# captures (most of them: none) runs one compiled program, so a first call compiles about
# one layer, not all of them, and runs as fast: prefill-size work per layer dwarfs a
# dispatch (docs/benchmarks.md, "Compile time"). For one array per layer (the ``layers``
# layout) and for stacks the CPU kernel reads in place (the stacks go whole, with a traced
# index); other ``stacked`` weights run the whole pass, their scan unrolled by the hooks.

_LAYER = "layer"  # the generic name the hooks of layer i take inside the shared layer step


def _local(spec: Mapping, i: int) -> dict:
    """The entries of ``spec`` (keyed by hook name) that belong to layer ``i``, renamed to
    the shared layer step's generic names."""
    prefix = f"layers.{i}."
    return {f"{_LAYER}.{n[len(prefix) :]}": v for n, v in spec.items() if n.startswith(prefix)}


@partial(jax.jit, static_argnames=("edit_fns", "names"))
def _embed_step(params, tokens, lengths, edit_arrays, *, edit_fns, names):
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    ctx = shared_context(params, positions, lengths, tokens.shape[1])
    hooks = hk.Hooks(edit_arrays, edit_fns, names)
    x = hooks("embed", embed(params, tokens), positions)
    return (x, ctx.positions, ctx.cos, ctx.sin, ctx.mask), hooks.captured


@partial(jax.jit, static_argnames=("config", "backend", "edit_fns", "names"))
def _layer_step(p, x, shared, edit_arrays, *, config, backend, edit_fns, names):
    hooks = hk.Hooks(edit_arrays, edit_fns, names)
    x, _ = run_layer(p, x, Context(config, backend, *shared, None), None, hooks, _LAYER)
    return x, hooks.captured


@partial(jax.jit, static_argnames=("edit_fns", "names", "head"))
def _head_step(params, x, positions, edit_arrays, *, edit_fns, names, head):
    hooks = hk.Hooks(edit_arrays, edit_fns, names)
    return final(params, x, positions, hooks, head), hooks.captured


def activations(
    params: Phi3,
    tokens: jax.Array | None = None,
    embeds: jax.Array | None = None,
    edit_arrays: Mapping[str, jax.Array] | None = None,
    lengths: jax.Array | None = None,
    *,
    edit_fns: hk.EditFns = (),
    names: Sequence[str] = (),
    head: bool = True,
) -> tuple[jax.Array | None, dict[str, jax.Array]]:
    """:func:`~phijax.model.forward.forward_with_activations`, compiled: for right-padded
    ``tokens [batch, seq]`` with ``lengths [batch]``, one array per layer or stacks the
    kernel reads in place, one jitted step per layer (the same values); otherwise
    :data:`whole_pass`, one program."""
    per_layer = params.layout == "layers" or params.backend.reads_stacks_in_place
    if not per_layer or embeds is not None or lengths is None or tokens.ndim != 2:
        return whole_pass(
            params, tokens, embeds, edit_arrays, lengths,
            edit_fns=edit_fns, names=names, head=head,
        )  # fmt: skip
    c = params.config
    fns, arrays, wanted = dict(edit_fns), dict(edit_arrays or {}), frozenset(names)

    def spec(selected_fns, selected_arrays, selected_names):
        return tuple(sorted(selected_fns.items())), selected_arrays, frozenset(selected_names)

    def top(keys):  # the non-layer points among ``keys``
        return {n: v for n, v in keys.items() if not n.startswith("layers.")}

    f, a, n = spec(top(fns), top(arrays), {x for x in wanted if x == "embed"})
    (x, *shared), captured = _embed_step(params, tokens, lengths, a, edit_fns=f, names=n)
    captured = dict(captured)
    for i in range(hk.depth(names, c.num_layers, head)):
        own = {x: None for x in wanted if x.startswith(f"layers.{i}.")}
        f, a, n = spec(_local(fns, i), _local(arrays, i), _local(own, i))
        p = params.step_weights(i)
        x, got = _layer_step(p, x, shared, a, config=c, backend=params.backend, edit_fns=f, names=n)
        captured.update({f"layers.{i}.{k[len(_LAYER) + 1 :]}": v for k, v in got.items()})
    if not (head or "final" in wanted):
        return None, captured
    f, a, n = spec(top(fns), top(arrays), wanted & {"final", "logits"})
    logits, got = _head_step(params, x, shared[0], a, edit_fns=f, names=n, head=head)
    return logits, {**captured, **got}
