"""Bit-exact dequantization of raw GGUF tensor bytes, on device, in JAX.

A GGUF tensor is stored as a flat run of fixed-size blocks along ggml's ne[0]
(numpy's last axis). Each quantized type's block is split into integer codes and
per-sub-block scales and mins by its decoder in :mod:`phijax.gguf.blocks`
(shared with :mod:`phijax.gguf.relayout`); here the kernel multiplies them out,
``[n_blocks, type_size] uint8 -> [n_blocks, ..., 32] f32`` as ``scales · codes -
mins``. Float types (F32, F16, BF16) are reinterpreted. Everything is integer
shifts/masks, slices, reshapes and f32 arithmetic, so the same code runs under
``jit`` on CPU, GPU and TPU with no float64 and no host callbacks.
:func:`dequantize` validates the input, runs the kernel and gives the result the
tensor's shape.

The results are bit-identical to ``gguf.quants.dequantize`` (the reference the
tests compare against). Every float product a kernel forms is exact in f32: an
f16 scale has at most 11 significant bits and the integers it is multiplied by
(sub-block scale, quant or IQ4 level) add at most 12 more (worst cases Q6_K and
IQ4_XS, 7 + 5), within f32's 24; nothing overflows or goes subnormal. So the
order of the products does not matter, and the only rounding step is the final
subtraction of the min (``d · q + m`` for Q4_1/Q5_1, whose min is ``-m``: the
same sum): since the product before it is exact, it rounds the same whether or
not the compiler contracts the pair into an FMA.

Kernel output shapes are chosen for XLA:CPU, which emits one loop nest over a
fusion's output shape: a block's elements come out as rows of 32
(``[n_blocks, 32]`` or ``[n_blocks, rows, 32]``), each row decoded from one run
of consecutive payload bytes, so the per-block scale math is hoisted out of the
innermost loop and that loop vectorizes with contiguous loads. Float types come
out flat. Smaller choices (uint8 or int32 shifts, concatenate or reshape) were
made by measuring with ``benchmarks/bench_dequant.py``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT
from jax import lax

from phijax.errors import GGUFFormatError, UnsupportedError
from phijax.gguf.blocks import BLOCK_TYPES, F32, Fields, f16_bits_to_f32, le_uint


def _f32(b: jax.Array) -> jax.Array:
    """F32: ``[n, 4] uint8 -> [n] f32``, a pure reinterpretation."""
    return lax.bitcast_convert_type(le_uint(b), F32)


def _f16(b: jax.Array) -> jax.Array:
    """F16: ``[n, 2] uint8 -> [n] f32``."""
    return f16_bits_to_f32(le_uint(b))


def _bf16(b: jax.Array) -> jax.Array:
    """BF16: ``[n, 2] uint8 -> [n] f32``; bf16 is the top half of an f32."""
    return lax.bitcast_convert_type(le_uint(b) << 16, F32)


def _per_code(x: jax.Array, codes: jax.Array) -> jax.Array:
    """Per-sub-block values ``[n, groups]`` broadcastable onto ``codes`` (rows of 32).

    ``[n, 32]`` codes have one sub-block (``[n, 1]`` as is); ``[n, 8, 32]`` codes have
    one per row (``[n, 8, 1]``) or one per half row, repeated to ``[n, 8, 32]``.
    """
    if codes.ndim == 2:
        return x
    if x.shape[1] == codes.shape[1]:
        return x[..., None]
    per_group = codes.shape[1] * codes.shape[2] // x.shape[1]  # elements per sub-block
    return jnp.repeat(x, per_group, axis=-1).reshape(codes.shape)


def _multiply_out(fields: Fields) -> jax.Array:
    """Decoded blocks as their values ``scales · codes - mins``: ``[n, ..., 32] f32``."""
    values = _per_code(fields.scales, fields.codes) * fields.codes.astype(F32)
    if fields.mins is None:
        return values
    return values - _per_code(fields.mins, fields.codes)


_FLOAT_KERNELS: dict[QT, Callable[[jax.Array], jax.Array]] = {
    QT.F32: _f32,
    QT.F16: _f16,
    QT.BF16: _bf16,
}

SUPPORTED_TYPES: frozenset[QT] = frozenset(_FLOAT_KERNELS) | frozenset(BLOCK_TYPES)
"""The ggml types :func:`dequantize` handles."""


@functools.partial(jax.jit, static_argnames=("qtype", "dtype"))
def _decode(raw: jax.Array, qtype: QT, dtype: np.dtype) -> jax.Array:
    """``[n_bytes] uint8 -> [n_blocks, ..., 32] dtype`` (flat for float types); f32 math, one cast."""
    blocks = raw.reshape(-1, GGML_QUANT_SIZES[qtype][1])
    if qtype in BLOCK_TYPES:
        return _multiply_out(BLOCK_TYPES[qtype].decode(blocks)).astype(dtype)
    return _FLOAT_KERNELS[qtype](blocks).astype(dtype)


@functools.partial(jax.jit, static_argnames="shape", donate_argnums=0)
def _reshape_in_place(values: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Give decoded values their tensor shape, reusing (donating) their buffer: no copy.

    Kept out of :func:`_decode` on purpose: inside it, XLA:CPU would fuse the
    reshape into the decoding loop and iterate over the tensor's shape, redoing
    the per-block scale math for every element (measured up to 20x slower).
    """
    return values.reshape(shape)


