"""The compiled steps: module-level jitted functions of the weights, cache, keys and tokens.

Nothing static here owns an array: the static arguments are small hashable
specs (bucket sizes, the sampler's stage order, edit functions), and the
weights are a pytree whose structure carries the config by value. So a second
load of the same file reuses the compiled steps, and ``del model`` frees it.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from phijax import sampling
from phijax.cache import KVCache
from phijax.model import hooks as hk
from phijax.model.forward import decoder, embed, forward_with_activations
from phijax.model.forward import unembed as _unembed
from phijax.model.phi3 import Phi3


@partial(
    jax.jit,
    static_argnames=("attend_len", "all_logits", "edit_fns"),
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
    all_logits: bool,
    edit_fns: hk.EditFns = (),
) -> tuple[jax.Array, KVCache]:
    """One prefill chunk ``tokens [batch, chunk]`` at ``positions [batch, chunk]`` into the
    cache. Logits ``[batch, chunk, vocab]``, or ``[batch, 1, vocab]`` at ``logit_index``."""
    hooks = hk.Hooks(edit_arrays, edit_fns)
    return decoder(
        params,
        embed(params, tokens),
        positions,
        kv_len,
        cache=cache,
        attend_len=attend_len,
        hooks=hooks,
        logit_index=None if all_logits else logit_index,
    )


def _sample(logits, base_keys, step, sstate, sparams, *, order, top_n):
    keys = sampling.step_keys(base_keys, step)
    tokens, logprobs, sstate = sampling.sample(keys, logits, sstate, sparams, order)
    if top_n:
        alt_lp, alt_ids = jax.lax.top_k(jax.nn.log_softmax(logits, axis=-1), top_n)
    else:
        b = logits.shape[0]
        alt_lp, alt_ids = jnp.zeros((b, 0)), jnp.zeros((b, 0), jnp.int32)
    return tokens, logprobs, alt_ids, alt_lp, sstate


sample = jax.jit(_sample, static_argnames=("order", "top_n"))
sample.__doc__ = """One token per row from ``logits [batch, vocab]`` with step ``step``'s keys,
its logprob, and the top ``top_n`` alternatives' ids and logprobs ``[batch, top_n]``."""


@partial(
    jax.jit,
    static_argnames=("attend_len", "steps", "order", "top_n", "edit_fns"),
    donate_argnames=("cache", "sstate"),
)
def decode(
    params: Phi3,
    cache: KVCache,
    tokens: jax.Array,
    done: jax.Array,
    budget: jax.Array,
    stop_ids: jax.Array,
    base_keys: jax.Array,
    step0: jax.Array,
    sstate: sampling.SamplerState,
    sparams: sampling.SamplerParams,
    edit_arrays: dict[str, jax.Array],
    *,
    attend_len: int,
    steps: int,
    order: tuple[str, ...],
    top_n: int,
    edit_fns: hk.EditFns = (),
):
    """Up to ``steps`` sampled steps from the last tokens ``[batch]`` in one ``while_loop``,
    which ends early once every row is done (a stop id, or ``budget [batch]`` more tokens
    taken), so a short request or an early stop costs no forward passes past its end.
    Returns tokens (-1 once done), logprobs, top alternatives ``[batch, steps(, top_n)]``,
    stop flags, the cache and the sampler state."""
    b = tokens.shape[0]
    hooks = hk.Hooks(edit_arrays, edit_fns)

    def step(carry):
        t, cache, sstate, tok, done, out = carry
        pos = cache.lengths
        live = ~done
        kv_len = jnp.where(live, pos + 1, pos)
        logits, cache = decoder(
            params,
            embed(params, tok[:, None]),
            pos[:, None],
            kv_len,
            cache=cache,
            attend_len=attend_len,
            hooks=hooks,
        )
        nxt, lp, alt_ids, alt_lp, new_sstate = _sample(
            logits[:, 0], base_keys, step0 + t, sstate, sparams, order=order, top_n=top_n
        )
        sstate = jax.tree.map(
            lambda new, old: jnp.where(live.reshape(-1, *[1] * (new.ndim - 1)), new, old),
            new_sstate,
            sstate,
        )
        nxt = jnp.where(live, nxt, tok)
        out = (
            out[0].at[:, t].set(jnp.where(live, nxt, -1)),
            out[1].at[:, t].set(jnp.where(live, lp, 0.0)),
            out[2].at[:, t].set(alt_ids),
            out[3].at[:, t].set(alt_lp),
        )
        done = done | jnp.isin(nxt, stop_ids) | (t + 1 >= budget)
        return t + 1, cache, sstate, nxt, done, out

    def more(carry):
        t, *_, done, _ = carry
        return (t < steps) & ~jnp.all(done)

    out = (
        jnp.full((b, steps), -1, jnp.int32),
        jnp.zeros((b, steps), jnp.float32),
        jnp.zeros((b, steps, top_n), jnp.int32),
        jnp.zeros((b, steps, top_n), jnp.float32),
    )
    carry = (jnp.int32(0), cache, sstate, tokens, done, out)
    _, cache, sstate, _, done, out = jax.lax.while_loop(more, step, carry)
    return (*out, done, cache, sstate)


activations = jax.jit(forward_with_activations, static_argnames=("edit_fns", "names", "head"))
activations.__doc__ = forward_with_activations.__doc__

unembed = jax.jit(_unembed)
unembed.__doc__ = _unembed.__doc__
