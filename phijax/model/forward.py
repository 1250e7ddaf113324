"""The Phi-3 forward pass as pure functions of the weights.

:func:`decoder` is the one forward pass behind everything: a batch of
embeddings through every layer (over a KV cache, or a chunk attending to
itself) to logits, with edits and captures at named points
(:mod:`phijax.model.hooks`). The engine jits it per shape bucket;
:func:`forward` is its form for research code (one sequence, or a right-padded
batch with per-row lengths), and composes with ``jax.jit``, ``jax.grad`` (with
respect to embeddings or weights) and ``jax.vmap``. :func:`unembed` is the
final norm and head alone (the logit lens).
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from phijax.batching import check_vocab, pad
from phijax.cache import KVCache
from phijax.errors import ConfigError
from phijax.model import hooks as hk
from phijax.model.attention import attention_mask
from phijax.model.layers import (
    STACK_INDEX,
    Context,
    LayerCache,
    decoder_layer,
    linear,
    rms_norm,
)
from phijax.model.phi3 import Phi3
from phijax.model.rope import inverse_frequencies, rope_angles, rope_scale
from phijax.quant import QuantArray
from phijax.sharding import CACHE_AXES, constrain


def embed(params: Phi3, tokens: jax.Array) -> jax.Array:
    """Token embeddings ``[..., hidden]`` of int ``tokens [...]``, in the compute dtype
    (a quantized table decodes only the rows it looks up)."""
    table = params.embed[...]
    if isinstance(table, QuantArray):
        return table.take(tokens).dequantize(params.dtype)
    if table.dtype.itemsize == 2 and params.backend.gather_words:
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
    depth: int | None = None,
    head: bool = True,
) -> tuple[jax.Array | None, KVCache | None]:
    """Embeddings ``x [batch, seq, hidden]`` at ``positions [batch, seq]`` → f32 logits.

    With ``cache``, the chunk's keys and values are written at its positions and
    attention reads the first ``attend_len`` slots, of which ``kv_len [batch]`` are
    valid after this chunk; without, the chunk attends to itself (``kv_len`` valid
    tokens per row: keys past it are masked, so right padding changes nothing before
    it). Returns logits ``[batch, seq, vocab]`` (or ``[batch, n, vocab]`` at the offsets
    ``logit_index [batch, n]``) and the updated cache. ``depth``: run only the first
    ``depth`` layers; ``head=False``: no logits (``None``), for a pass that only captures.
    """
    c = params.config
    b, s, _ = x.shape
    chex.assert_shape(positions, (b, s))
    chex.assert_shape(kv_len, (b,))
    ctx = shared_context(params, positions, kv_len, s if cache is None else attend_len, attend_len)
    x = hooks("embed", x, positions)
    k, v = (None, None) if cache is None else (cache.k, cache.v)

    def layer(x, k, v, p, i, name, hooks):
        x, lc = run_layer(p, x, ctx, None if cache is None else LayerCache(k, v, i), hooks, name)
        if lc is None:
            return x, None, None
        # on a mesh: the cache where its rules put it (else XLA may split the cache update
        # by the q|k|v rows and gather the whole cache back)
        return x, constrain(lc.k, CACHE_AXES, c), constrain(lc.v, CACHE_AXES, c)

    depth = c.num_layers if depth is None else depth
    if params.layout == "stacked" and not hooks.per_layer and depth == c.num_layers:
        # Where the kernel reads stacks in place, the matrices stay whole (Phi3.step_weights):
        # a scan's slice of a stack is a copy, every layer's weights once per step.
        whole = params.matrices() if params.backend.reads_stacks_in_place else {}
        scanned = {n: w for n, w in params.stacked().items() if n not in whole}

        def step(carry, xs):
            p, i = xs
            p = {**p, **whole, STACK_INDEX: i} if whole else p
            x, k, v = layer(*carry, p, i, "layers", hk.NO_HOOKS)
            return (x, k, v), None

        (x, k, v), _ = jax.lax.scan(step, (x, k, v), (scanned, jnp.arange(c.num_layers)))
    else:
        for i in range(depth):
            x, k, v = layer(x, k, v, params.step_weights(i), i, f"layers.{i}", hooks)
    cache = None if cache is None else KVCache(k, v, kv_len)
    if not (head or hooks.wants("final")):
        return None, cache
    if logit_index is not None:
        x = jnp.take_along_axis(x, logit_index[:, :, None], axis=1)
        positions = jnp.take_along_axis(positions, logit_index, axis=1)
    return final(params, x, positions, hooks, head), cache


def shared_context(
    params: Phi3,
    positions: jax.Array,
    kv_len: jax.Array,
    n_keys: int,
    attend_len: int | None = None,
) -> Context:
    """What every layer of one pass shares: the rope angles at ``positions [batch, seq]``
    and the mask over ``n_keys`` keys, of which ``kv_len [batch]`` are valid."""
    c = params.config
    factors = _value(params.rope_factors)
    cos, sin = rope_angles(positions, inverse_frequencies(c, factors), rope_scale(c))
    mask = attention_mask(positions, kv_len, n_keys, c.sliding_window)
    return Context(c, params.backend, positions, cos, sin, mask, attend_len)


def run_layer(
    p, x: jax.Array, ctx: Context, lc: LayerCache | None, hooks: hk.Hooks, name: str
) -> tuple[jax.Array, LayerCache | None]:
    """One decoder layer, its output stream pinned to its rows' sharding on a mesh."""
    x, lc = decoder_layer(p, x, ctx, lc, hooks, name)
    return constrain(x, ("batch", None, "embed"), ctx.config), lc