def _supported_names() -> str:
    """The supported type names, sorted, for error messages."""
    return ", ".join(t.name for t in sorted(SUPPORTED_TYPES))


def dequantize(
    raw: np.ndarray | jax.Array,
    qtype: QT | int,
    shape: tuple[int, ...],
    dtype=jnp.float32,
    *,
    name: str | None = None,
    where: object = None,
) -> jax.Array:
    """Decode one tensor's raw GGUF bytes into a ``shape`` array of ``dtype`` on the default device.

    ``raw`` is the tensor's bytes (uint8, any shape, flattened here); ``shape`` is in
    numpy order, its last axis being ggml's ne[0], along which blocks run. The math
    is done in f32 and cast to ``dtype`` once at the end. ``name`` and ``where`` (the
    file) only label errors.

    Raises :class:`UnsupportedError` for a ggml type without a kernel and
    :class:`GGUFFormatError` when the byte count does not fit ``shape`` and the type.
    """
    label = f"tensor {name!r}" if name is not None else "tensor"
    if where is not None:
        label = f"{where}: {label}"
    try:
        qtype = QT(qtype)
    except ValueError:
        raise UnsupportedError(
            f"{label}: unknown ggml type id {qtype}; supported types: {_supported_names()}"
        ) from None
    if qtype not in SUPPORTED_TYPES:
        raise UnsupportedError(
            f"{label}: ggml type {qtype.name} cannot be dequantized; "
            f"supported types: {_supported_names()}. Use a GGUF quantized to one of them "
            "(llama.cpp's llama-quantize converts between types)."
        )
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{label}: output dtype must be floating, got {dtype}")

    shape = tuple(int(s) for s in shape)
    block_elems, type_size = GGML_QUANT_SIZES[qtype]
    row = shape[-1] if shape else 1
    if row % block_elems:
        raise GGUFFormatError(
            f"{label}: {qtype.name} rows must be a multiple of {block_elems} elements, "
            f"but shape {shape} has rows of {row}"
        )
    expected = math.prod(shape) // block_elems * type_size
    if isinstance(raw, jax.Array):
        if raw.dtype != jnp.uint8:
            raise TypeError(f"{label}: raw bytes must be uint8, got {raw.dtype}")
    else:
        raw = np.ascontiguousarray(raw).view(np.uint8)
    if raw.size != expected:
        raise GGUFFormatError(
            f"{label}: {qtype.name} shape {shape} needs {expected} bytes "
            f"({block_elems} elements per {type_size}-byte block), got {raw.size}"
        )
    values = _decode(raw.reshape(-1), qtype=qtype, dtype=dtype)
    return values if values.shape == shape else _reshape_in_place(values, shape=shape)
