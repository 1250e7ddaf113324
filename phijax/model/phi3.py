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

from phijax.backend import Backend
from phijax.cache import KVCache
from phijax.config import Phi3Config
from phijax.model.layers import STACK_INDEX
from phijax.quant import QuantArray
from phijax.sharding import CACHE_AXES, axis_units, check_mesh, spec, weight_axes
from phijax.weight_schema import GLOBAL_WEIGHTS, LAYER_MATRICES, LAYER_WEIGHTS, WEIGHTS, WeightSpec

LAYER_PARAMS = tuple(w.name for w in LAYER_WEIGHTS)


def layer_shapes(c: Phi3Config) -> dict[str, tuple[int, ...]]:
    """Per-layer parameter shapes (numpy layout), without the leading layer axis."""
    return {w.name: w.shape(c) for w in LAYER_WEIGHTS}


def sharding_plan(config: Phi3Config, mesh, layout: str = "layers") -> dict[str, PartitionSpec]:
    """Each dense parameter's PartitionSpec on ``mesh`` (a Mesh or an AbstractMesh, to plan
    for devices you do not have) and the cache's at batch 1: which axes split, which not
    (the rules of :mod:`phijax.sharding` applied to the weight table's shapes)."""
    mesh = check_mesh(mesh) if isinstance(mesh, Mesh) else mesh
    units = axis_units(config)
    longrope = config.rope_scaling == "longrope"
    out = {}
    for w in WEIGHTS:
        if w.present(config, longrope):
            stacked = layout == "stacked" and w.per_layer
            shape = (config.num_layers, *w.shape(config)) if stacked else w.shape(config)
            out[w.name] = spec(weight_axes(w.name, stacked), shape, mesh, units)
    out["kv_cache"] = spec(CACHE_AXES, KVCache.shape_for(config, 1, 1), mesh, units)
    return out


def _placeholder(w: WeightSpec, c: Phi3Config, dtype, abstract: bool, layers: int = 0):
    """Table row ``w``'s parameter at compute ``dtype`` (``layers``: stacked over that many):
    zeros, or only their shape and dtype (``abstract``: the loader fills them in)."""
    shape = (layers, *w.shape(c)) if layers else w.shape(c)
    dtype = w.dtype(dtype)
    return nnx.Param(jax.ShapeDtypeStruct(shape, dtype) if abstract else jnp.zeros(shape, dtype))


class LayerParams(nnx.Module):
    """One decoder layer's weights (the ``layers`` layout): an attribute per per-layer row of
    :data:`phijax.weight_schema.WEIGHTS` (``attn_norm``, ``qkv``, ``o_proj``, ``ffn_norm``,
    ``gate_up``, ``down``), with that row's shape and dtype."""

    def __init__(self, config: Phi3Config, dtype, abstract: bool = False):
        for w in LAYER_WEIGHTS:
            setattr(self, w.name, _placeholder(w, config, dtype, abstract))


class Phi3(nnx.Module):
    """Phi-3 weights at ``dtype`` (created abstract by the loader, which fills them in).

    The parameters are the rows of :data:`phijax.weight_schema.WEIGHTS` (names, shapes,
    dtypes); an absent optional one (``lm_head`` when tied, ``rope_factors`` without
    ``longrope``) is ``None``.

    ``layout="stacked"``: each layer parameter is one array ``[layers, ...]``, applied
    with ``lax.scan`` (compile time independent of depth). ``layout="layers"``: one
    array per layer and parameter, applied by an unrolled loop. ``backend``
    (:class:`phijax.backend.Backend`) chooses the layout; the math is the same either way.

    ``dtype`` is the backend's compute dtype; a matrix may be a :class:`QuantArray`
    (packed weights), decoded to it inside each step. ``config`` is the effective config (its ``sliding_window`` is the one in force);
    ``rope_factors [rotary_dim // 2]`` is the LongRoPE factor set chosen at load
    (``None`` for plain rope). ``abstract=True`` makes shapes only, for the loader to
    fill in one tensor at a time (the weights never exist twice).
    """

    def __init__(
        self,
        config: Phi3Config,
        backend: Backend,
        *,
        longrope: bool = False,
        abstract: bool = False,
    ):
        c = self.config = config
        self.backend = backend  # static: the per-device choices (phijax.backend)
        self.dtype = dtype = backend.compute_dtype  # weights may be QuantArrays
        self.layout = backend.layout
        for w in GLOBAL_WEIGHTS:
            present = w.present(c, longrope)
            setattr(self, w.name, _placeholder(w, c, dtype, abstract) if present else None)
        if self.layout == "stacked":
            for w in LAYER_WEIGHTS:
                setattr(self, w.name, _placeholder(w, c, dtype, abstract, c.num_layers))
        else:
            self.layers = nnx.List([LayerParams(c, dtype, abstract) for _ in range(c.num_layers)])

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

    def step_weights(self, i: int) -> dict[str, jax.Array]:
        """What one layer's step takes: :meth:`layer` ``(i)``, except where the CPU kernel
        reads stacks in place (:attr:`Backend.reads_stacks_in_place`): there the matrices
        stay whole ``[layers, out, in]`` and ``i`` goes along as an int32 array under
        :data:`~phijax.model.layers.STACK_INDEX` (an argument, not a constant, of a step
        compiled outside: one program serves every layer)."""
        if not self.backend.reads_stacks_in_place:
            return self.layer(i)
        norms = {n: getattr(self, n)[...][i] for n in LAYER_PARAMS if n not in LAYER_MATRICES}
        return {**norms, **self.matrices(), STACK_INDEX: jnp.int32(i)}

    def matrices(self) -> dict[str, jax.Array | QuantArray]:
        """The per-layer matrices as stored: ``[layers, out, in]`` stacks when stacked."""
        return {n: getattr(self, n)[...] for n in LAYER_MATRICES}

    def head(self) -> jax.Array | QuantArray:
        """The output projection ``[vocab, hidden]`` (the embedding when tied)."""
        return (self.embed if self.lm_head is None else self.lm_head)[...]
