"""Sharding over a ``("data", "model")`` device mesh, declared once as logical axes.

Every weight and the KV cache name what each of their axes *means* (a logical axis:
``vocab``, ``q_heads``, ``ffn_in``, ``batch``...); :data:`RULES` maps each logical axis
to a mesh axis or ``None`` (replicated). So a parallelism strategy is one edit of the
rules, and no call site names a mesh axis. Placement is plain ``jax.sharding``
(``NamedSharding`` + ``PartitionSpec``); inside the compiled steps XLA's partitioner
(GSPMD/Shardy) propagates the shardings and inserts the communication.

Fallback: an axis is split only into whole units (heads for the head axes, rows or
columns otherwise) and only when both the units and the array dimension divide the mesh
axis; otherwise that axis is replicated (:func:`replicated_axes`). A replicated axis
costs memory, never correctness.

Fused weights: ``qkv`` rows are q|k|v and ``gate_up`` rows are gate|up; their row axis
is split into contiguous blocks, which need not fall on the q/k/v (gate/up) boundaries.
The weights still stay where they are; the partitioner moves the small activation
``[batch, seq, rows]`` instead. See ``docs/scale.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from phijax.cache import KVCache
from phijax.config import Phi3Config
from phijax.errors import ConfigError
from phijax.weight_schema import WEIGHTS, axis_sizes

MESH_AXES = ("data", "model")


@dataclass(frozen=True)
class ShardingRules:
    """Logical axis → mesh axis (``"data"``, ``"model"``) or ``None`` (replicated)."""

    batch: str | None = "data"  # rows of a batch: tokens, positions, lengths, KV cache
    layers: str | None = None  # the leading axis of a stacked weight or of the cache
    seq: str | None = None  # cache positions
    embed: str | None = None  # the hidden (residual stream) axis
    vocab: str | None = "model"  # embedding and output-head rows
    qkv_out: str | None = "model"  # fused q|k|v rows (whole kv-head groups per shard)
    q_heads: str | None = "model"  # o_proj input: heads x head_dim
    kv_heads: str | None = "model"  # the cache's kv-head axis
    head_dim: str | None = None
    ffn_out: str | None = "model"  # fused gate|up rows
    ffn_in: str | None = "model"  # down's input


RULES = ShardingRules()

# Each weight's logical axes (numpy layout [out, in]; a stacked weight adds "layers" first)
# and the cache's, as their own modules write them.
WEIGHT_AXES: dict[str, tuple[str | None, ...]] = {w.name: w.axes for w in WEIGHTS}
CACHE_AXES = KVCache.AXES


def check_mesh(mesh: Mesh | None) -> Mesh | None:
    """``mesh`` validated and with Auto axis types (``None`` stays ``None``: one device).

    ``jax.make_mesh`` gives Explicit axes by default, under which every op must be
    annotated with its output sharding; phijax lets the partitioner propagate instead,
    so the same devices and names are used with ``AxisType.Auto``.
    """
    if mesh is None:
        return None
    if not isinstance(mesh, Mesh):
        raise ConfigError(
            f"mesh = {mesh!r} is not a jax.sharding.Mesh; make one with "
            "jax.make_mesh((data, model), ('data', 'model'))."
        )
    if sorted(mesh.axis_names) != sorted(MESH_AXES):
        raise ConfigError(
            f"mesh axes {tuple(mesh.axis_names)} must be exactly {MESH_AXES}: e.g. "
            f"jax.make_mesh(({mesh.devices.size}, 1), ('data', 'model')) for data parallelism "
            f"or jax.make_mesh((1, {mesh.devices.size}), ('data', 'model')) for tensor parallelism."
        )
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * mesh.devices.ndim)


def axis_units(config: Phi3Config) -> dict[str, tuple[int, ...]]:
    """The head counts each head axis must split evenly (a shard holds whole heads).

    Attention splits by whole kv-head groups or not at all: q|k|v rows and o_proj's q heads
    need the kv heads to divide too. When they do not, the cache is replicated, and q heads
    split without their kv heads make XLA split the cache update by heads and gather the
    whole cache back in every layer (seen in the compiled HLO); replicating the attention
    weights avoids that, at the price of their memory.
    """
    h, kv = config.num_heads, config.num_kv_heads
    return {"qkv_out": (h, kv), "q_heads": (h, kv), "kv_heads": (kv,)}


def spec(
    axes: tuple[str | None, ...],
    shape: tuple[int, ...],
    mesh: Mesh,
    units: dict[str, tuple[int, ...]] | None = None,
    rules: ShardingRules = RULES,
) -> PartitionSpec:
    """The PartitionSpec of an array ``shape`` whose axes mean ``axes``: each logical axis's
    mesh axis from ``rules``, or ``None`` where the dimension (or its whole units) does not
    divide that mesh axis's size, or the mesh axis is already used by an earlier axis."""
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {axes} do not match shape {shape}")
    out, used = [], set()
    for name, dim in zip(axes, shape, strict=True):
        target = getattr(rules, name) if name else None
        n = mesh.shape[target] if target else 1
        counts = (units or {}).get(name, ())
        whole = dim % n == 0 and all(u % n == 0 for u in counts)
        ok = target is not None and target not in used and whole
        out.append(target if ok and n > 1 else None)
        used.update({target} if ok else set())
    return PartitionSpec(*out)


def weight_axes(name: str, stacked: bool) -> tuple[str | None, ...]:
    """Logical axes of the parameter ``name`` (``"layers"`` first when ``stacked``)."""
    return ("layers", *WEIGHT_AXES[name]) if stacked else WEIGHT_AXES[name]


