"""Bit-exact dequantization of raw GGUF tensor bytes, on device, in JAX.

A GGUF tensor is stored as a flat run of fixed-size blocks along ggml's ne[0]
(numpy's last axis). Each ggml type has a small pure kernel
``[n_blocks, type_size] uint8 -> f32`` built only from integer shifts/masks,
slices, reshapes and f32 arithmetic, so the same code runs under ``jit`` on CPU,
GPU and TPU with no float64 and no host callbacks. :func:`dequantize` validates
the input, runs the kernel and gives the result the tensor's shape.

The results are bit-identical to ``gguf.quants.dequantize`` (the reference the
tests compare against). Every float product a kernel forms is exact in f32: an
f16 scale has at most 11 significant bits and the integers it is multiplied by
(sub-block scale, quant or IQ4 level) add at most 12 more (worst cases Q6_K and
IQ4_XS, 7 + 5), within f32's 24; nothing overflows or goes subnormal. So the
order of the products does not matter, and the only rounding step is the final
``scaled - min`` (or ``+ min``) of the types with a minimum: since the product
before it is exact, it rounds the same whether or not the compiler contracts the
pair into an FMA.

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

_F32 = jnp.float32

# The 16 non-uniform levels shared by IQ4_NL and IQ4_XS (ggml's kvalues_iq4nl).
_IQ4_LEVELS = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


# ---------------------------------------------------------------------------
# Bit-field helpers
# ---------------------------------------------------------------------------


def _split_bits(x: jax.Array, width: int) -> jax.Array:
    """Unpack ``[..., k] uint8`` into ``[..., 8 // width, k] int32`` fields of ``width`` bits.

    Field ``j`` holds bits ``j*width .. (j+1)*width - 1`` of every byte, lowest first,
    which is the order in which ggml's k-quant layouts stack their bit planes.
    Shifted as uint8, widened after: measured fastest on XLA:CPU.
    """
    shifts = jnp.arange(0, 8, width, dtype=jnp.uint8)[:, None]
    return ((x[..., None, :] >> shifts) & jnp.uint8((1 << width) - 1)).astype(jnp.int32)


def _le_uint(x: jax.Array) -> jax.Array:
    """Little-endian ``[..., k] uint8`` (k <= 4) -> ``[...] uint32``.

    Assembled with shifts rather than a width-changing bitcast, whose byte order
    XLA leaves to the backend.
    """
    x = x.astype(jnp.uint32)
    out = x[..., 0]
    for i in range(1, x.shape[-1]):
        out = out | (x[..., i] << (8 * i))
    return out


def _f16_bits_to_f32(h: jax.Array) -> jax.Array:
    """uint32 holding IEEE half bit patterns -> f32, exact, NaN payloads kept bit for bit.

    Decoded with integer ops instead of ``convert``: XLA:CPU's f16->f32 convert
    quiets signalling NaNs, numpy's does not, and integer ops need no f16 support
    from the backend.
    """
    sign = (h & 0x8000) << 16
    exponent = (h >> 10) & 0x1F
    mantissa = h & 0x3FF
    normal = ((exponent + (127 - 15)) << 23) | (mantissa << 13)
    inf_nan = jnp.uint32(0x7F800000) | (mantissa << 13)
    # A subnormal half is mantissa * 2**-24: exact, and a normal f32 (so immune to FTZ/DAZ).
    subnormal = lax.bitcast_convert_type(mantissa.astype(_F32) * np.float32(2.0**-24), jnp.uint32)
    bits = jnp.where(exponent == 0, subnormal, jnp.where(exponent == 0x1F, inf_nan, normal))
    return lax.bitcast_convert_type(bits | sign, _F32)


def _f16_at(blocks: jax.Array, offset: int) -> jax.Array:
    """The f16 field at byte ``offset`` of each block: ``[n, type_size] uint8 -> [n, 1] f32``."""
    return _f16_bits_to_f32(_le_uint(blocks[:, offset : offset + 2]))[:, None]


def _nibbles(qs: jax.Array) -> jax.Array:
    """Legacy 32-element layout: ``[n, 16] uint8 -> [n, 32] int32``, all low nibbles then all high.

    A concatenate of two halves, each with fixed shifts: on XLA:CPU this
    vectorizes better than ``_split_bits`` plus a reshape.
    """
    q = qs.astype(jnp.int32)
    return jnp.concatenate([q & 0x0F, q >> 4], axis=-1)


def _high_bits_32(qh: jax.Array) -> jax.Array:
    """Q5_0/Q5_1 fifth bits: ``[n, 4] uint8`` (one little-endian uint32) -> ``[n, 32] int32``."""
    shifts = jnp.arange(32, dtype=jnp.uint32)
    return ((_le_uint(qh)[:, None] >> shifts) & 1).astype(jnp.int32)


def _k_scales_mins(s: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Q4_K/Q5_K packed 6-bit scales and mins: ``[n, 12] uint8 -> ([n, 8], [n, 8]) f32``.

    Bytes 0-3 and 4-7 hold scales and mins 0-3 in their low 6 bits and the top
    2 bits of scales and mins 4-7 in their high 2 bits; bytes 8-11 hold the low
    4 bits of scales 4-7 (low nibble) and mins 4-7 (high nibble).
    """
    sc_lo, mn_lo, tail = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    scales = jnp.concatenate([sc_lo & 0x3F, (tail & 0x0F) | ((sc_lo >> 2) & 0x30)], axis=-1)
    mins = jnp.concatenate([mn_lo & 0x3F, (tail >> 4) | ((mn_lo >> 2) & 0x30)], axis=-1)
    return scales.astype(_F32), mins.astype(_F32)


def _per_16(x: jax.Array) -> jax.Array:
    """Per-16-element values onto rows of 32: ``[n, 16] -> [n, 8, 32]``."""
    return jnp.repeat(x, 16, axis=-1).reshape(x.shape[0], 8, 32)


def _signed(q: jax.Array, offset: int) -> jax.Array:
    """Unsigned int32 quant codes minus their zero point, as f32 (exact: small integers)."""
    return (q - offset).astype(_F32)


# ---------------------------------------------------------------------------
# Per-type kernels: [n_blocks, type_size] uint8 -> [n_blocks, ..., 32] f32
# ---------------------------------------------------------------------------


def _f32(b: jax.Array) -> jax.Array:
    """F32: ``[n, 4] uint8 -> [n] f32``, a pure reinterpretation."""
    return lax.bitcast_convert_type(_le_uint(b), _F32)


def _f16(b: jax.Array) -> jax.Array:
    """F16: ``[n, 2] uint8 -> [n] f32``."""
    return _f16_bits_to_f32(_le_uint(b))


def _bf16(b: jax.Array) -> jax.Array:
    """BF16: ``[n, 2] uint8 -> [n] f32``; bf16 is the top half of an f32."""
    return lax.bitcast_convert_type(_le_uint(b) << 16, _F32)


def _q4_0(b: jax.Array) -> jax.Array:
    """Q4_0: ``[n, 18] -> [n, 32]``; f16 d, 16 bytes of nibbles; ``d * (q - 8)``."""
    return _f16_at(b, 0) * _signed(_nibbles(b[:, 2:]), 8)


def _q4_1(b: jax.Array) -> jax.Array:
    """Q4_1: ``[n, 20] -> [n, 32]``; f16 d, f16 m, 16 bytes of nibbles; ``d * q + m``."""
    return _f16_at(b, 0) * _nibbles(b[:, 4:]).astype(_F32) + _f16_at(b, 2)


def _q5_0(b: jax.Array) -> jax.Array:
    """Q5_0: ``[n, 22] -> [n, 32]``; f16 d, 32 fifth bits, nibbles; ``d * (q - 16)``."""
    q = _nibbles(b[:, 6:]) | (_high_bits_32(b[:, 2:6]) << 4)
    return _f16_at(b, 0) * _signed(q, 16)


def _q5_1(b: jax.Array) -> jax.Array:
    """Q5_1: ``[n, 24] -> [n, 32]``; f16 d, f16 m, 32 fifth bits, nibbles; ``d * q + m``."""
    q = _nibbles(b[:, 8:]) | (_high_bits_32(b[:, 4:8]) << 4)
    return _f16_at(b, 0) * q.astype(_F32) + _f16_at(b, 2)


def _q8_0(b: jax.Array) -> jax.Array:
    """Q8_0: ``[n, 34] -> [n, 32]``; f16 d, 32 int8; ``q * d``."""
    q = lax.bitcast_convert_type(b[:, 2:], jnp.int8)
    return q.astype(_F32) * _f16_at(b, 0)


def _q2_k(b: jax.Array) -> jax.Array:
    """Q2_K: ``[n, 84] -> [n, 8, 32]``; 16 bytes (scale | min << 4), 64 bytes of 2-bit q, f16 d, f16 dmin.

    Sixteen sub-blocks of 16: ``(d * scale) * q - dmin * min``.
    """
    n = b.shape[0]
    packed = b[:, :16].astype(jnp.int32)
    dl = _per_16(_f16_at(b, 80) * (packed & 0x0F).astype(_F32))
    ml = _per_16(_f16_at(b, 82) * (packed >> 4).astype(_F32))
    q = _split_bits(b[:, 16:80].reshape(n, 2, 32), 2).reshape(n, 8, 32)
    return dl * q.astype(_F32) - ml


def _q3_k(b: jax.Array) -> jax.Array:
    """Q3_K: ``[n, 110] -> [n, 8, 32]``; 32 bytes high-bit mask, 64 bytes of 2-bit q, 12 bytes of 6-bit scales, f16 d.

    A quant is its 2 low bits plus 4 if its mask bit is set, minus 4; a scale is
    4 low bits (bytes 0-7, nibbles) and 2 high bits (bytes 8-11), minus 32.
    Sixteen sub-blocks of 16: ``(d * scale) * q``.
    """
    n = b.shape[0]
    low = _split_bits(b[:, 96:104], 4).reshape(n, 16)
    high = _split_bits(b[:, 104:108], 2).reshape(n, 16)
    dl = _per_16(_f16_at(b, 108) * _signed(low | (high << 4), 32))
    q_low = _split_bits(b[:, 32:96].reshape(n, 2, 32), 2).reshape(n, 8, 32)
    mask = _split_bits(b[:, :32], 1)
    return dl * _signed(q_low | (mask << 2), 4)


def _q4_k(b: jax.Array) -> jax.Array:
    """Q4_K: ``[n, 144] -> [n, 8, 32]``; f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles.

    Eight sub-blocks of 32: ``(d * scale) * q - dmin * min``.
    """
    n = b.shape[0]
    scales, mins = _k_scales_mins(b[:, 4:16])
    q = _split_bits(b[:, 16:].reshape(n, 4, 32), 4).reshape(n, 8, 32)
    dl = (_f16_at(b, 0) * scales)[..., None]
    ml = (_f16_at(b, 2) * mins)[..., None]
    return dl * q.astype(_F32) - ml


def _q5_k(b: jax.Array) -> jax.Array:
    """Q5_K: ``[n, 176] -> [n, 8, 32]``; as Q4_K plus 32 bytes of fifth bits before the nibbles."""
    n = b.shape[0]
    scales, mins = _k_scales_mins(b[:, 4:16])
    q_low = _split_bits(b[:, 48:].reshape(n, 4, 32), 4).reshape(n, 8, 32)
    q = q_low | (_split_bits(b[:, 16:48], 1) << 4)
    dl = (_f16_at(b, 0) * scales)[..., None]
    ml = (_f16_at(b, 2) * mins)[..., None]
    return dl * q.astype(_F32) - ml


def _q6_k(b: jax.Array) -> jax.Array:
    """Q6_K: ``[n, 210] -> [n, 8, 32]``; 128 bytes low nibbles, 64 bytes 2-bit highs, 16 int8 scales, f16 d.

    Sixteen sub-blocks of 16: ``(d * scale) * (q - 32)``.
    """
    n = b.shape[0]
    q_low = _split_bits(b[:, :128].reshape(n, 2, 64), 4).reshape(n, 8, 32)
    q_high = _split_bits(b[:, 128:192].reshape(n, 2, 32), 2).reshape(n, 8, 32)
    scales = lax.bitcast_convert_type(b[:, 192:208], jnp.int8).astype(_F32)
    dl = _per_16(_f16_at(b, 208) * scales)
    return dl * _signed(q_low | (q_high << 4), 32)


def _iq4_levels(codes: jax.Array) -> jax.Array:
    """int32 4-bit IQ4 codes -> their f32 levels."""
    return jnp.asarray(_IQ4_LEVELS, dtype=_F32)[codes]


def _iq4_nl(b: jax.Array) -> jax.Array:
    """IQ4_NL: ``[n, 18] -> [n, 32]``; as Q4_0 but the nibbles index a non-uniform table; ``d * level``.

    Unpacked with ``_split_bits`` rather than ``_nibbles``: with the table lookup,
    the concatenate in ``_nibbles`` defeats vectorization on XLA:CPU (2.5x slower).
    """
    codes = _split_bits(b[:, 2:], 4).reshape(b.shape[0], 32)
    return _f16_at(b, 0) * _iq4_levels(codes)


def _iq4_xs(b: jax.Array) -> jax.Array:
    """IQ4_XS: ``[n, 136] -> [n, 8, 32]``; f16 d, uint16 of 2-bit scale highs, 4 bytes of scale nibbles, 128 bytes of codes.

    Eight sub-blocks of 32, each laid out like an IQ4_NL block: ``(d * (scale - 32)) * level``.
    """
    n = b.shape[0]
    scales_low = _split_bits(b[:, 4:8], 4).transpose(0, 2, 1).reshape(n, 8)
    shifts = jnp.arange(0, 16, 2, dtype=jnp.uint32)
    scales_high = ((_le_uint(b[:, 2:4])[:, None] >> shifts) & 3).astype(jnp.int32)
    dl = (_f16_at(b, 0) * _signed(scales_low | (scales_high << 4), 32))[..., None]
    codes = _split_bits(b[:, 8:].reshape(n, 8, 16), 4).reshape(n, 8, 32)
    return dl * _iq4_levels(codes)


_KERNELS: dict[QT, Callable[[jax.Array], jax.Array]] = {
    QT.F32: _f32,
    QT.F16: _f16,
    QT.BF16: _bf16,
    QT.Q4_0: _q4_0,
    QT.Q4_1: _q4_1,
    QT.Q5_0: _q5_0,
    QT.Q5_1: _q5_1,
    QT.Q8_0: _q8_0,
    QT.Q2_K: _q2_k,
    QT.Q3_K: _q3_k,
    QT.Q4_K: _q4_k,
    QT.Q5_K: _q5_k,
    QT.Q6_K: _q6_k,
    QT.IQ4_NL: _iq4_nl,
    QT.IQ4_XS: _iq4_xs,
}

SUPPORTED_TYPES: frozenset[QT] = frozenset(_KERNELS)
"""The ggml types :func:`dequantize` handles."""


@functools.partial(jax.jit, static_argnames=("qtype", "dtype"))
def _decode(raw: jax.Array, qtype: QT, dtype: np.dtype) -> jax.Array:
    """``[n_bytes] uint8 -> [n_blocks, ..., 32] dtype`` (flat for float types); f32 math, one cast."""
    type_size = GGML_QUANT_SIZES[qtype][1]
    return _KERNELS[qtype](raw.reshape(-1, type_size)).astype(dtype)


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