def final(
    params: Phi3, x: jax.Array, positions: jax.Array, hooks: hk.Hooks, head: bool = True
) -> jax.Array | None:
    """The final norm (hook ``final``), then with ``head`` the logits (hook ``logits``)."""
    c = params.config
    x = hooks("final", rms_norm(x, params.final_norm[...], c.rms_norm_eps), positions)
    return hooks("logits", linear(x, params.head(), params.backend), positions) if head else None


def unembed(params: Phi3, x: jax.Array) -> jax.Array:
    """The final norm and the head: ``x [..., hidden]`` → f32 logits ``[..., vocab]`` (the
    logit lens reads a layer's ``resid_post`` through it; no hooks apply)."""
    c = params.config
    if np.ndim(x) < 1 or np.shape(x)[-1] != c.hidden_size:
        raise ConfigError(
            f"unembed(x): x has shape {list(np.shape(x))}; give [..., {c.hidden_size}] "
            "(a residual-stream value such as layers.{i}.resid_post)."
        )
    x = jnp.asarray(x).astype(params.dtype)
    logits = final(params, x.reshape(1, -1, c.hidden_size), None, hk.NO_HOOKS)
    return logits.reshape(*x.shape[:-1], -1)


def _value(param):
    return None if param is None else param[...]


def forward_with_activations(
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
    """One sequence (``tokens [seq]`` or ``embeds [seq, hidden]``) or a right-padded batch
    (``tokens [batch, seq]`` or ``embeds [batch, seq, hidden]``, ``lengths [batch]`` valid
    tokens per row; a scalar for one sequence; default: all) → f32 logits ``[(batch,) seq,
    vocab]`` (``None`` unless ``head``) and the activations ``names`` (only those are kept;
    without ``head``, only the layers they need run). Positions past a row's length hold
    values to be trimmed: they do not affect the row's valid positions."""
    x, lengths, batched = _inputs(params, tokens, embeds, lengths)
    b, s, hidden = x.shape
    n_layers = params.config.num_layers
    for name in names:
        hk.check_name(name, n_layers)
    hk.check_broadcast(edit_arrays or {}, (b, s, hidden) if batched else (s, hidden))
    head = head or "logits" in names
    positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    hooks = hk.Hooks(edit_arrays, edit_fns, frozenset(names))
    logits, _ = decoder(
        params, x, positions, lengths, hooks=hooks, depth=hk.depth(names, n_layers, head), head=head
    )
    captured = dict(hooks.captured)
    if not batched:
        logits = None if logits is None else logits[0]
        captured = {name: value[0] for name, value in captured.items()}
    return logits, captured


def _inputs(params, tokens, embeds, lengths) -> tuple[jax.Array, jax.Array, bool]:
    """The validated inputs of a pass: embeddings ``[batch, seq, hidden]``, int32 lengths
    ``[batch]``, and whether the input was batched. Shapes and dtypes are static under
    ``jit``, so a wrong one is a ConfigError at trace time."""
    hidden = params.config.hidden_size
    if (tokens is None) == (embeds is None):
        raise ConfigError(
            "forward() takes exactly one of tokens ([seq] or [batch, seq] int ids) or "
            "embeds ([seq, hidden] or [batch, seq, hidden])."
        )
    if embeds is None:
        if jnp.ndim(tokens) not in (1, 2) or not jnp.issubdtype(
            jnp.result_type(tokens), jnp.integer
        ):
            raise ConfigError(
                f"tokens: got {_describe(tokens)}; give int ids [seq] or [batch, seq] (with "
                "lengths= for padded rows), or a ragged list of id lists (padded for you). "
                "Encode text with m.tokenizer.encode."
            )
        check_vocab(tokens, params.config.vocab_size)
        x = embed(params, tokens)
    else:
        if (
            jnp.ndim(embeds) not in (2, 3)
            or jnp.shape(embeds)[-1] != hidden
            or not jnp.issubdtype(jnp.result_type(embeds), jnp.floating)
        ):
            raise ConfigError(
                f"embeds: got {_describe(embeds)}; give floats [seq, {hidden}] or "
                f"[batch, seq, {hidden}] (m.embed(ids) makes them)."
            )
        x = jnp.asarray(embeds)
    batched = x.ndim == 3
    x = x if batched else x[None]
    b, s, _ = x.shape
    if lengths is None:
        return x, jnp.full((b,), s, jnp.int32), batched
    want = (b,) if batched else ()
    if jnp.shape(lengths) != want or not jnp.issubdtype(jnp.result_type(lengths), jnp.integer):
        raise ConfigError(
            f"lengths: got {_describe(lengths)}; give ints of shape {list(want)} (valid tokens "
            f"{'per row' if batched else 'of the sequence'}, 1..{s})."
        )
    if not isinstance(lengths, jax.core.Tracer):
        bad = np.asarray(lengths)[(np.asarray(lengths) < 1) | (np.asarray(lengths) > s)]
        if bad.size:
            raise ConfigError(f"lengths: {int(bad[0])} is outside 1..{s} (the padded length).")
    return x, jnp.reshape(jnp.asarray(lengths, jnp.int32), (b,)), batched


def _describe(x) -> str:
    try:
        return f"{jnp.result_type(x).name} {list(jnp.shape(x))}"
    except TypeError:
        return type(x).__name__


def forward(
    params: Phi3,
    tokens: Any = None,
    *,
    embeds: Any = None,
    lengths: Any = None,
    edits: Mapping[str, Any] | None = None,
    capture: str | Sequence[str] | None = None,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """f32 logits of one sequence or a batch; pure: ``jax.jit``, ``jax.grad`` (with respect
    to ``embeds``, ``params`` or edit arrays) and ``jax.vmap`` compose with it.

    - ``tokens [seq]`` → ``[seq, vocab]``; ``tokens [batch, seq]`` → ``[batch, seq, vocab]``,
      with ``lengths [batch]`` valid tokens per row for right-padded rows (a scalar for one
      sequence; default: every position). Padding is masked in attention, so a row's valid
      logits equal its own unpadded call's (up to f32 summation order); its padded positions
      hold values to be trimmed. A ragged list of id rows is padded for you to a bucket
      (:func:`phijax.pad`): row ``i``'s logits are ``out[i, :len(rows[i])]``.
    - ``embeds [seq, hidden]`` or ``[batch, seq, hidden]`` instead of tokens (``m.embed``).
    - ``edits``: ``{name: array | fn}`` at the points of :mod:`phijax.model.hooks`: an array
      is added (it broadcasts to the value: ``[hidden]``, ``[seq, hidden]``, or per row
      ``[batch, 1 | seq, hidden]``); a function ``fn(x [seq, hidden], positions [seq])``
      replaces the value, applied to each row separately (vmapped over the batch).
    - ``capture``: names to read; then returns ``(logits, {name: value})``, each value with
      the input's batch axis (``[batch, seq, hidden]``; ``attn_weights [batch, heads, seq,
      seq]``).
    """
    if isinstance(tokens, (list, tuple)) and _rank(tokens) == 2 and _ragged(tokens):
        if lengths is not None:
            raise ConfigError("forward(): give lengths= with a padded array, not a ragged list.")
        tokens, lengths = pad(tokens)
    if isinstance(embeds, (list, tuple)) and _rank(embeds) == 3 and _ragged(embeds):
        if lengths is not None:
            raise ConfigError("forward(): give lengths= with a padded array, not a ragged list.")
        embeds, lengths = pad(embeds)
    tokens, embeds = _array(tokens, "tokens"), _array(embeds, "embeds")
    lengths = _array(lengths, "lengths")
    names = (capture,) if isinstance(capture, str) else tuple(capture or ())
    arrays, fns = hk.split_edits(edits, params.config.num_layers)
    logits, captured = forward_with_activations(
        params, tokens, embeds, arrays, lengths, edit_fns=fns, names=names
    )
    return logits if capture is None else (logits, captured)


def _rank(x) -> int:
    """The rank of a (nested) list of rows, judged by its first elements. Tracer-safe."""
    if isinstance(x, (list, tuple)):
        return 1 + (_rank(x[0]) if x else 0)
    return x.ndim if hasattr(x, "ndim") else np.ndim(x)


def _ragged(rows) -> bool:
    return len({len(r) for r in rows}) > 1


_FORMS = {
    "tokens": "int ids [seq] or [batch, seq]",
    "embeds": "floats [seq, hidden] or [batch, seq, hidden]",
    "lengths": "ints: [batch] valid tokens per row, or one for one sequence",
}


def _array(x, arg: str):
    """A Python list or numpy input as a JAX array (ConfigError if it is not numbers)."""
    if x is None or isinstance(x, jax.Array):
        return x
    try:
        a = np.asarray(x)
    except jax.errors.TracerArrayConversionError:  # a list holding traced values
        return jnp.asarray(x)
    except (TypeError, ValueError):  # ragged nesting
        a = np.asarray(None)
    if a.dtype.kind not in "biuf":
        raise ConfigError(f"{arg}: got {reprlib.repr(x)}, not numbers; give {_FORMS[arg]}.")
    return jnp.asarray(a)
