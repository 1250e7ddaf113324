"""A CPU kernel for packed and bf16 weights and decode attention (:mod:`.attention`), via FFI.

XLA:CPU does not fuse an int8 → float convert into a matrix product: it writes the decoded
weight to memory first (about 1 G weights/s, ``docs/benchmarks.md``), so without help a
:class:`~phijax.quant.QuantArray` buys memory, not speed, on CPU; and its bf16 matrix-vector
product is 10x slower than f32's. :func:`matmul` decodes each block in registers and
multiplies it in f32 (``cpu_matmul.cc``): the f32 mode's weights bit for bit, read at a
quarter (packed) or half (bf16) of their bytes. It is built at install time (``setup.py``)
for AVX-512, AVX2 and any CPU (:data:`BUILDS`); each build this CPU runs registers its own
FFI targets and must pass a check against numpy before use. :func:`status` says which build
:func:`~phijax.model.layers.linear` uses, or why none (it then keeps its pure path).

``PHIJAX_CPU_KERNEL``: unset, ``1``, ``on`` or ``true`` use the fastest build this CPU
runs; ``0``, ``off`` or ``false`` turn the kernel off; a name from :data:`BUILDS` picks one.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np

from phijax import int8
from phijax.errors import ConfigError, UnsupportedError
from phijax.kernels import attention
from phijax.kernels.check import verdict
from phijax.quant import QuantArray, at_layer, dense, layer_view

BUILDS: tuple[str, ...] = ("avx512vnni", "avx512", "avx2", "generic")
"""The kernel's builds (``setup.py``), fastest first: ``avx512vnni`` is ``avx512`` plus VNNI's
integer dot products for int8 activations (:data:`INT8_PRODUCTS` names each build's)."""
INT8_PRODUCTS = {"avx512vnni": "vpdpbusd", "avx512": "vpmaddubsw", "avx2": "vpmaddubsw"}
"""The instruction each vector build multiplies int8 activations with (``generic``: loops)."""
ACTIVATIONS = ("f32", "int8")
"""How the kernel multiplies: f32 activations (the f32 mode's products), or activations
rounded to int8 per block as llama.cpp rounds them (:mod:`phijax.int8`, ``int8_dot.h``)."""
TARGET = "phijax_cpu_matmul"
"""The prefix of the builds' FFI targets: build ``b`` registers ``f"{TARGET}_{b}"``."""
ENV = "PHIJAX_CPU_KERNEL"
MAX_ROWS = 256
"""Rows of ``x`` up to which :func:`applies` picks the kernel. Its time grows with the rows
(each weight block is decoded once per tile of rows), while the pure path decodes the weight
once for XLA's matrix-matrix product: ``[16384, 3072]`` Q4_K, 167 vs 211 ms at 256 rows, 268
vs 280 at 384, 367 vs 336 at 512 (AMD EPYC Zen 4, 2 cores). 256 is also the prefill chunk."""
BF16_MAX_ROWS = 4
"""The same for a bf16 weight, whose pure path needs no decoding: XLA's bf16 matrix-matrix
product overtakes the kernel's f32 arithmetic between 4 and 8 rows, while its
matrix-vector product is 3-6x slower than the kernel (``[16384, 3072]``: kernel 4.2 / 6.4 /
9.8 ms at 1 / 4 / 8 rows, XLA bf16 26.9 / 9.1 / 7.8, f32 8.6 / 18.9 / 20.4; AMD EPYC)."""
_FALLBACK = "packed and bf16 weights use XLA's products"  # what runs when the kernel cannot
_SWITCH = {"": "auto", "1": "auto", "on": "auto", "true": "auto"}
_SWITCH |= {"0": "off", "off": "off", "false": "off"} | {b: b for b in BUILDS}


def requested(value: str | None = None) -> str:
    """What ``value`` (default: ``$PHIJAX_CPU_KERNEL``) asks for: ``"auto"`` (unset, ``1``,
    ``on``, ``true``: the fastest build this CPU runs), ``"off"`` (``0``, ``off``, ``false``)
    or a name from :data:`BUILDS`; anything else raises :class:`ConfigError`."""
    raw = os.environ.get(ENV, "") if value is None else value
    choice = _SWITCH.get(raw.strip().lower())
    if choice is None:
        raise ConfigError(
            f"{ENV}={raw!r} is not understood: use 1/on/true (the fastest build this CPU "
            f"runs), 0/off/false (no kernel), or a build: {', '.join(BUILDS)}."
        )
    return choice


def target(build: str) -> str:
    """The FFI target that ``build`` registers."""
    return f"{TARGET}_{build}"


def _missing(name: str, error: ImportError) -> str:
    """Why extension module ``name`` did not import, and what to do about it."""
    here = Path(__file__).resolve().parent
    if not isinstance(error, ModuleNotFoundError):
        return f"not loadable ({error}; reinstall phijax to rebuild it for this Python and jaxlib)"
    root = here.parents[1]
    if (root / "setup.py").is_file() and (root / "pyproject.toml").is_file():
        return (
            f"not built in the source tree {root}, which Python imports phijax from (it "
            "shadows any installed copy): build it there with `pip install -e .` (a C++ "
            "compiler on the PATH), or run Python outside the checkout"
        )
    return (
        f"not built (no {name} in {here}; reinstall phijax with a C++ compiler, g++ or "
        "clang++, on the PATH and jaxlib importable at build time)"
    )


@functools.cache
def _cpu() -> tuple[tuple[str, ...], str]:
    """The builds this CPU runs, fastest first, as the portable build reports them (a vector
    build cannot ask safely: its own code may use the instructions in question); or ``()``
    and why the portable build did not import."""
    name = "_cpu_matmul_generic"
    try:
        generic = importlib.import_module(f"{__name__}.{name}")
    except ImportError as e:
        return (), _missing(name, e)
    runs = {*generic.supported(), "generic"}
    return tuple(b for b in BUILDS if b in runs), ""


def _known(build: str) -> str:
    if build not in BUILDS:
        raise ConfigError(f"CPU kernel build {build!r}: the builds are {', '.join(BUILDS)}.")
    return build


@functools.cache
def _load(build: str) -> tuple[ModuleType | None, str]:
    """``build`` imported, its targets registered (``target``, ``attention.target``); or why not."""
    runs, why = _cpu()
    if why:
        return None, why
    if build not in runs:
        return None, f"this CPU does not run it (it runs {', '.join(runs)})"
    name = f"_cpu_matmul_{build}"
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ImportError as e:
        return None, _missing(name, e)
    try:  # a build for another jaxlib may be refused here
        jax.ffi.register_ffi_target(target(build), module.handler())
        jax.ffi.register_ffi_target(attention.target(build), module.attention_handler())
    except Exception as e:
        return None, f"not registered with XLA ({type(e).__name__}: {e})"
    return module, ""


@functools.cache
def _checked(build: str) -> str:
    """'' when ``build`` is registered and agrees with numpy on every code layout (a build
    made for another jaxlib, or a wrong one, fails here instead of inside a user's step);
    otherwise why not."""
    module, why = _load(_known(build))
    if module is None:
        return why
    try:  # in a thread of its own: JAX's trace state is per thread, so this runs eagerly
        with ThreadPoolExecutor(1) as pool:  # even when the first use is inside a jit trace
            error = pool.submit(verdict, build, module.__file__, _call, __file__).result()
    except Exception as e:  # any failure of a foreign build means: do not use it
        error = f"{type(e).__name__}: {e}"
    return f"failed its check ({error})" if error else ""


def builds() -> tuple[str, ...]:
    """The builds present here, run by this CPU and passing their check, fastest first
    (whatever ``PHIJAX_CPU_KERNEL`` says)."""
    return tuple(b for b in BUILDS if not _checked(b))


def _chosen() -> tuple[str | None, str]:
    """The build :func:`linear <phijax.model.layers.linear>` uses (``None``: the pure path)
    and the line :func:`status` shows."""
    wanted = requested()
    if wanted == "off":
        return None, f"off ({ENV}={os.environ.get(ENV)!r}); {_FALLBACK}"
    if wanted != "auto":
        why = _checked(wanted)
        return (None, f"{wanted}: {why}; {_FALLBACK}") if why else (wanted, wanted)
    runs, why = _cpu()
    if why:
        return None, f"{why}; {_FALLBACK}"
    refused = []
    for build in runs:
        why = _checked(build)
        if not why:
            return build, build + (f" ({'; '.join(refused)})" if refused else "")
        refused.append(f"{build}: {why}")
    return None, f"{'; '.join(refused)}; {_FALLBACK}"


def chosen() -> str | None:
    """The build :func:`~phijax.model.layers.linear` uses on this CPU, or ``None``."""
    return _chosen()[0]


def status(build: str | None = None) -> str:
    """Which build :func:`~phijax.model.layers.linear` uses on this CPU, or why none does;
    with ``build``, that build's name if it runs here, or why not."""
    if build is None:
        return _chosen()[1]
    why = _checked(_known(build))
    return f"{build}: {why}" if why else build


def available(build: str | None = None) -> bool:
    """Whether the kernel runs here (``build``: that build; default: the one chosen)."""
    return chosen() is not None if build is None else not _checked(_known(build))


def row_limit(w: jax.Array | QuantArray) -> int | None:
    """Rows of ``x`` up to which ``linear`` multiplies ``w`` on the kernel: :data:`MAX_ROWS`
    for a QuantArray, :data:`BF16_MAX_ROWS` for bf16, ``None`` for any other dtype."""
    if isinstance(w, QuantArray):
        return MAX_ROWS
    return BF16_MAX_ROWS if w.dtype == jnp.bfloat16 else None


def fits(w: jax.Array | QuantArray, activations: str = "f32") -> bool:
    """Whether the kernel takes ``w`` (``cpu_matmul.cc``'s rules): one matrix of a width that
    is a multiple of 32; bf16, or int8 codes in blocks of 16 or 32, or 4-bit codes in groups of
    32 or 64 with blocks of 32 (and fifth bits, if any, one per code), or interleaved 6-bit
    codes in blocks of 16 (two high-bit planes, zero point 32); mins, if any, shaped like the
    scales. int8 activations take packed weights of a width, a multiple of 64 and of the block."""
    if activations == "int8" and (
        not isinstance(w, QuantArray) or w.shape[-1] % max(64, w.activation_block)
    ):
        return False
    if not isinstance(w, QuantArray):
        return w.dtype == jnp.bfloat16 and w.ndim == 2 and w.shape[1] % 32 == 0
    cols = w.shape[-1]
    groups = w.scales.shape[-1]
    if w.values.ndim != 2 or w.scales.ndim != 2 or cols % 32 or not groups or cols % groups:
        return False
    if w.interleave:  # the int8 path's order (phijax.quant.interleaved); f32: Q4/5/6_K's (below)
        interleaved_ok = w.block == w.interleave and cols % (16 * w.block) == 0
        read = activations == "int8" or w.units is not None  # f32: two-level ones only
        if not read or w.activation_block != 256 or not interleaved_ok:
            return False
    if w.mins is not None and w.mins.shape != w.scales.shape:
        return False
    if w.units is not None and not _two_level_fits(w, activations):
        return False
    if w.nibbles:
        six = w.planes == 2  # Q6_K's codes, interleaved only, offset by 32
        planes_ok = w.high is None or (
            w.high.dtype == jnp.uint8
            and w.high.shape == (*w.shape[:-1], cols // 8 * w.planes)
            and w.planes in (1, 2)
        )
        return (
            planes_ok
            and w.nibbles in (32, 64)
            and w.block == (16 if six else 32)
            and w.zero == (32 if six else 0)
            and (not six or w.interleave)
            and w.values.dtype == jnp.uint8
        )
    return w.block in (16, 32) and w.values.dtype == jnp.int8 and w.high is None and not w.zero


def _two_level_fits(w: QuantArray, activations: str) -> bool:
    """Integer scales with per-super-block units (``QuantArray.units``): Q4_K/Q5_K (nibbles in
    groups of 64, uint8 scales and mins, d and dmin) or Q6_K (int8 codes, or interleaved 6-bit
    ones, int8 scales, d); interleaved with int8 activations, in row order (or codes packed
    as nibbles, Q4_K's, Q5_K's and Q6_K's, interleaved) with f32 ones."""
    rows, cols = w.shape
    k = 1 if w.mins is None else 2
    q4 = w.nibbles and w.planes < 2  # Q4_K or Q5_K
    f32_ok = not w.interleave or w.nibbles == 64  # Q4_K, Q5_K, Q6_K's 6-bit codes interleaved
    order_ok = (w.interleave if activations == "int8" else f32_ok) and (not q4 or w.nibbles == 64)
    units_ok = w.units.shape == (rows, cols // 256, k) and w.units.dtype == jnp.float16
    if not order_ok or w.block != (32 if q4 else 16) or not units_ok or cols > 65536:
        return False  # 65536 columns at most: the kernel holds a row's units as f32
    if q4:
        return w.scales.dtype == jnp.uint8 and k == 2 and w.mins.dtype == jnp.uint8
    return w.scales.dtype == jnp.int8 and k == 1


def applies(x: jax.Array, w: jax.Array | QuantArray, activations: str = "f32") -> bool:
    """Whether :func:`~phijax.model.layers.linear` should use the kernel for ``x [..., in]``
    and ``w``: a weight it :func:`fits`, at most :func:`row_limit` rows of ``x`` (under
    ``vmap``, :func:`matmul` recounts them with the batch), outside a device mesh (XLA
    cannot split a foreign call's operands; the pure path shards). Whether the kernel runs
    here at all is the backend policy's call (:class:`phijax.backend.Backend`)."""
    limit = row_limit(w)
    return (
        limit is not None
        and fits(w, activations)
        and int(np.prod(x.shape[:-1])) <= limit
        and jax.sharding.get_abstract_mesh().empty
    )


def reference(x: jax.Array, w: jax.Array | QuantArray, activations: str = "f32") -> jax.Array:
    """``x [rows, in] @ w.T`` in f32 by decoding ``w`` first: the pure-JAX product (with
    ``activations="int8"``, of ``x`` rounded by :func:`phijax.int8.fake_quant`)."""
    x = x.astype(jnp.float32)
    if activations == "int8" and isinstance(w, QuantArray):
        x = int8.fake_quant(x, w.activation_block)
    return jnp.dot(x, dense(w, jnp.float32).T, preferred_element_type=jnp.float32)


def matmul(
    x: jax.Array,
    w: jax.Array | QuantArray,
    *,
    build: str | None = None,
    max_rows: int | None = None,
    activations: str = "f32",
    layer: int | jax.Array | None = None,
) -> jax.Array:
    """``x [rows, in] @ w.T`` → ``[rows, out]`` f32 by the kernel, for a packed or bf16
    ``w [out, in]`` that it :func:`fits` (with ``layer``: layer ``layer`` of a stacked ``w
    [layers, out, in]``, read in place). ``build``: one of :func:`builds` (default: the one
    :func:`status` names). ``max_rows``: when ``vmap`` folds a batch into more rows than this,
    the batched product is the pure one (``None``: no limit). ``activations``: ``"f32"``, or
    ``"int8"`` (packed ``w``): ``x`` rounded per block as llama.cpp rounds it
    (:mod:`phijax.int8`), multiplied in integers. Differentiable (:func:`reference`'s
    derivatives) and batchable like any JAX function."""
    if activations not in ACTIVATIONS:
        raise ConfigError(f"activations = {activations!r}; use one of {ACTIVATIONS}.")
    if (layer is None) != (_layers(w) is None):
        raise UnsupportedError(
            "layer= goes with a stacked weight (codes [layers, out, in]) and only with one; got "
            f"layer={layer!r} and a weight of shape {tuple(w.shape)}."
        )
    one = w if layer is None else layer_view(w)
    if isinstance(w, QuantArray) and w.interleave and not fits(one, activations):
        raise UnsupportedError(
            "an interleaved weight (QuantArray.interleave) takes activations='int8', or 'f32' "
            "for Q4_K's, Q5_K's and Q6_K's two-level scales; QuantArray.unpacked() gives the row "
            "order."
        )
    if activations == "int8" and not fits(one, activations):
        raise UnsupportedError(
            "int8 activations take a packed weight whose width is a multiple of 64 (and of "
            f"its activation block); got {type(w).__name__} of shape {tuple(one.shape)}."
        )
    if build is None:
        build, line = _chosen()
        if build is None:
            raise UnsupportedError(f"phijax's CPU kernel is {line}")
    elif why := _checked(_known(build)):
        raise UnsupportedError(f"phijax's CPU kernel build {build} is {why}")
    return _matmul(
        build, max_rows, activations, x, w, jnp.asarray(0 if layer is None else layer, jnp.int32)
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _matmul(
    build: str, max_rows: int | None, activations: str, x: jax.Array, w, layer: jax.Array
) -> jax.Array:
    return _call(build, max_rows, activations, x.astype(jnp.float32), w, layer)


@_matmul.defjvp
def _matmul_jvp(build, max_rows, activations, primals, tangents):
    x, w, layer = primals

    def product(x, w):
        return reference(x, w if _layers(w) is None else at_layer(w, layer), activations)

    tangent = jax.jvp(product, (x, w), tangents[:2])[1]
    return _matmul(build, max_rows, activations, *primals), tangent


def _layers(w: jax.Array | QuantArray) -> int | None:
    """The layer count of a stacked weight (codes of 3 dimensions), else ``None``."""
    codes = w.values if isinstance(w, QuantArray) else w
    return codes.shape[0] if codes.ndim == 3 else None


def _call(
    build: str, max_rows: int | None, activations: str, x: jax.Array, w, layer=None
) -> jax.Array:
    layer = jnp.int32(0) if layer is None else layer
    empty, no_bits, no_units = (jnp.zeros((0,), t) for t in (jnp.float32, jnp.uint8, jnp.float16))
    if not isinstance(w, QuantArray):
        return _ffi(build, 0, 32, 0, max_rows)(x, w, empty, empty, no_bits, no_units, layer)
    mins = empty if w.mins is None else w.mins
    high = no_bits if w.high is None else w.high
    units = no_units if w.units is None else w.units
    # the kernel's act attribute (int8_dot.h's Act): 0 f32, 1 int8 per 256, 2 int8 per 32
    act = 0 if activations == "f32" else 1 if w.activation_block == 256 else 2
    call = _ffi(build, w.nibbles, w.activation_block, act, max_rows, w.interleave, w.zero)
    return call(x, w.values, w.scales, mins, high, units, layer)


def _pure(x: jax.Array, w: jax.Array | QuantArray, activations: str) -> jax.Array:
    """:func:`reference`, with a packed weight tied to ``x`` by a zero-valued data dependency
    so that XLA decodes it where it is used (as ``linear``'s pure path does)."""
    if isinstance(w, QuantArray) and x.size:
        tie = (x.reshape(-1)[0] * 0).astype(w.values.dtype)
        w = dataclasses.replace(w, values=w.values + tie)
    return reference(x, w, activations)


@functools.cache
def _ffi(
    build: str,
    nibbles: int,
    activation_block: int,
    act: int,
    max_rows: int | None,
    interleave: int = 0,
    zero: int = 0,
):
    """The foreign call of ``build`` for one code layout and activation rounding (``act``),
    batched by folding a batch of ``x`` into its rows (weights shared; the pure product beyond
    ``max_rows`` rows) or, when the weights carry the batch too, one call per item. The
    operands may be a stack of layers (a leading axis), of which the call reads ``layer``."""

    @jax.custom_batching.custom_vmap
    def call(x, values, scales, mins, high, units, layer):
        out = jax.ShapeDtypeStruct((x.shape[0], values.shape[-2]), jnp.float32)
        return jax.ffi.ffi_call(target(build), out)(
            x,
            values,
            scales,
            mins,
            high,
            units,
            layer,
            act=np.int64(act),
            nibbles=np.int64(nibbles),
            interleave=np.int64(interleave),
        )

    @call.def_vmap
    def _batched(axis_size, in_batched, x, values, scales, mins, high, units, layer):
        if not any(in_batched[1:]):
            stacked = values.ndim == 3
            size, rows, cols = x.shape
            folded = x.reshape(size * rows, cols)
            if max_rows is not None and size * rows > max_rows:
                w = values
                if values.dtype != jnp.bfloat16:
                    w = QuantArray(
                        values, scales, mins if mins.ndim >= 2 else None, nibbles, activation_block,
                        high if high.ndim >= 2 else None, interleave,
                        units if units.ndim == 3 + stacked else None, zero,
                    )  # fmt: skip
                activations = "f32" if act == 0 else "int8"
                w = at_layer(w, layer) if stacked else w
                return _pure(folded, w, activations).reshape(size, rows, -1), True
            y = call(folded, values, scales, mins, high, units, layer)
            return y.reshape(size, rows, -1), True
        args = [
            a if b else jnp.broadcast_to(a, (axis_size, *a.shape))
            for a, b in zip((x, values, scales, mins, high, units, layer), in_batched, strict=True)
        ]
        return jax.lax.map(lambda a: call(*a), args), True

    return call
