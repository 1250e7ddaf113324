"""A CPU kernel for packed and bf16 weights, registered with XLA through ``jax.ffi``.

XLA:CPU does not fuse an int8 → float convert into a matrix product: it writes the
decoded weight to memory first (about 1 G weights/s, ``docs/benchmarks.md``), so
without help a :class:`~phijax.model.quant.QuantArray` buys memory, not speed, on
CPU; and its bf16 matrix-vector product is 10x slower than f32's. :func:`matmul`
decodes each block in registers and multiplies it in f32 (``cpu_matmul.cc``): the same
weights as the f32 mode, bit for bit, read at a quarter (packed) or half (bf16) of their
bytes. It is built at install time (``setup.py``) for AVX-512, AVX2 and any CPU;
:func:`status` says which one runs, or why none does, in which case
:func:`~phijax.model.layers.linear` keeps its pure-JAX path.

``PHIJAX_CPU_KERNEL=0`` turns the kernel off; ``=avx2`` or ``=generic`` picks a build.
"""

from __future__ import annotations

import functools
import importlib
import os
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np

from phijax.errors import UnsupportedError
from phijax.model.quant import QuantArray, dense

TARGET = "phijax_cpu_matmul"
MAX_ROWS = 256
"""Rows of ``x`` up to which :func:`applies` picks the kernel. Its time grows with the rows
(each weight block is decoded once per tile of 8 rows, then multiplied on the vector units),
while the pure path decodes the weight once and runs XLA's matrix-matrix product: on a
Phi-3-mini ``[16384, 3072]`` Q4_K weight, 167 vs 211 ms at 256 rows, 268 vs 280 at 384,
367 vs 336 at 512 (AMD EPYC Zen 4, 2 cores). 256 is also the prefill chunk, so a batch-1
prompt prefills on the kernel."""
BF16_MAX_ROWS = 4
"""The same for a bf16 weight, whose pure path needs no decoding: XLA's bf16 matrix-matrix
product overtakes the kernel's f32 arithmetic between 4 and 8 rows, while its
matrix-vector product is 3-6x slower than the kernel (``[16384, 3072]``: kernel 4.2 / 6.4 /
9.8 ms at 1 / 4 / 8 rows, XLA bf16 26.9 / 9.1 / 7.8, f32 8.6 / 18.9 / 20.4; AMD EPYC)."""
_FALLBACK = "packed and bf16 weights use XLA's products"  # what runs when the kernel cannot


@functools.cache
def _build() -> tuple[ModuleType | None, str]:
    """The kernel build this CPU runs, registered with XLA, and a line that says which (or
    why none)."""
    wanted = os.environ.get("PHIJAX_CPU_KERNEL", "").strip().lower()
    if wanted in ("0", "off", "false", "no"):
        return None, "off (PHIJAX_CPU_KERNEL=0)"
    try:
        generic = importlib.import_module("phijax.kernels._cpu_matmul_generic")
    except ImportError as e:
        return None, (
            f"not built ({e}); {_FALLBACK}. Reinstall phijax with a C++ compiler (g++ or "
            "clang++) on the PATH to build it."
        )
    order = [isa for isa in ("avx512", "avx2") if isa in generic.supported()] + ["generic"]
    if wanted:
        if wanted not in order:
            return None, f"PHIJAX_CPU_KERNEL={wanted!r}: this CPU runs {order}"
        order = [wanted]
    for isa in order:
        try:
            module = importlib.import_module(f"phijax.kernels._cpu_matmul_{isa}")
        except ImportError:
            continue
        jax.ffi.register_ffi_target(TARGET, module.handler(), platform="cpu")
        return module, module.isa()
    return None, f"no build for this CPU among {order}"


@functools.cache
def _checked() -> tuple[bool, str]:
    """Registered and agreeing with the pure-JAX product on a small case (a build made for
    another jaxlib, say, fails here instead of inside a user's step)."""
    module, line = _build()
    if module is None:
        return False, line
    try:  # in a thread of its own: JAX's trace state is per thread, so this runs eagerly
        with ThreadPoolExecutor(1) as pool:  # even when the first use is inside a jit trace
            error = pool.submit(_self_check).result()
    except Exception as e:  # any failure of a foreign build means: do not use it
        error = f"{type(e).__name__}: {e}"
    if error:
        return False, f"{line}: failed its check ({error}); {_FALLBACK}"
    return True, line


