"""GGUF blocks → :class:`~phijax.quant.QuantArray`, on the device, without requantizing.

Each quantized ggml type is split into what its formula multiplies: integer
codes with the zero point removed (int8; Q4_K and Q4_1 codes, 0..15, stay the file's
own bytes, two per byte: :data:`NIBBLES`), and per sub-block ``d · scale`` and
``dmin · min`` (f32). The formulas and bit fields are those of
:mod:`phijax.gguf.dequant` (same helpers), so ``QuantArray.dequantize`` is
bit-identical to :func:`~phijax.gguf.dequant.dequantize` (tested against
``gguf.quants``). Float types (F32, F16, BF16) have nothing to keep packed.

Sub-blocks: 32 elements for the legacy types, Q4_K, Q5_K and the IQ4 types;
16 for Q2_K, Q3_K and Q6_K. :func:`to_layout` brings parts of a fused
tensor (or of a layer stack) to one sub-block size by repeating scales, which
is exact too.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT
from jax import lax

from phijax.errors import GGUFFormatError
from phijax.gguf.dequant import (
    _F32,
    _IQ4_LEVELS,
    _f16_at,
    _high_bits_32,
    _k_scales_mins,
    _le_uint,
    _nibbles,
    _split_bits,
)
from phijax.quant import QuantArray

Parts = tuple[jax.Array, jax.Array, jax.Array | None]  # codes [n, elems], scales, mins [n, groups]


def _int8(q: jax.Array, offset: int = 0) -> jax.Array:
    return (q - offset).reshape(q.shape[0], -1).astype(jnp.int8)


def _q4_0(b) -> Parts:
    return _int8(_nibbles(b[:, 2:]), 8), _f16_at(b, 0), None


def _q4_1(b) -> Parts:  # codes as stored: groups of 32, byte j holds codes j and j + 16
    return b[:, 4:], _f16_at(b, 0), -_f16_at(b, 2)


def _q5_0(b) -> Parts:
    return _int8(_nibbles(b[:, 6:]) | (_high_bits_32(b[:, 2:6]) << 4), 16), _f16_at(b, 0), None


def _q5_1(b) -> Parts:
    q = _nibbles(b[:, 8:]) | (_high_bits_32(b[:, 4:8]) << 4)
    return _int8(q), _f16_at(b, 0), -_f16_at(b, 2)


def _q8_0(b) -> Parts:
    return lax.bitcast_convert_type(b[:, 2:], jnp.int8), _f16_at(b, 0), None


def _q2_k(b) -> Parts:
    n = b.shape[0]
    packed = b[:, :16].astype(jnp.int32)
    q = _split_bits(b[:, 16:80].reshape(n, 2, 32), 2)
    scales = _f16_at(b, 80) * (packed & 0x0F).astype(_F32)
    return _int8(q), scales, _f16_at(b, 82) * (packed >> 4).astype(_F32)


def _q3_k(b) -> Parts:
    n = b.shape[0]
    low = _split_bits(b[:, 96:104], 4).reshape(n, 16)
    high = _split_bits(b[:, 104:108], 2).reshape(n, 16)
    scales = _f16_at(b, 108) * ((low | (high << 4)) - 32).astype(_F32)
    q = _split_bits(b[:, 32:96].reshape(n, 2, 32), 2).reshape(n, 8, 32)
    return _int8(q | (_split_bits(b[:, :32], 1) << 2), 4), scales, None


def _k4_parts(b, q) -> Parts:
    scales, mins = _k_scales_mins(b[:, 4:16])
    return q, _f16_at(b, 0) * scales, _f16_at(b, 2) * mins


def _q4_k(b) -> Parts:  # codes as stored: groups of 64, byte j holds codes j and j + 32
    return _k4_parts(b, b[:, 16:])


def _q5_k(b) -> Parts:
    n = b.shape[0]
    q_low = _split_bits(b[:, 48:].reshape(n, 4, 32), 4).reshape(n, 8, 32)
    return _k4_parts(b, _int8(q_low | (_split_bits(b[:, 16:48], 1) << 4)))


def _q6_k(b) -> Parts:
    n = b.shape[0]
    q_low = _split_bits(b[:, :128].reshape(n, 2, 64), 4).reshape(n, 8, 32)
    q_high = _split_bits(b[:, 128:192].reshape(n, 2, 32), 2).reshape(n, 8, 32)
    scales = lax.bitcast_convert_type(b[:, 192:208], jnp.int8).astype(_F32)
    return _int8(q_low | (q_high << 4), 32), _f16_at(b, 208) * scales, None


def _iq4(codes: jax.Array) -> jax.Array:
    return jnp.asarray(_IQ4_LEVELS, jnp.int8)[codes].reshape(codes.shape[0], -1)


def _iq4_nl(b) -> Parts:
    return _iq4(_split_bits(b[:, 2:], 4)), _f16_at(b, 0), None


def _iq4_xs(b) -> Parts:
    n = b.shape[0]
    scales_low = _split_bits(b[:, 4:8], 4).transpose(0, 2, 1).reshape(n, 8)
    shifts = jnp.arange(0, 16, 2, dtype=jnp.uint32)
    scales_high = ((_le_uint(b[:, 2:4])[:, None] >> shifts) & 3).astype(jnp.int32)
    scales = _f16_at(b, 0) * ((scales_low | (scales_high << 4)) - 32).astype(_F32)
    return _iq4(_split_bits(b[:, 8:].reshape(n, 8, 16), 4)), scales, None


_PARTS: dict[QT, Callable[[jax.Array], Parts]] = {
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

QUANTIZED_TYPES: frozenset[QT] = frozenset(_PARTS)
"""The ggml types kept packed by ``quantized=True`` (float types load as arrays)."""

NIBBLES: dict[QT, int] = {QT.Q4_1: 32, QT.Q4_K: 64}
"""Types whose codes (0..15, no zero point) stay two per byte as the file stores them, and
their packing group (``QuantArray.nibbles``): their parts above return the raw bytes."""


@functools.partial(jax.jit, static_argnames=("qtype", "shape"))
def _relayout(raw: jax.Array, qtype: QT, shape: tuple[int, ...]) -> QuantArray:
    type_size = GGML_QUANT_SIZES[qtype][1]
    q, scales, mins = _PARTS[qtype](raw.reshape(-1, type_size))
    rows = int(np.prod(shape[:-1]))
    groups_per_row = shape[-1] * scales.shape[1] // GGML_QUANT_SIZES[qtype][0]

    def per_row(x):
        return x.reshape(rows, groups_per_row)

    nibbles = NIBBLES.get(qtype, 0)
    return QuantArray(
        q.reshape(*shape[:-1], shape[-1] // 2 if nibbles else shape[-1]),
        per_row(scales).reshape(*shape[:-1], groups_per_row),
        None if mins is None else per_row(mins).reshape(*shape[:-1], groups_per_row),
        nibbles,
    )


def relayout(
    raw: np.ndarray | jax.Array, qtype: QT, shape: Sequence[int], *, name: str = ""
) -> QuantArray:
    """One quantized tensor's raw bytes → a :class:`QuantArray` of ``shape`` (numpy order)."""
    shape = tuple(int(s) for s in shape)
    block, type_size = GGML_QUANT_SIZES[qtype]
    if qtype not in QUANTIZED_TYPES or shape[-1] % block:
        raise GGUFFormatError(
            f"tensor {name!r}: {QT(qtype).name} shape {list(shape)} cannot stay packed."
        )
    expected = int(np.prod(shape)) // block * type_size
    raw = jnp.asarray(raw).reshape(-1)
    if raw.size != expected:
        raise GGUFFormatError(
            f"tensor {name!r}: {QT(qtype).name} shape {list(shape)} needs {expected} bytes, got {raw.size}"
        )
    return _relayout(raw, qtype=QT(qtype), shape=shape)


