"""The Phi-3 forward pass as pure functions of the weights.

:func:`decoder` is the one forward pass behind everything: a batch of
embeddings through every layer (over a KV cache, or a chunk attending to
itself) to logits, with edits and captures at named points
(:mod:`phijax.model.hooks`). The engine jits it per shape bucket;
:func:`forward` is its one-sequence form for research code, and composes with
``jax.jit``, ``jax.grad`` (with respect to embeddings or weights) and ``jax.vmap``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp

from phijax.cache import KVCache
from phijax.errors import ConfigError
from phijax.model import hooks as hk
from phijax.model.attention import attention_mask
from phijax.model.layers import Context, LayerCache, decoder_layer, linear, rms_norm
from phijax.model.phi3 import Phi3
from phijax.model.quant import QuantArray
from phijax.model.rope import inverse_frequencies, rope_angles, rope_scale
from phijax.sharding import CACHE_AXES, constrain


def embed(params: Phi3, tokens: jax.Array) -> jax.Array:
    """Token embeddings ``[..., hidden]`` of int ``tokens [...]``, in the compute dtype
    (a quantized table decodes only the rows it looks up)."""
    table = params.embed[...]
    if isinstance(table, QuantArray):
        return table.take(tokens).dequantize(params.dtype)
    if table.dtype.itemsize == 2:
        return take_rows(table, tokens).astype(params.dtype)
    return jnp.take(table, tokens, axis=0).astype(params.dtype)


@jax.custom_vjp
def take_rows(table: jax.Array, ids: jax.Array) -> jax.Array:
    """``table[ids]`` for a 16-bit float ``table [rows, cols]``, gathered as raw 16-bit words.

    XLA:CPU gathers a bf16 table through an f32 copy of the whole table, which the decode
    loop hoists: 2x the table's bytes more memory and 85 ms per call on Phi-3-mini.
    Differentiable in ``table`` (the gradient scatters into rows, summed in f32).
    """
    words = jax.lax.bitcast_convert_type(table, jnp.uint16)
    return jax.lax.bitcast_convert_type(jnp.take(words, ids, axis=0), table.dtype)


def _take_rows_fwd(table, ids):
    return take_rows(table, ids), (table, ids)


def _take_rows_bwd(residuals, grad):
    table, ids = residuals
    rows = jnp.zeros(table.shape, jnp.float32).at[ids].add(grad.astype(jnp.float32))
    return rows.astype(table.dtype), None


take_rows.defvjp(_take_rows_fwd, _take_rows_bwd)


def decoder(
    params: Phi3,
    x: jax.Array,
    positions: jax.Array,
    kv_len: jax.Array,
    *,
    cache: KVCache | None = None,
    attend_len: int | None = None,
    hooks: hk.Hooks = hk.NO_HOOKS,
    logit_index: jax.Array | None = None,
) -> tuple[jax.Array, KVCache | None]:
    """Embeddings ``x [batch, seq, hidden]`` at ``positions [batch, seq]`` → f32 logits.

    With ``cache``, the chunk's keys and values are written at its positions and
    attention reads the first ``attend_len`` slots, of which ``kv_len [batch]`` are
    valid after this chunk; without, the chunk attends to itself (``kv_len`` valid
    tokens per row). Returns logits ``[batch, seq, vocab]`` (or ``[batch, n, vocab]``
    at the offsets ``logit_index [batch, n]``) and the updated cache.
    """
    c = params.config
    b, s, _ = x.shape
    chex.assert_shape(positions, (b, s))
    chex.assert_shape(kv_len, (b,))
    n_keys = s if cache is None else attend_len
    cos, sin = rope_angles(
        positions, inverse_frequencies(c, _value(params.rope_factors)), rope_scale(c)
    )
    mask = attention_mask(positions, kv_len, n_keys, c.sliding_window)
    ctx = Context(c, positions, cos, sin, mask, attend_len)
    x = hooks("embed", x, positions)
    k, v = (None, None) if cache is None else (cache.k, cache.v)

    def layer(x, k, v, p, i, name, hooks):
        lc = None if cache is None else LayerCache(k, v, i)
        x, lc = decoder_layer(p, x, ctx, lc, hooks, name)
        # on a mesh: the stream's rows over "data", the cache where its rules put it (else
        # XLA may split the cache update by the q|k|v rows and gather the whole cache back)
        x = constrain(x, ("batch", None, "embed"), c)
        if lc is None:
            return x, None, None
        return x, constrain(lc.k, CACHE_AXES, c), constrain(lc.v, CACHE_AXES, c)

    if params.layout == "stacked" and not hooks.per_layer:

        def step(carry, xs):
            x, k, v = layer(*carry, *xs, "layers", hk.NO_HOOKS)
            return (x, k, v), None

        (x, k, v), _ = jax.lax.scan(step, (x, k, v), (params.stacked(), jnp.arange(c.num_layers)))
    else:
        for i in range(c.num_layers):
            x, k, v = layer(x, k, v, params.layer(i), i, f"layers.{i}", hooks)
    if logit_index is not None:
        x = jnp.take_along_axis(x, logit_index[:, :, None], axis=1)
        positions = jnp.take_along_axis(positions, logit_index, axis=1)
    x = hooks("final", rms_norm(x, params.final_norm[...], c.rms_norm_eps), positions)
    logits = hooks("logits", linear(x, params.head()), positions)
    return logits, None if cache is None else KVCache(k, v, kv_len)


def _value(param):
    return None if param is None else param[...]


def forward_with_activations(
    params: Phi3,
    tokens: jax.Array | None = None,
    embeds: jax.Array | None = None,
    edit_arrays: Mapping[str, jax.Array] | None = None,
    *,
    edit_fns: hk.EditFns = (),
    names: Sequence[str] = (),
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One sequence (``tokens [seq]`` or ``embeds [seq, hidden]``) → f32 logits
    ``[seq, vocab]`` and the activations ``names`` (only those are kept)."""
    if (tokens is None) == (embeds is None):
        raise ConfigError("forward() takes exactly one of tokens [seq] or embeds [seq, hidden].")
    if embeds is None:
        chex.assert_rank(tokens, 1)
        embeds = embed(params, tokens)
    chex.assert_rank(embeds, 2)
    chex.assert_axis_dimension(embeds, 1, params.config.hidden_size)
    s = embeds.shape[0]
    positions = jnp.arange(s, dtype=jnp.int32)[None]
    hooks = hk.Hooks(edit_arrays, edit_fns, frozenset(names))
    logits, _ = decoder(params, embeds[None], positions, jnp.full((1,), s, jnp.int32), hooks=hooks)
    return logits[0], {name: value[0] for name, value in hooks.captured.items()}


def forward(
    params: Phi3,
    tokens: jax.Array | None = None,
    *,
    embeds: jax.Array | None = None,
    edits: Mapping[str, Any] | None = None,
) -> jax.Array:
    """f32 logits ``[seq, vocab]`` of one sequence: int ``tokens [seq]`` or ``embeds [seq, hidden]``.

    Pure: ``jax.jit``, ``jax.grad`` (with respect to ``embeds`` or ``params``) and
    ``jax.vmap`` compose with it. ``edits``: ``{name: array | fn}`` at the points of
    :mod:`phijax.model.hooks` (an array is added, a function replaces the value).
    """
    arrays, fns = hk.split_edits(edits, params.config.num_layers)
    return forward_with_activations(params, tokens, embeds, arrays, edit_fns=fns)[0]
