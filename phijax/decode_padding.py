"""Decode batch padding, chosen by measuring this machine once (and cached).

On XLA:CPU a bf16 matrix-*vector* product is 8-25x slower than f32, while a
bf16 matrix-*matrix* product from a few rows is 2-2.4x faster (docs/benchmarks.md,
XLA:CPU products), so a bf16 model decodes a small batch faster padded to more
rows. phijax's CPU kernel (:mod:`phijax.kernels`) takes bf16 products of a few rows
and is fastest unpadded; where it is not built, padding still pays. Which is true,
and by how many rows, is a property of the machine, so it is measured, not
assumed: for each small batch bucket, time the model's largest matmul
(``gate_up``) through the model's own :func:`~phijax.model.layers.linear`, in a
loop as the decode step runs it, at each padded row count, and keep the fastest.
The plan is cached in ``$PHIJAX_CACHE/plans.json``, keyed by device, jax version,
dtype, shape, the kernel build and :data:`VERSION` (how it was measured); the CPU's
name only labels the key, it never decides.
"""

from __future__ import annotations

import json
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from filelock import FileLock

from phijax import kernels
from phijax.backend import Backend
from phijax.model.layers import linear
from phijax.paths import cache_dir, caches_enabled, cpu_name, write_atomically

# Batch buckets whose padding is measured: from 8 rows, products are matrix-matrix anyway.
SMALL_BATCHES = (1, 2, 4)
MAX_ROWS = 8
REPS = 7
LOOP = 4  # products per timed call, in a fori_loop (the decode step's form)
VERSION = 3  # bump when the measured product changes: older cached plans are then remeasured


def _key(backend: Backend, shape: tuple[int, int]) -> str:
    device = jax.local_devices()[0]
    return "|".join(
        [device.platform, device.device_kind, cpu_name(), jax.__version__, backend.dtype]
        + [f"kernel {backend.kernel or kernels.status()}"]  # linear's small-row products
        + [str(s) for s in shape]
        + [f"v{VERSION}"]
    )


def _median_ms(fn, *args) -> float:
    fn(*args).block_until_ready()
    times = []
    for _ in range(REPS):
        start = time.perf_counter()
        fn(*args).block_until_ready()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


@partial(jax.jit, static_argnames="backend")
def _looped_linear(x: jax.Array, w: jax.Array, backend: Backend) -> jax.Array:
    """``LOOP`` products ``linear(x, w)`` in a fori_loop, ``w`` loop-invariant (as in decode)."""

    def body(_, x):
        return x + linear(x, w, backend).mean(axis=-1, keepdims=True).astype(x.dtype)

    return jax.lax.fori_loop(0, LOOP, body, x)


def measure(backend: Backend, shape: tuple[int, int]) -> dict[int, int]:
    """For each small batch bucket, the padded row count (``>=`` it, ``<= MAX_ROWS``) whose
    ``linear([rows, 1, in], [out, in])`` in the backend's dtype, looped with the weight
    loop-invariant as in the decode step, measures fastest here."""
    dtype = backend.compute_dtype
    w = jnp.zeros(shape, dtype)
    looped = partial(_looped_linear, backend=backend)
    cost = {}
    rows = 1
    while rows <= MAX_ROWS:
        cost[rows] = _median_ms(looped, jnp.ones((rows, 1, shape[1]), dtype), w)
        rows *= 2
    plan = {}
    for b in SMALL_BATCHES:
        options = [r for r in cost if r >= b]
        best = min(options, key=lambda r: cost[r])
        # ties within 5% go to fewer rows (less attention and sampling work)
        plan[b] = min(r for r in options if cost[r] <= cost[best] * 1.05)
    return plan


def decode_rows(backend: Backend, shape: tuple[int, int]) -> dict[int, int]:
    """The padding plan ``{batch bucket: rows}`` for decoding under ``backend`` (identity
    unless :attr:`~phijax.backend.Backend.pads_decode`); measured on first use on this
    machine, then read from the cache."""
    if not backend.pads_decode:
        return {}
    key = _key(backend, shape)
    path = cache_dir() / "plans.json"
    if caches_enabled():
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            plans = _read(path)
            if key not in plans:
                plans[key] = {str(b): r for b, r in measure(backend, shape).items()}
                write_atomically(path, json.dumps(plans, indent=1).encode())
            return {int(b): int(r) for b, r in plans[key].items()}
    return measure(backend, shape)


def _read(path) -> dict:
    try:
        plans = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return plans if isinstance(plans, dict) else {}