def place(value, axes: tuple[str | None, ...], mesh: Mesh | None, config: Phi3Config):
    """``value`` (an array or a :class:`~phijax.quant.QuantArray`) on ``mesh`` with the sharding of its
    logical ``axes``; unchanged when ``mesh`` is None. A QuantArray's values, scales and
    mins share the row axis; each part's column axis is split only if its own size divides."""
    if mesh is None:
        return value
    units = axis_units(config)
    return jax.tree.map(
        lambda x: jax.device_put(x, NamedSharding(mesh, spec(axes, x.shape, mesh, units))), value
    )


def zeros(shape_dtype, axes: tuple[str | None, ...], mesh: Mesh | None, config: Phi3Config):
    """Zeros like ``shape_dtype`` (a tree of ShapeDtypeStructs or arrays), allocated directly
    in their shards: no device ever holds the whole array."""
    if mesh is None:
        return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shape_dtype)
    units = axis_units(config)

    def one(x):
        sharding = NamedSharding(mesh, spec(axes, x.shape, mesh, units))
        return jax.jit(lambda: jnp.zeros(x.shape, x.dtype), out_shardings=sharding)()

    return jax.tree.map(one, shape_dtype)


def create_cache(config: Phi3Config, batch: int, max_seq: int, dtype, mesh: Mesh | None) -> KVCache:
    """An empty :class:`KVCache` (its axes :data:`CACHE_AXES`): batch over "data", kv heads
    over "model" (each where it divides), allocated in place on the mesh."""
    if mesh is None:
        return KVCache.create(config, batch, max_seq, dtype)
    kv = jax.ShapeDtypeStruct(KVCache.shape_for(config, batch, max_seq), jnp.dtype(dtype))
    k, v = zeros(kv, CACHE_AXES, mesh, config), zeros(kv, CACHE_AXES, mesh, config)
    return KVCache(k, v, put_batch(np.zeros((batch,), np.int32), mesh))


def put_cache(cache: KVCache, mesh: Mesh | None) -> KVCache:
    """``cache`` resharded to the cache rules (after a gather over rows, say)."""
    if mesh is None:
        return cache
    k_spec = spec(CACHE_AXES, cache.k.shape, mesh)
    return KVCache(
        jax.device_put(cache.k, NamedSharding(mesh, k_spec)),
        jax.device_put(cache.v, NamedSharding(mesh, k_spec)),
        put_batch(cache.lengths, mesh),
    )


def put_batch(x, mesh: Mesh | None) -> jax.Array:
    """A batch input ``[batch, ...]`` with its rows over "data" (where they divide), the
    rest replicated; ``jnp.asarray(x)`` when ``mesh`` is None."""
    if mesh is None:
        return jnp.asarray(x)
    axes = ("batch",) + (None,) * (np.ndim(x) - 1)
    return jax.device_put(x, NamedSharding(mesh, spec(axes, np.shape(x), mesh)))


def constrain(x: jax.Array, axes: tuple[str | None, ...], config: Phi3Config) -> jax.Array:
    """Inside a step traced under :func:`on_mesh`: ``x`` pinned to the sharding of its logical
    ``axes``; unchanged without a mesh (one device, or a caller's own jit)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):  # none, or a caller's own
        return x
    return jax.lax.with_sharding_constraint(x, spec(axes, x.shape, mesh, axis_units(config)))


def on_mesh(method):
    """Run a :class:`~phijax.engine.Model` method (or each resumption of a generator method)
    with ``self.mesh`` as JAX's current mesh, so the steps it traces see it (:func:`constrain`);
    a plain call when ``self.mesh`` is None."""
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def generator(self, *args, **kwargs):
            if self.mesh is None:
                return (yield from method(self, *args, **kwargs))
            it = method(self, *args, **kwargs)
            while True:
                with jax.set_mesh(self.mesh):
                    try:
                        item = next(it)
                    except StopIteration as stop:
                        return stop.value
                yield item

        return generator

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if self.mesh is None:
            return method(self, *args, **kwargs)
        with jax.set_mesh(self.mesh):
            return method(self, *args, **kwargs)

    return call


def replicated_axes(config: Phi3Config, mesh) -> list[str]:
    """The logical axes that the rules would split but that fall back to replicated on
    ``mesh`` (their units or dimension do not divide): for the load summary, in the order
    of :class:`ShardingRules`. Sizes are the weights' and the cache's kv heads (its batch
    and positions are the request's, not the model's)."""
    mesh = check_mesh(mesh) if isinstance(mesh, Mesh) else mesh
    cache = dict(zip(CACHE_AXES, KVCache.shape_for(config, 1, 1), strict=True))
    sizes = {**axis_sizes(config), "kv_heads": cache["kv_heads"]}
    units = axis_units(config)
    return [
        f.name
        for f in dataclasses.fields(RULES)
        if f.name in sizes
        and getattr(RULES, f.name)
        and mesh.shape[getattr(RULES, f.name)] > 1
        and spec((f.name,), (sizes[f.name],), mesh, units) == PartitionSpec(None)
    ]


def describe(mesh: Mesh | None, config: Phi3Config) -> str:
    """One line for the load summary: the mesh and what is replicated."""
    if mesh is None:
        return ""
    fallback = replicated_axes(config, mesh)
    shape = ", ".join(f"{a}={mesh.shape[a]}" for a in mesh.axis_names)
    rep = f"; replicated (does not divide): {', '.join(fallback)}" if fallback else ""
    return f"mesh ({shape}){rep}"


__all__ = [
    "CACHE_AXES",
    "MESH_AXES",
    "RULES",
    "WEIGHT_AXES",
    "ShardingRules",
    "check_mesh",
    "constrain",
    "create_cache",
    "describe",
    "on_mesh",
    "place",
    "put_batch",
    "put_cache",
    "replicated_axes",
    "spec",
    "zeros",
]
