"""One Phi-3 decoder layer as named pure pieces: norm, projections, attention block, MLP block.

Math (HF ``Phi3DecoderLayer``): h = x + o_proj(attn(rmsnorm(x))),
x' = h + down(silu(gate) * up)(rmsnorm(h)). Every matmul goes through
:func:`linear`, so a different weight representation changes one function.
Norms, softmax and matmul accumulation run in f32 whatever the weight dtype.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from phijax import int8, kernels
from phijax.backend import Backend
from phijax.config import Phi3Config
from phijax.kernels import attention as cache_attention
from phijax.model.attention import attention
from phijax.model.hooks import Hooks
from phijax.model.rope import apply_rope
from phijax.quant import QuantArray, at_layer, dense, layer_view

STACK_INDEX = "stack_index"
"""A layer's weights may hold, under this key, the index of the layer whose matrices are
given as whole stacks ``[layers, out, in]`` (:func:`phijax.model.forward.decoder` on the
kernel): :func:`linear` then reads that layer of each."""


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """x · rsqrt(mean(x²) + eps) · weight, reduced in f32; ``x [..., dim]``."""
    xf = x.astype(jnp.float32)
    normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (weight * normed.astype(x.dtype)).astype(x.dtype)


def linear(
    x: jax.Array,
    w: jax.Array | QuantArray,
    backend: Backend,
    layer: jax.Array | None = None,
) -> jax.Array:
    """``x [batch, seq, in] @ w.T`` for a weight in numpy layout ``w [out, in]``, f32 result
    (with ``layer``: layer ``layer`` of a stacked ``w [layers, out, in]``).

    The one matmul of the model: a :class:`QuantArray` is decoded here, inside the step,
    once its input exists. Without that tie XLA is free to decode every matrix of the model
    up front (or hoist the decoding out of the decode loop) and hold a dense copy of the
    whole model: measured 2.1 GB of temporaries for four packed Phi-3-mini layers.

    A bf16 product on CPU is written weight-first (``w @ x.T``, then transposed back):
    XLA:CPU canonicalizes ``x @ w.T`` to a transposed weight, and inside the decode loop
    it hoists that transpose and copies every weight once per call (+1x the weights in
    memory, and 1.5-2x slower products: ``benchmarks/bench_products.py``).

    A QuantArray or a bf16 weight goes to :func:`phijax.kernels.matmul` (decoded in
    registers: 2-4x the f32 product at one row) when ``backend`` has a kernel build and
    :func:`phijax.kernels.applies`; under ``vmap`` the kernel recounts the rows with the
    batch and keeps the same row limit. With int8 activations (``backend.activations``) a
    packed product's input is rounded as llama.cpp rounds it (:mod:`phijax.int8`), on the
    kernel (integer products) or here.

    The kernel reads layer ``layer`` of a stack in place. Elsewhere the layer is sliced
    out here, as a ``scan`` over the stack would: XLA:CPU copies such a slice, every
    layer's weights once per step (SmolLM2: 13% slower batch-1 decode than in place).
    """
    one = w if layer is None else layer_view(w)
    activations = backend.activations_for(w)
    if backend.uses_kernel(x, one):
        *lead, n = x.shape
        y = kernels.matmul(
            x.reshape(-1, n),
            w,
            build=backend.kernel,
            max_rows=backend.kernel_rows(one),
            activations=activations,
            layer=layer,
        )
        return y.reshape(*lead, -1)
    if layer is not None:
        w = at_layer(w, layer)
    if activations == "int8":
        x = int8.fake_quant(x, w.activation_block)
    if isinstance(w, QuantArray):
        tie = (x.reshape(-1)[0] * 0).astype(w.values.dtype)  # zero, but a data dependency on x
        w = dataclasses.replace(w, values=w.values + tie)
    w = dense(w, x.dtype)
    if w.dtype == jnp.float32 or not backend.weight_first:
        return jnp.einsum("bsi,oi->bso", x, w, preferred_element_type=jnp.float32)
    b, s, n = x.shape
    contract = (((1,), (1,)), ((), ()))
    y = jax.lax.dot_general(w, x.reshape(b * s, n), contract, preferred_element_type=jnp.float32)
    return y.T.reshape(b, s, -1)


class Context(NamedTuple):
    """What every layer of one forward pass shares (built once per pass).

    ``positions [batch, seq]``; ``cos, sin [batch, seq, rotary_dim // 2]``;
    ``mask`` bool ``[batch, seq, keys]``; ``attend_len``: how many cache slots
    attention reads (``None``: no cache, the chunk attends to itself); ``backend``: the
    model's per-device choices.
    """

    config: Phi3Config
    backend: Backend
    positions: jax.Array
    cos: jax.Array
    sin: jax.Array
    mask: jax.Array
    attend_len: int | None


class LayerCache(NamedTuple):
    """The whole KV cache ``k, v [layers, batch, kv_heads, max_seq, head_dim]`` and the
    index of the layer that reads and writes it."""

    k: jax.Array
    v: jax.Array
    index: int | jax.Array


def attention_block(
    p: dict[str, jax.Array],
    x: jax.Array,
    ctx: Context,
    cache: LayerCache | None,
    *,
    return_weights: bool = False,
) -> tuple[jax.Array, LayerCache | None, jax.Array | None]:
    """o_proj(attention(rope(q), rope(k), v)) of ``rmsnorm(x)``; ``x [batch, seq, hidden]``.

    With a cache, the chunk's keys and values are written at its positions and
    attention reads the first ``attend_len`` slots; without one, the chunk attends
    to itself. Returns ``[batch, seq, hidden]``, the cache, and the attention
    probabilities ``[batch, heads, seq, keys]`` if asked for.
    """
    c = ctx.config
    b, s, _ = x.shape
    q_size, kv_size = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    h = rms_norm(x, p["attn_norm"], c.rms_norm_eps)
    qkv = linear(h, p["qkv"], ctx.backend, p.get(STACK_INDEX)).astype(x.dtype)
    q = qkv[..., :q_size].reshape(b, s, c.num_heads, c.head_dim)
    k = qkv[..., q_size : q_size + kv_size].reshape(b, s, c.num_kv_heads, c.head_dim)
    v = qkv[..., q_size + kv_size :].reshape(b, s, c.num_kv_heads, c.head_dim)
    q, k = apply_rope(q, ctx.cos, ctx.sin), apply_rope(k, ctx.cos, ctx.sin)
    if cache is not None:
        # [b, s, kv_heads, d] written at [i, rows, :, positions] (indices first, then the slice)
        rows, i = jnp.arange(b)[:, None], cache.index
        k_all = cache.k.at[i, rows, :, ctx.positions].set(k.astype(cache.k.dtype), mode="drop")
        v_all = cache.v.at[i, rows, :, ctx.positions].set(v.astype(cache.v.dtype), mode="drop")
        cache = LayerCache(k_all, v_all, i)
    dt = ctx.backend.kv_dtype
    if _attends_in_place(ctx, cache, s, return_weights):
        out = cache_attention.decode_attention(
            ctx.backend.kernel, q[:, 0].astype(dt), cache.k, cache.v, cache.index, ctx.mask[:, 0]
        )
        return _output(p, out, x, ctx), cache, None
    if cache is None:
        keys, values = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    else:
        keys, values = (
            jax.lax.dynamic_index_in_dim(a, cache.index, keepdims=False)[:, :, : ctx.attend_len]
            for a in (cache.k, cache.v)
        )
    out, weights = attention(
        q.astype(dt), keys.astype(dt), values.astype(dt), ctx.mask, return_weights=return_weights
    )
    return _output(p, out, x, ctx), cache, weights


def _output(p: dict[str, jax.Array], out: jax.Array, x: jax.Array, ctx: Context) -> jax.Array:
    """o_proj of the heads' outputs ``out [batch, seq, heads, head_dim]`` → ``[batch, seq, hidden]``."""
    b, s, _ = x.shape
    out = out.astype(x.dtype).reshape(b, s, -1)
    return linear(out, p["o_proj"], ctx.backend, p.get(STACK_INDEX)).astype(x.dtype)


def _attends_in_place(ctx: Context, cache: LayerCache | None, s: int, return_weights: bool) -> bool:
    """Whether this attention is a decode step's on the CPU kernel, over the cache in place
    (the pure path slices each layer's attended keys and values out of it: a copy)."""
    return (
        cache is not None
        and s == 1
        and not return_weights
        and ctx.backend.attends_in_place(ctx.config.head_dim, cache.k.dtype)
    )


def mlp_block(p: dict[str, jax.Array], x: jax.Array, ctx: Context) -> jax.Array:
    """down(silu(gate) · up) of ``rmsnorm(x)``; ``x [batch, seq, hidden]`` → same shape."""
    c = ctx.config
    h = rms_norm(x, p["ffn_norm"], c.rms_norm_eps)
    layer = p.get(STACK_INDEX)
    gu = linear(h, p["gate_up"], ctx.backend, layer)
    gate, up = gu[..., : c.intermediate_size], gu[..., c.intermediate_size :]
    down = linear((jax.nn.silu(gate) * up).astype(x.dtype), p["down"], ctx.backend, layer)
    return down.astype(x.dtype)


def decoder_layer(
    p: dict[str, jax.Array],
    x: jax.Array,
    ctx: Context,
    cache: LayerCache | None,
    hooks: Hooks,
    name: str,
) -> tuple[jax.Array, LayerCache | None]:
    """One layer on the residual stream ``x [batch, seq, hidden]``; ``name`` (``layers.{i}``)
    prefixes its hook points (resid_pre, attn_out, attn_weights, mlp_out, resid_post)."""
    x = hooks(f"{name}.resid_pre", x, ctx.positions)
    weights_name = f"{name}.attn_weights"
    attn, cache, weights = attention_block(
        p, x, ctx, cache, return_weights=hooks.wants(weights_name)
    )
    if weights is not None:
        hooks(weights_name, weights, ctx.positions)
    h = x + hooks(f"{name}.attn_out", attn, ctx.positions)
    x = h + hooks(f"{name}.mlp_out", mlp_block(p, h, ctx), ctx.positions)
    return hooks(f"{name}.resid_post", x, ctx.positions), cache