def _self_check() -> str:
    """The kernel against numpy on a small packed weight with mins and a bf16 weight; '' when
    they agree."""
    rng = np.random.default_rng(0)
    packed = QuantArray(
        jnp.asarray(rng.integers(-128, 128, (24, 64)), jnp.int8),
        jnp.asarray(rng.random((24, 2)), jnp.float32),
        jnp.asarray(rng.random((24, 2)), jnp.float32),
    )
    x = rng.standard_normal((3, 64)).astype(np.float32)
    for w in (packed, jnp.asarray(rng.standard_normal((24, 64)), jnp.bfloat16)):
        got = np.asarray(jax.jit(_call)(x, w))
        if not np.allclose(got, x @ np.asarray(dense(w, jnp.float32)).T, rtol=1e-4, atol=1e-4):
            return f"wrong results for a {type(w).__name__} weight"
    return ""


def status() -> str:
    """Which kernel build runs on this CPU, or why none does."""
    return _checked()[1]


def available() -> bool:
    return jax.default_backend() == "cpu" and _checked()[0]


def applies(x: jax.Array, w: jax.Array | QuantArray) -> bool:
    """Whether :func:`~phijax.model.layers.linear` should use the kernel for ``x [..., in]``
    and ``w``: one packed matrix of at most :data:`MAX_ROWS` rows, or one bf16 matrix of at
    most :data:`BF16_MAX_ROWS` (not a layer stack), on CPU, outside a device mesh (XLA
    cannot split a foreign call's operands; the pure path shards)."""
    if isinstance(w, QuantArray):
        limit, ndim = MAX_ROWS, w.values.ndim
    elif w.dtype == jnp.bfloat16:
        limit, ndim = BF16_MAX_ROWS, w.ndim
    else:
        return False
    return (
        ndim == 2
        and int(np.prod(x.shape[:-1])) <= limit
        and jax.sharding.get_abstract_mesh().empty
        and available()
    )


def reference(x: jax.Array, w: jax.Array | QuantArray) -> jax.Array:
    """``x [rows, in] @ w.T`` in f32 by decoding ``w`` first: the pure-JAX product."""
    x = x.astype(jnp.float32)
    return jnp.dot(x, dense(w, jnp.float32).T, preferred_element_type=jnp.float32)


@jax.custom_jvp
def matmul(x: jax.Array, w: jax.Array | QuantArray) -> jax.Array:
    """``x [rows, in] @ w.T`` → ``[rows, out]`` f32 by the kernel, for a packed or bf16
    ``w [out, in]``. Differentiable (the derivatives are :func:`reference`'s) and batchable
    like any JAX function."""
    return _call(x.astype(jnp.float32), w)


@matmul.defjvp
def _matmul_jvp(primals, tangents):
    return matmul(*primals), jax.jvp(reference, primals, tangents)[1]


def _call(x: jax.Array, w: jax.Array | QuantArray) -> jax.Array:
    if _build()[0] is None:
        raise UnsupportedError(f"phijax's CPU kernel is {_build()[1]}")
    empty = jnp.zeros((0,), jnp.float32)
    if not isinstance(w, QuantArray):
        return _ffi(0)(x, w, empty, empty)
    return _ffi(w.nibbles)(x, w.values, w.scales, empty if w.mins is None else w.mins)


@functools.cache
def _ffi(nibbles: int):
    """The foreign call for one code layout, batched by folding a batch of ``x`` into its
    rows (weights shared) or, when the weights carry the batch too, one call per item."""

    @jax.custom_batching.custom_vmap
    def call(x, values, scales, mins):
        out = jax.ShapeDtypeStruct((x.shape[0], values.shape[0]), jnp.float32)
        return jax.ffi.ffi_call(TARGET, out)(x, values, scales, mins, nibbles=np.int64(nibbles))

    @call.def_vmap
    def _batched(axis_size, in_batched, x, values, scales, mins):
        if not any(in_batched[1:]):
            size, rows, cols = x.shape
            return call(x.reshape(size * rows, cols), values, scales, mins).reshape(
                size, rows, -1
            ), True
        args = [
            a if b else jnp.broadcast_to(a, (axis_size, *a.shape))
            for a, b in zip((x, values, scales, mins), in_batched, strict=True)
        ]
        return jax.lax.map(lambda a: call(*a), args), True

    return call