# Sub-block size (elements per scale) and whether a type has mins, as laid out above.
_LAYOUT = {t: (32, False) for t in (QT.Q4_0, QT.Q5_0, QT.Q8_0, QT.IQ4_NL, QT.IQ4_XS)}
_LAYOUT |= {QT.Q4_1: (32, True), QT.Q5_1: (32, True), QT.Q4_K: (32, True), QT.Q5_K: (32, True)}
_LAYOUT |= {QT.Q2_K: (16, True), QT.Q3_K: (16, False), QT.Q6_K: (16, False)}


def common_layout(qtypes: Iterable[QT]) -> tuple[int, bool, int]:
    """One (sub-block, has mins, nibbles) that tensors of all ``qtypes`` can be brought to
    exactly."""
    qtypes = [QT(t) for t in qtypes]
    layouts = [_LAYOUT[t] for t in qtypes]
    return (
        min(b for b, _ in layouts),
        any(m for _, m in layouts),
        _shared(NIBBLES.get(t, 0) for t in qtypes),
    )


def _shared(groups: Iterable[int]) -> int:
    """The packing group that every part has, else 0 (unpack them all)."""
    groups = set(groups)
    return groups.pop() if len(groups) == 1 else 0


def to_layout(q: QuantArray, block: int, with_mins: bool, nibbles: int) -> QuantArray:
    """``q`` with scales per ``block`` elements (repeated: exact), mins present if asked
    (zeros: exact), and codes unpacked unless packed in groups of ``nibbles``."""
    if q.nibbles != nibbles:
        q = q.unpacked()
    r = q.block // block
    scales = jnp.repeat(q.scales, r, axis=-1) if r > 1 else q.scales
    mins = q.mins
    if mins is None and with_mins:
        mins = jnp.zeros_like(q.scales)
    if mins is not None and r > 1:
        mins = jnp.repeat(mins, r, axis=-1)
    return dataclasses.replace(q, scales=scales, mins=mins)


def concatenate(parts: Sequence[QuantArray], axis: int = 0) -> QuantArray:
    """Rows of several QuantArrays as one (fused q|k|v or gate|up of any types)."""
    block = min(p.block for p in parts)
    with_mins = any(p.mins is not None for p in parts)
    parts = [to_layout(p, block, with_mins, _shared(p.nibbles for p in parts)) for p in parts]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=axis), *parts)
