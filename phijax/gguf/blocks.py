"""The quantized ggml block types, each decoded once into what its formula multiplies.

A quantized GGUF tensor is a flat run of fixed-size blocks along ggml's ne[0]
(numpy's last axis). Every type's formula has the same shape: an element is
``scale · code - min``, where ``code`` is an integer from the payload bits (its
zero point removed; for IQ4 a level from a fixed table) and ``scale`` and
``min`` are per sub-block f32 products such as ``d · scale`` and ``dmin · min``.
:data:`BLOCK_TYPES` holds, per type, its sub-block layout and the decoder that
splits ``[n_blocks, type_size] uint8`` into those :class:`Fields`.

Both consumers build on these decoders, so they cannot disagree about a bit
field: :mod:`phijax.gguf.dequant` multiplies the fields out into floats
(bit-exact against ``gguf.quants``), :mod:`phijax.gguf.relayout` keeps them
apart as a packed ``QuantArray``.

The decoders use only integer shifts/masks, slices, reshapes and f32
products, so they run under ``jit`` on any backend with no float64 and no host
callbacks. Codes come out as rows of 32 (``[n, 32]`` or ``[n, 8, 32]``), each
row from one run of consecutive payload bytes: the shape in which XLA:CPU
vectorizes the dequantization loop (see :mod:`phijax.gguf.dequant`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from gguf import GGMLQuantizationType as QT
from jax import lax

F32 = jnp.float32

IQ4_LEVELS = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
"""The 16 non-uniform levels shared by IQ4_NL and IQ4_XS (ggml's ``kvalues_iq4nl``)."""


class Fields(NamedTuple):
    """``n`` decoded blocks; each element is ``scales · codes - mins``.

    ``codes``: ``[n, 32]`` or ``[n, 8, 32]`` integers within int8's range, as int32
    (int8 for Q8_0; f32 for the IQ4 levels, see ``_iq4_levels``). ``scales``, ``mins``: ``[n, groups]``
    f32, one per sub-block of ``block_elems // groups`` consecutive elements; ``mins``
    is ``None`` for types without one. ``packed``: for the types whose codes (or their
    low 4 bits) have no zero point (:attr:`BlockType.nibbles`), the nibble payload bytes as
    stored, ``[n, block_elems // 2] uint8``; else ``None``.
    """

    codes: jax.Array
    scales: jax.Array
    mins: jax.Array | None = None
    packed: jax.Array | None = None
    two_level: TwoLevel | None = None


class TwoLevel(NamedTuple):
    """The k-quants' scales as stored, for the types that have them (Q4_K, Q5_K, Q6_K):
    ``Fields.scales == units[:, :1] · scale_codes`` and ``Fields.mins == units[:, 1:] ·
    min_codes``, the same f32 products. ``scale_codes``: ``[n, groups]`` uint8 (6 bits) or
    int8 (Q6_K); ``min_codes``: uint8 or ``None``; ``units``: ``[n, 2]`` f32 (d, dmin) or
    ``[n, 1]`` (d)."""

    scale_codes: jax.Array
    min_codes: jax.Array | None
    units: jax.Array


@dataclass(frozen=True)
class BlockType:
    """One quantized ggml type: its decoder and the layout of the :class:`Fields` it returns.

    ``sub_block``: elements per scale; ``has_mins``: whether ``mins`` is present;
    ``nibbles``: 0, or the packing group of ``packed`` (in each group of that many
    codes, byte j holds code j in its low half and code j + group/2 in its high half);
    ``fifth_bit``: whether codes are 5 bits, ``packed`` holding their low 4 (Q5_K, Q5_1).
    """

    decode: Callable[[jax.Array], Fields]
    sub_block: int
    has_mins: bool
    nibbles: int = 0
    fifth_bit: bool = False


# ---------------------------------------------------------------------------
# Bit fields
# ---------------------------------------------------------------------------


def split_bits(x: jax.Array, width: int) -> jax.Array:
    """Unpack ``[..., k] uint8`` into ``[..., 8 // width, k] int32`` fields of ``width`` bits.

    Field ``j`` holds bits ``j*width .. (j+1)*width - 1`` of every byte, lowest first,
    which is the order in which ggml's k-quant layouts stack their bit planes.
    Shifted as uint8, widened after: measured fastest on XLA:CPU.
    """
    shifts = jnp.arange(0, 8, width, dtype=jnp.uint8)[:, None]
    return ((x[..., None, :] >> shifts) & jnp.uint8((1 << width) - 1)).astype(jnp.int32)


def le_uint(x: jax.Array) -> jax.Array:
    """Little-endian ``[..., k] uint8`` (k <= 4) -> ``[...] uint32``.

    Assembled with shifts rather than a width-changing bitcast, whose byte order
    XLA leaves to the backend.
    """
    x = x.astype(jnp.uint32)
    out = x[..., 0]
    for i in range(1, x.shape[-1]):
        out = out | (x[..., i] << (8 * i))
    return out


def f16_bits_to_f32(h: jax.Array) -> jax.Array:
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
    subnormal = lax.bitcast_convert_type(mantissa.astype(F32) * np.float32(2.0**-24), jnp.uint32)
    bits = jnp.where(exponent == 0, subnormal, jnp.where(exponent == 0x1F, inf_nan, normal))
    return lax.bitcast_convert_type(bits | sign, F32)


def _f16_at(blocks: jax.Array, offset: int) -> jax.Array:
    """The f16 field at byte ``offset`` of each block: ``[n, type_size] uint8 -> [n, 1] f32``."""
    return f16_bits_to_f32(le_uint(blocks[:, offset : offset + 2]))[:, None]


def _nibbles(qs: jax.Array) -> jax.Array:
    """Legacy 32-element layout: ``[n, 16] uint8 -> [n, 32] int32``, all low nibbles then all high.

    A concatenate of two halves, each with fixed shifts: on XLA:CPU this
    vectorizes better than ``split_bits`` plus a reshape.
    """
    q = qs.astype(jnp.int32)
    return jnp.concatenate([q & 0x0F, q >> 4], axis=-1)


def _high_bits_32(qh: jax.Array) -> jax.Array:
    """Q5_0/Q5_1 fifth bits: ``[n, 4] uint8`` (one little-endian uint32) -> ``[n, 32] int32``."""
    shifts = jnp.arange(32, dtype=jnp.uint32)
    return ((le_uint(qh)[:, None] >> shifts) & 1).astype(jnp.int32)


def _k_scales_mins(b: jax.Array) -> TwoLevel:
    """Q4_K/Q5_K scales and mins: ``[n, type_size] -> `` 6-bit codes ``[n, 8]`` uint8 each and
    units ``[n, 2]`` (d, dmin); :func:`_products` gives ``d · scale`` and ``dmin · min``.

    f16 d and dmin at bytes 0 and 2, then 12 bytes of 6-bit scales and mins: bytes
    4-7 and 8-11 hold scales and mins 0-3 in their low 6 bits and the top 2 bits of
    scales and mins 4-7 in their high 2 bits; bytes 12-15 hold the low 4 bits of
    scales 4-7 (low nibble) and mins 4-7 (high nibble).
    """
    sc_lo, mn_lo, tail = b[:, 4:8], b[:, 8:12], b[:, 12:16]
    scales = jnp.concatenate([sc_lo & 0x3F, (tail & 0x0F) | ((sc_lo >> 2) & 0x30)], axis=-1)
    mins = jnp.concatenate([mn_lo & 0x3F, (tail >> 4) | ((mn_lo >> 2) & 0x30)], axis=-1)
    return TwoLevel(scales, mins, jnp.concatenate([_f16_at(b, 0), _f16_at(b, 2)], axis=-1))


def _products(parts: TwoLevel) -> tuple[jax.Array, jax.Array | None]:
    """A :class:`TwoLevel`'s f32 scales and mins (``None`` without min codes)."""
    scales = parts.units[:, :1] * parts.scale_codes.astype(F32)
    if parts.min_codes is None:
        return scales, None
    return scales, parts.units[:, 1:] * parts.min_codes.astype(F32)


def _iq4_levels(codes: jax.Array) -> jax.Array:
    """int32 4-bit IQ4 codes -> their levels, as f32 (exact).

    Looked up in an f32 table: an int8 table plus a convert to f32 makes the
    dequantization loop about 25% slower on XLA:CPU.
    """
    return jnp.asarray(IQ4_LEVELS, F32)[codes]


# ---------------------------------------------------------------------------
# Per-type decoders: [n_blocks, type_size] uint8 -> Fields
# ---------------------------------------------------------------------------


def _q4_0(b: jax.Array) -> Fields:
    """Q4_0 (18 bytes): f16 d, 16 bytes of nibbles; ``d · (q - 8)``."""
    return Fields(_nibbles(b[:, 2:]) - 8, _f16_at(b, 0))


def _q4_1(b: jax.Array) -> Fields:
    """Q4_1 (20 bytes): f16 d, f16 m, 16 bytes of nibbles; ``d · q + m``, so the min is ``-m``."""
    return Fields(_nibbles(b[:, 4:]), _f16_at(b, 0), -_f16_at(b, 2), b[:, 4:])


def _q5_0(b: jax.Array) -> Fields:
    """Q5_0 (22 bytes): f16 d, 32 fifth bits, nibbles; ``d · (q - 16)``."""
    return Fields((_nibbles(b[:, 6:]) | (_high_bits_32(b[:, 2:6]) << 4)) - 16, _f16_at(b, 0))


def _q5_1(b: jax.Array) -> Fields:
    """Q5_1 (24 bytes): f16 d, f16 m, 32 fifth bits, nibbles; ``d · q + m``."""
    q = _nibbles(b[:, 8:]) | (_high_bits_32(b[:, 4:8]) << 4)
    return Fields(q, _f16_at(b, 0), -_f16_at(b, 2), b[:, 8:])


def _q8_0(b: jax.Array) -> Fields:
    """Q8_0 (34 bytes): f16 d, 32 int8; ``d · q``."""
    return Fields(lax.bitcast_convert_type(b[:, 2:], jnp.int8), _f16_at(b, 0))


def _q2_k(b: jax.Array) -> Fields:
    """Q2_K (84 bytes): 16 bytes (scale | min << 4), 64 bytes of 2-bit q, f16 d, f16 dmin.

    Sixteen sub-blocks of 16: ``(d · scale) · q - dmin · min``.
    """
    n = b.shape[0]
    packed = b[:, :16].astype(jnp.int32)
    q = split_bits(b[:, 16:80].reshape(n, 2, 32), 2).reshape(n, 8, 32)
    scales = _f16_at(b, 80) * (packed & 0x0F).astype(F32)
    return Fields(q, scales, _f16_at(b, 82) * (packed >> 4).astype(F32))


def _q3_k(b: jax.Array) -> Fields:
    """Q3_K (110 bytes): 32 bytes high-bit mask, 64 bytes of 2-bit q, 12 bytes of 6-bit scales, f16 d.

    A code is its 2 low bits plus 4 if its mask bit is set, minus 4; a scale is
    4 low bits (bytes 0-7, nibbles) and 2 high bits (bytes 8-11), minus 32.
    Sixteen sub-blocks of 16: ``(d · scale) · q``.
    """
    n = b.shape[0]
    low = split_bits(b[:, 96:104], 4).reshape(n, 16)
    high = split_bits(b[:, 104:108], 2).reshape(n, 16)
    scales = _f16_at(b, 108) * ((low | (high << 4)) - 32).astype(F32)
    q_low = split_bits(b[:, 32:96].reshape(n, 2, 32), 2).reshape(n, 8, 32)
    return Fields((q_low | (split_bits(b[:, :32], 1) << 2)) - 4, scales)


def _q4_k(b: jax.Array) -> Fields:
    """Q4_K (144 bytes): f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles.

    Eight sub-blocks of 32: ``(d · scale) · q - dmin · min``.
    """
    n = b.shape[0]
    q = split_bits(b[:, 16:].reshape(n, 4, 32), 4).reshape(n, 8, 32)
    parts = _k_scales_mins(b)
    return Fields(q, *_products(parts), b[:, 16:], parts)


def _q5_k(b: jax.Array) -> Fields:
    """Q5_K (176 bytes): as Q4_K plus 32 bytes of fifth bits before the nibbles."""
    n = b.shape[0]
    q_low = split_bits(b[:, 48:].reshape(n, 4, 32), 4).reshape(n, 8, 32)
    parts = _k_scales_mins(b)
    return Fields(q_low | (split_bits(b[:, 16:48], 1) << 4), *_products(parts), b[:, 48:], parts)


def _q6_k(b: jax.Array) -> Fields:
    """Q6_K (210 bytes): 128 bytes low nibbles, 64 bytes 2-bit highs, 16 int8 scales, f16 d.

    Sixteen sub-blocks of 16: ``(d · scale) · (q - 32)``.
    """
    n = b.shape[0]
    q_low = split_bits(b[:, :128].reshape(n, 2, 64), 4).reshape(n, 8, 32)
    q_high = split_bits(b[:, 128:192].reshape(n, 2, 32), 2).reshape(n, 8, 32)
    parts = TwoLevel(lax.bitcast_convert_type(b[:, 192:208], jnp.int8), None, _f16_at(b, 208))
    return Fields((q_low | (q_high << 4)) - 32, _products(parts)[0], two_level=parts)


def _iq4_nl(b: jax.Array) -> Fields:
    """IQ4_NL (18 bytes): as Q4_0 but the nibbles index :data:`IQ4_LEVELS`; ``d · level``.

    Unpacked with ``split_bits`` rather than ``_nibbles``: with the table lookup,
    the concatenate in ``_nibbles`` defeats vectorization on XLA:CPU (2.5x slower).
    """
    return Fields(_iq4_levels(split_bits(b[:, 2:], 4).reshape(b.shape[0], 32)), _f16_at(b, 0))


def _iq4_xs(b: jax.Array) -> Fields:
    """IQ4_XS (136 bytes): f16 d, uint16 of 2-bit scale highs, 4 bytes of scale nibbles, 128 bytes of codes.

    Eight sub-blocks of 32, each laid out like an IQ4_NL block: ``(d · (scale - 32)) · level``.
    """
    n = b.shape[0]
    scales_low = split_bits(b[:, 4:8], 4).transpose(0, 2, 1).reshape(n, 8)
    shifts = jnp.arange(0, 16, 2, dtype=jnp.uint32)
    scales_high = ((le_uint(b[:, 2:4])[:, None] >> shifts) & 3).astype(jnp.int32)
    scales = _f16_at(b, 0) * ((scales_low | (scales_high << 4)) - 32).astype(F32)
    codes = split_bits(b[:, 8:].reshape(n, 8, 16), 4).reshape(n, 8, 32)
    return Fields(_iq4_levels(codes), scales)


BLOCK_TYPES: dict[QT, BlockType] = {
    QT.Q4_0: BlockType(_q4_0, 32, False),
    QT.Q4_1: BlockType(_q4_1, 32, True, nibbles=32),
    QT.Q5_0: BlockType(_q5_0, 32, False),
    QT.Q5_1: BlockType(_q5_1, 32, True, nibbles=32, fifth_bit=True),
    QT.Q8_0: BlockType(_q8_0, 32, False),
    QT.Q2_K: BlockType(_q2_k, 16, True),
    QT.Q3_K: BlockType(_q3_k, 16, False),
    QT.Q4_K: BlockType(_q4_k, 32, True, nibbles=64),
    QT.Q5_K: BlockType(_q5_k, 32, True, nibbles=64, fifth_bit=True),
    QT.Q6_K: BlockType(_q6_k, 16, False),
    QT.IQ4_NL: BlockType(_iq4_nl, 32, False),
    QT.IQ4_XS: BlockType(_iq4_xs, 32, False),
}
"""Every quantized ggml type phijax decodes, by type."""
