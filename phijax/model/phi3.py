"""The Phi-3 decoder as a Flax NNX module: parameters stacked on a layer axis, applied with a scan.

Math (HF ``Phi3ForCausalLM``): x = embed(ids); per layer
h = x + o_proj(attn(rmsnorm(x))), x = h + down(silu(gate) * up)(rmsnorm(h));
logits = lm_head(rmsnorm(x)). Weights are in numpy layout ``[out, in]``.
Norms, softmax and logits run in f32 whatever the weight dtype.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from phijax.cache import KVCache
from phijax.config import Phi3Config
from phijax.model.attention import attention
from phijax.model.rope import apply_rope, rope_angles

LAYER_PARAMS = ("attn_norm", "qkv", "o_proj", "ffn_norm", "gate_up", "down")


def rms_norm(x: jnp.ndarray, weight: jnp.ndarray, eps: float) -> jnp.ndarray:
    """x · rsqrt(mean(x²) + eps) · weight, reduced in f32; ``x [..., dim]``."""
    xf = x.astype(jnp.float32)
    normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (weight * normed.astype(x.dtype)).astype(x.dtype)


def linear(x: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
    """``x [batch, seq, in] @ w.T`` for a weight in numpy layout ``w [out, in]``, accumulated in f32."""
    return jnp.einsum("bsi,oi->bso", x, w, preferred_element_type=jnp.float32)


def layer_shapes(c: Phi3Config) -> dict[str, tuple[int, ...]]:
    """Per-layer parameter shapes (numpy layout), without the leading layer axis."""
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    return {
        "attn_norm": (c.hidden_size,),
        "qkv": (q + 2 * kv, c.hidden_size),
        "o_proj": (c.hidden_size, q),
        "ffn_norm": (c.hidden_size,),
        "gate_up": (2 * c.intermediate_size, c.hidden_size),
        "down": (c.hidden_size, c.intermediate_size),
    }


LAYOUTS = ("stacked", "layers")


def default_layout() -> str:
    """``layers`` on CPU, ``stacked`` elsewhere.

    XLA:CPU cannot feed a slice of a stacked weight to its matrix-vector kernel:
    inside a scan (or with static slices) it copies or loops naively, and batch-1
    decode on Phi-3-mini shapes streams weights at 6.7 GB/s instead of 31 GB/s
    (measured: benchmarks/, docs/benchmarks.md). Separate per-layer arrays reach
    the bound; the price is a layer loop unrolled at trace time (compile time grows
    with depth; the persistent compilation cache pays it once).
    """
    return "layers" if jax.default_backend() == "cpu" else "stacked"


class LayerParams(nnx.Module):
    """One decoder layer's weights (the ``layers`` layout)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], dtype):
        for name, shape in shapes.items():
            setattr(self, name, nnx.Param(jnp.zeros(shape, _param_dtype(name, dtype))))


def _param_dtype(name: str, dtype):
    return jnp.float32 if name.endswith("norm") else dtype


