"""GGUF blocks → :class:`~phijax.quant.QuantArray`, on the device, without requantizing.

Each quantized ggml type is split by its decoder in :mod:`phijax.gguf.blocks`
into what its formula multiplies: integer codes with the zero point removed, and
per sub-block ``d · scale`` and ``dmin · min`` (f32). Here they are kept apart:
codes as int8 (Q4_K and Q4_1 codes, 0..15, stay the file's own bytes, two per
byte: :data:`NIBBLES`; Q5_K and Q5_1 codes likewise, with their fifth bits as a bit plane),
scales and mins as f32 per row. The decoders are those
:func:`~phijax.gguf.dequant.dequantize` multiplies out, so ``QuantArray.dequantize``
is bit-identical to it (tested against ``gguf.quants``). Float types (F32, F16,
BF16) have nothing to keep packed.

Sub-blocks: 32 elements for the legacy types, Q4_K, Q5_K and the IQ4 types;
16 for Q2_K, Q3_K and Q6_K. :func:`to_layout` brings parts of a fused
tensor (or of a layer stack) to one sub-block size by repeating scales, which
is exact too.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT

from phijax.errors import GGUFFormatError
from phijax.gguf.blocks import BLOCK_TYPES
from phijax.quant import F32_INTERLEAVED, QuantArray, can_interleave, interleaved

QUANTIZED_TYPES: frozenset[QT] = frozenset(BLOCK_TYPES)
"""The ggml types kept packed by ``quantized=True`` (float types load as arrays)."""

NIBBLES: dict[QT, int] = {t: bt.nibbles for t, bt in BLOCK_TYPES.items() if bt.nibbles}
"""Types whose codes (0..15, or 0..31 with a fifth-bit plane; no zero point) stay two per
byte as the file stores them, and their packing group (``QuantArray.nibbles``)."""

Packing = tuple[int, int]
"""How codes are stored (``QuantArray.packing``): the nibble group (0: int8 codes) and
how many high-bit planes are present (a file's types have at most one: the fifth bits)."""
UNPACKED: Packing = (0, 0)


def interleaves(
    qtypes: Iterable[QT], activations: str | None, f32_types: frozenset[QT] = F32_INTERLEAVED
) -> bool:
    """Whether a matrix of parts of ``qtypes`` takes the CPU kernel's interleaved order when it
    multiplies ``activations`` (``None``: the kernel does not run; every order is row order):
    with int8 ones every k-quant, with f32 ones the types in ``f32_types``."""
    if activations is None:
        return False
    return activations == "int8" or all(QT(t) in f32_types for t in qtypes)


def code_bits(qtypes: Iterable[QT]) -> int:
    """The bits a weight's int8 codes need when interleaved (``interleaved(q, code_bits=)``):
    6 when every part is Q6_K (codes -32..31, stored as nibbles and two planes), else 8."""
    return 6 if all(QT(t) == QT.Q6_K for t in qtypes) else 8


@functools.partial(jax.jit, static_argnames=("qtype", "shape", "two_level", "code_bits"))
def _relayout(
    raw: jax.Array, qtype: QT, shape: tuple[int, ...], two_level: bool, code_bits: int
) -> QuantArray:
    """``[n_bytes] uint8`` → the decoded fields of its blocks, laid out along ``shape``'s rows
    (and interleaved with ``code_bits``, if not 0 and the weight can be)."""
    block_type = BLOCK_TYPES[qtype]
    fields = block_type.decode(raw.reshape(-1, GGML_QUANT_SIZES[qtype][1]))
    *lead, cols = shape
    high = None
    if block_type.nibbles:
        codes = fields.packed.reshape(*lead, cols // 2)
        if block_type.fifth_bit:
            fifth = (fields.codes.reshape(*lead, cols) >> 4).astype(jnp.uint8)
            high = jnp.packbits(fifth, axis=-1, bitorder="little")
    else:
        codes = fields.codes.reshape(*lead, cols).astype(jnp.int8)
    groups = (*lead, cols // block_type.sub_block)
    scales, mins, units = fields.scales, fields.mins, None
    if two_level and fields.two_level is not None:
        scales, mins, units = fields.two_level
        # f16 as the file stores them (the decoder's f32 came from f16: exact both ways)
        units = units.reshape(*lead, cols // GGML_QUANT_SIZES[qtype][0], units.shape[-1])
        units = units.astype(jnp.float16)
    q = QuantArray(
        codes,
        scales.reshape(groups),
        None if mins is None else mins.reshape(groups),
        block_type.nibbles,
        activation_block=GGML_QUANT_SIZES[qtype][0],
        high=high,
        units=units,
    )
    return interleaved(q, code_bits=code_bits) if code_bits and can_interleave(q) else q


def relayout(
    raw: np.ndarray | jax.Array,
    qtype: QT,
    shape: Sequence[int],
    *,
    name: str = "",
    two_level: bool = False,
    interleave: bool = False,
) -> QuantArray:
    """One quantized tensor's raw bytes → a :class:`QuantArray` of ``shape`` (numpy order).
    ``two_level``: keep a k-quant's integer scales and per-super-block units as the file
    stores them (``QuantArray.units``; the CPU kernel reads them in row order with f32
    activations, and in its int8 order).
    ``interleave``: a matrix that can take the int8 path's order
    (:func:`~phijax.quant.can_interleave`) gets it in the same program (Q6_K's codes as
    6 bits): no row-order copy is made first."""
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
    bits = code_bits([qtype]) if interleave else 0
    return _relayout(raw, qtype=QT(qtype), shape=shape, two_level=two_level, code_bits=bits)


def common_layout(qtypes: Iterable[QT]) -> tuple[int, bool, Packing]:
    """One (sub-block, has mins, packing) that tensors of all ``qtypes`` can be brought to
    exactly."""
    qtypes = [QT(t) for t in qtypes]
    return (
        min(BLOCK_TYPES[t].sub_block for t in qtypes),
        any(BLOCK_TYPES[t].has_mins for t in qtypes),
        _shared((BLOCK_TYPES[t].nibbles, int(BLOCK_TYPES[t].fifth_bit)) for t in qtypes),
    )


def _shared(packings: Iterable[Packing]) -> Packing:
    """The packing that every part has, else none (unpack them all)."""
    packings = set(packings)
    return packings.pop() if len(packings) == 1 else UNPACKED


def to_layout(q: QuantArray, block: int, with_mins: bool, packing: Packing) -> QuantArray:
    """``q`` with scales per ``block`` elements (repeated: exact), mins present if asked
    (zeros: exact), f32 scales, and codes unpacked unless stored as ``packing`` says."""
    q = q.one_level()
    if q.packing != packing:
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
    packing = _shared(p.packing for p in parts)
    activation_block = min(p.activation_block for p in parts)  # 32 unless all are k-quants
    parts = [
        dataclasses.replace(
            to_layout(p, block, with_mins, packing), activation_block=activation_block
        )
        for p in parts
    ]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=axis), *parts)
