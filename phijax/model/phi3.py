"""The Phi-3 weights as a Flax NNX module: a pytree whose leaves are exactly the weights.

``Phi3`` holds parameters only; the math lives in pure functions
(:mod:`phijax.model.layers`, :mod:`phijax.model.forward`). NNX modules are JAX
pytrees: the config and layout are static (part of the tree structure, compared
by value), the arrays are leaves. So ``jax.jit(forward)(params, ...)`` keys its
compiled code by the config, not by the object, and two loads of the same file
share compiled steps; ``jax.grad`` and ``jax.vmap`` see the weights as data.
Weights are in numpy layout ``[out, in]``; norms are f32 whatever the dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

from phijax.cache import KVCache
from phijax.config import Phi3Config
from phijax.quant import QuantArray
from phijax.sharding import CACHE_AXES, axis_units, check_mesh, spec, weight_axes

LAYER_PARAMS = ("attn_norm", "qkv", "o_proj", "ffn_norm", "gate_up", "down")
LAYOUTS = ("stacked", "layers")


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


def sharding_plan(config: Phi3Config, mesh, layout: str = "layers") -> dict[str, PartitionSpec]:
    """Each dense parameter's PartitionSpec on ``mesh`` (a Mesh or an AbstractMesh, to plan
    for devices you do not have) and the cache's at batch 1: which axes split, which not
    (the rules of :mod:`phijax.sharding` applied to :func:`layer_shapes`)."""
    mesh = check_mesh(mesh) if isinstance(mesh, Mesh) else mesh
    units = axis_units(config)
    stacked = layout == "stacked"
    vocab = (config.vocab_size, config.hidden_size)
    shapes = {"embed": vocab, "final_norm": (config.hidden_size,)}
    if not config.tie_word_embeddings:
        shapes["lm_head"] = vocab
    out = {n: spec(weight_axes(n, False), s, mesh, units) for n, s in shapes.items()}
    for n, s in layer_shapes(config).items():
        s = (config.num_layers, *s) if stacked else s
        out[n] = spec(weight_axes(n, stacked), s, mesh, units)
    out["kv_cache"] = spec(CACHE_AXES, KVCache.shape_for(config, 1, 1), mesh, units)
    return out


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


def _param_dtype(name: str, dtype):
    return jnp.float32 if name.endswith("norm") else dtype


def _placeholder(shape: tuple[int, ...], dtype, abstract: bool):
    """Zeros, or only their shape and dtype (``abstract``: the loader fills them in)."""
    return nnx.Param(jax.ShapeDtypeStruct(shape, dtype) if abstract else jnp.zeros(shape, dtype))


class LayerParams(nnx.Module):
    """One decoder layer's weights (the ``layers`` layout): ``attn_norm [hidden]``,
    ``qkv [q + 2 kv, hidden]``, ``o_proj [hidden, q]``, ``ffn_norm [hidden]``,
    ``gate_up [2 ffn, hidden]``, ``down [hidden, ffn]``."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], dtype, abstract: bool = False):
        for name, shape in shapes.items():
            setattr(self, name, _placeholder(shape, _param_dtype(name, dtype), abstract))


class Phi3(nnx.Module):
    """Phi-3 weights at ``dtype`` (created abstract by the loader, which fills them in).

    ``layout="stacked"``: each layer parameter is one array ``[layers, ...]``, applied
    with ``lax.scan`` (compile time independent of depth). ``layout="layers"``: one
    array per layer and parameter, applied by an unrolled loop (see
    :func:`default_layout`). The math is the same function either way.

    ``dtype`` is the compute dtype; a matrix may be a :class:`QuantArray` (``quantized=True``
    loads), decoded to it inside each step. ``config`` is the effective config (its ``sliding_window`` is the one in force);
    ``rope_factors [rotary_dim // 2]`` is the LongRoPE factor set chosen at load
    (``None`` for plain rope). ``abstract=True`` makes shapes only, for the loader to
    fill in one tensor at a time (the weights never exist twice).
    """

    def __init__(
        self,
        config: Phi3Config,
        *,
        dtype=jnp.float32,
        layout: str | None = None,
        longrope: bool = False,
        abstract: bool = False,
    ):
        c = self.config = config
        self.dtype = jnp.dtype(dtype)  # the compute dtype (weights may be QuantArrays)
        self.layout = layout or default_layout()
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r}; use one of {LAYOUTS}")
        vocab = (c.vocab_size, c.hidden_size)
        self.embed = _placeholder(vocab, dtype, abstract)
        shapes = layer_shapes(c)
        if self.layout == "stacked":
            for name, shape in shapes.items():
                dt = _param_dtype(name, dtype)
                setattr(self, name, _placeholder((c.num_layers, *shape), dt, abstract))
        else:
            layers = [LayerParams(shapes, dtype, abstract) for _ in range(c.num_layers)]
            self.layers = nnx.List(layers)
        self.final_norm = _placeholder((c.hidden_size,), jnp.float32, abstract)
        self.lm_head = None if c.tie_word_embeddings else _placeholder(vocab, dtype, abstract)
        rope = (c.rotary_dim // 2,)
        self.rope_factors = _placeholder(rope, jnp.float32, abstract) if longrope else None

    def param(self, name: str, layer: int) -> nnx.Param:
        """The parameter ``name`` of ``layer``: its own array (``layers``) or the stack."""
        return getattr(self.layers[layer], name) if self.layout == "layers" else getattr(self, name)

    def layer(self, i: int) -> dict[str, jax.Array]:
        """Layer ``i``'s weights as arrays (a static slice of the stacks when stacked)."""
        if self.layout == "layers":
            return {name: getattr(self.layers[i], name)[...] for name in LAYER_PARAMS}
        return {name: getattr(self, name)[...][i] for name in LAYER_PARAMS}

    def stacked(self) -> dict[str, jax.Array]:
        """All layers' weights ``[layers, ...]`` (the ``stacked`` layout), for a scan."""
        return {name: getattr(self, name)[...] for name in LAYER_PARAMS}

    def head(self) -> jax.Array | QuantArray:
        """The output projection ``[vocab, hidden]`` (the embedding when tied)."""
        return (self.embed if self.lm_head is None else self.lm_head)[...]