class Phi3(nnx.Module):
    """Phi-3 weights, preallocated (zeros) at ``dtype``; the loader fills them in place.

    ``layout="stacked"``: each layer parameter is one array ``[layers, ...]``, applied
    with ``lax.scan`` (compile time independent of depth). ``layout="layers"``: one
    array per layer and parameter, applied by an unrolled loop (see
    :func:`default_layout`). The math is the same function either way.
    """

    def __init__(self, config: Phi3Config, *, dtype=jnp.float32, layout: str | None = None):
        c = self.config = config
        self.dtype = dtype
        self.layout = layout or default_layout()
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r}; use one of {LAYOUTS}")
        self.embed = nnx.Param(jnp.zeros((c.vocab_size, c.hidden_size), dtype))
        shapes = layer_shapes(c)
        if self.layout == "stacked":
            for name, shape in shapes.items():
                setattr(self, name, nnx.Param(jnp.zeros((c.num_layers, *shape), _param_dtype(name, dtype))))
        else:
            self.layers = nnx.List([LayerParams(shapes, dtype) for _ in range(c.num_layers)])
        self.final_norm = nnx.Param(jnp.zeros((c.hidden_size,), jnp.float32))
        self.lm_head = None if c.tie_word_embeddings else nnx.Param(jnp.zeros((c.vocab_size, c.hidden_size), dtype))

    def param(self, name: str, layer: int) -> nnx.Param:
        """The parameter ``name`` of ``layer``: its own array (``layers``) or the stack (``stacked``)."""
        return getattr(self.layers[layer], name) if self.layout == "layers" else getattr(self, name)

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        cache: KVCache,
        kv_len: jax.Array,
        rope: tuple[jax.Array, float],
        *,
        attend_len: int,
        window: int | None,
        logit_index: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache]:
        """Run ``tokens [batch, seq]`` at ``positions [batch, seq]``, writing their keys and
        values into ``cache`` at those positions and attending to the first ``attend_len``
        cache slots, of which ``kv_len [batch]`` are valid after this chunk.

        Returns f32 logits ``[batch, seq, vocab]``, or ``[batch, n, vocab]`` at the chunk
        offsets ``logit_index [batch, n]``, and the updated cache.
        """
        c = self.config
        b, s = tokens.shape
        chex.assert_shape(positions, (b, s))
        chex.assert_shape(kv_len, (b,))
        x = jnp.take(self.embed[...], tokens, axis=0)
        cos, sin = rope_angles(positions, *rope)
        rows = jnp.arange(b)[:, None]
        q_size, kv_size = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim

        def layer(carry, xs):
            x, k_all, v_all = carry
            p, i = xs
            h = rms_norm(x, p["attn_norm"], c.rms_norm_eps)
            qkv = linear(h, p["qkv"]).astype(x.dtype)
            q = qkv[..., :q_size].reshape(b, s, c.num_heads, c.head_dim)
            k = qkv[..., q_size : q_size + kv_size].reshape(b, s, c.num_kv_heads, c.head_dim)
            v = qkv[..., q_size + kv_size :].reshape(b, s, c.num_kv_heads, c.head_dim)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            k_all = k_all.at[i, rows, positions].set(k.astype(k_all.dtype), mode="drop")
            v_all = v_all.at[i, rows, positions].set(v.astype(v_all.dtype), mode="drop")
            keys = jax.lax.dynamic_index_in_dim(k_all, i, keepdims=False)[:, :attend_len]
            values = jax.lax.dynamic_index_in_dim(v_all, i, keepdims=False)[:, :attend_len]
            attn = attention(q, keys.astype(x.dtype), values.astype(x.dtype), positions, kv_len, window)
            x = x + linear(attn.reshape(b, s, q_size), p["o_proj"]).astype(x.dtype)
            h = rms_norm(x, p["ffn_norm"], c.rms_norm_eps)
            gu = linear(h, p["gate_up"])
            gate, up = gu[..., : c.intermediate_size], gu[..., c.intermediate_size :]
            ff = (jax.nn.silu(gate) * up).astype(x.dtype)
            x = x + linear(ff, p["down"]).astype(x.dtype)
            return (x, k_all, v_all), None

        carry = (x, cache.k, cache.v)
        if self.layout == "stacked":
            params = {name: getattr(self, name)[...] for name in LAYER_PARAMS}
            carry, _ = jax.lax.scan(layer, carry, (params, jnp.arange(c.num_layers)))
        else:
            for i, lp in enumerate(self.layers):
                carry, _ = layer(carry, ({name: getattr(lp, name)[...] for name in LAYER_PARAMS}, i))
        x, k_all, v_all = carry
        if logit_index is not None:
            x = jnp.take_along_axis(x, logit_index[:, :, None], axis=1)
        x = rms_norm(x, self.final_norm[...], c.rms_norm_eps)
        head = self.embed[...] if self.lm_head is None else self.lm_head[...]
        logits = linear(x, head)
        return logits, KVCache(k_all, v_all, kv_len)
