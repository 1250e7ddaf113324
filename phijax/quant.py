"""QuantArray: a weight kept as its GGUF blocks' integers and block scales.

``values [rows, cols]`` int8 are the quant codes with their zero point removed
(or IQ4 levels); ``scales`` and ``mins`` ``[rows, cols // block]`` f32 hold each
sub-block's ``d · scale`` and ``dmin · min``; the weight is
``scales · values - mins``. That is the same product-then-subtract as
ggml's own formulas, and every product is exact in f32 (see
:mod:`phijax.gguf.dequant`), so decoding a QuantArray is bit-identical to
dequantizing the file: a lossless re-layout, at most 1.25 bytes per weight
(int8 + f32 scale and min per 32), not a requantization. Codes of 4 bits with no
zero point (Q4_K, Q4_1: 0..15) stay two per byte in the file's own order (``nibbles``
= g: in each group of g codes, byte j holds code j in its low half and code j + g/2 in
its high half), so the load copies them as they are: about 0.75 bytes per weight. Codes of 5
bits (Q5_K, Q5_1: 0..31) keep their low 4 bits the same way, and their fifth bits as a bit plane
(``high``): about 0.875 bytes per weight instead of 1.25.

Where the CPU kernel multiplies them, the k-quants also keep their scales as the file
stores them (``units``): 6-bit (Q6_K: 8-bit) integer scale and min codes per sub-block and
one f16 ``d`` (and ``dmin``) per super-block of 256, as the file stores them: about 0.08
instead of 0.25 bytes per weight; the products ``d · scale`` are the same f32 values. The int8-activation path also
stores Q6_K's 6-bit codes as nibbles plus two high-bit planes with a zero point of 32
(``zero``): 0.75 bytes per code instead of 1.

A QuantArray is a pytree: it flows through ``jit``, ``scan`` and sharding like
an array, and :func:`phijax.model.layers.linear` decodes it inside the compiled
step (on GPU/TPU XLA fuses the decode into the matmul).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
from gguf import GGMLQuantizationType as QT

F32_INTERLEAVED = frozenset({QT.Q4_K, QT.Q5_K})
"""The types whose :func:`interleaved` order the CPU kernel's f32 path reads faster than their
row order on every build that interleaves (``f32_interleaved.h``; it reads Q6_K's 6-bit codes
too, which :attr:`phijax.backend.Backend.f32_interleaved` adds where measured)."""


@jax.tree_util.register_dataclass
@dataclass
class QuantArray:
    """``values`` int8 ``[..., rows, cols]`` (uint8 ``[..., rows, cols // 2]`` when ``nibbles``,
    the packing group, is not 0); ``scales``, ``mins`` f32 ``[..., rows, cols // block]``
    (``mins`` may be ``None``); ``high``: ``None``, or uint8 ``[..., rows, cols // 8 · planes]``
    with packed codes: in row order, bit i of byte b is the fifth bit of code 8b + i;
    interleaved, each group's 64 bytes hold its steps' bit planes (``_interleaved_planes``);
    leading axes (a layer stack) are allowed."""

    values: jax.Array
    scales: jax.Array
    mins: jax.Array | None = None
    nibbles: int = field(default=0, metadata={"static": True})
    activation_block: int = field(default=32, metadata={"static": True})
    """The block llama.cpp rounds activations in for this weight's type (256 for k-quants,
    32 for the others): :mod:`phijax.int8`'s, when activations are int8."""
    high: jax.Array | None = None
    interleave: int = field(default=0, metadata={"static": True})
    """0: codes in row order. S (16 or 32, the sub-block): the CPU kernel's int8-activation
    order (:func:`phijax.quant.interleaved`): in each group of 16 sub-blocks, step t
    holds codes 4t..4t+3 of every sub-block, so one integer accumulator per sub-block sums
    the whole sub-block before its scale is applied."""
    units: jax.Array | None = None
    """``None``: ``scales`` and ``mins`` are f32. Else the k-quants' two levels (Q4_K,
    Q5_K, Q6_K): ``scales`` and ``mins`` hold integer codes (uint8; Q6_K's scales int8),
    and ``units`` f16 ``[..., rows, cols // 256, k]`` each super-block's ``d`` (and, k = 2,
    ``dmin``) as the file stores them: :meth:`scale_values` is ``d · scales`` in f32."""
    zero: int = field(default=0, metadata={"static": True})
    """What the stored (unsigned) codes are offset by: 32 for Q6_K's 6-bit codes kept as
    nibbles and two high-bit planes (``interleaved(q, code_bits=6)``), else 0."""

    @property
    def packing(self) -> tuple[int, int]:
        """How the codes are stored: (``nibbles``, how many high-bit planes: 0, 1 (fifth
        bits) or 2 (bits 4 and 5))."""
        return self.nibbles, self.planes

    @property
    def planes(self) -> int:
        """High-bit planes beside nibbles: ``high`` holds 8 bytes of each per 64 codes."""
        return 0 if self.high is None else self.high.shape[-1] * 8 // self.shape[-1]

    @property
    def shape(self) -> tuple[int, ...]:
        """The weight's shape (``cols`` counts every code, packed or not)."""
        *lead, cols = self.values.shape
        return (*lead, cols * 2 if self.nibbles else cols)

    @property
    def ndim(self) -> int:
        return self.values.ndim

    @property
    def block(self) -> int:
        """Elements per scale along a row."""
        return self.shape[-1] // self.scales.shape[-1]

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes for x in jax.tree.leaves(self))

    def __getitem__(self, index) -> QuantArray:
        """Index leading axes (rows, or layers of a stack) of every part alike."""
        return jax.tree.map(lambda x: x[index], self)

    def take(self, rows: jax.Array) -> QuantArray:
        """Rows ``rows [...]`` (an embedding lookup without decoding the whole table)."""
        return jax.tree.map(lambda x: jnp.take(x, rows, axis=0), self)

    def codes(self) -> jax.Array:
        """The int8 codes ``[..., rows, cols]`` in row order (unpacked from nibbles, their
        fifth bits merged, the ``interleave`` order undone)."""
        *lead, cols = self.shape
        stored = self.values
        if self.nibbles:  # two codes per byte: byte j of a group of g holds j and j + g/2
            # interleaved, a group is 128 codes: steps 2u (low halves) and 2u + 1 (high)
            g = 128 if self.interleave else self.nibbles
            v = self.values.reshape(*lead, cols // g, 1, g // 2)
            stored = jnp.concatenate([v & 15, v >> 4], axis=-2).reshape(*lead, cols)
            if self.high is not None and self.interleave:  # bits 4 (and 5): _interleaved_planes
                groups = cols // (16 * self.interleave)  # of 16 sub-blocks, 64 plane bytes each
                planes = self.high.reshape(*lead, groups, 1, 64)
                shifts = jnp.arange(8, dtype=jnp.uint8)[:, None]
                bits = ((planes >> shifts) & 1).reshape(*lead, groups, -1, self.planes, 64)
                for p in range(self.planes):
                    stored = stored | (bits[..., p, :].reshape(*lead, cols) << (4 + p))
            elif self.high is not None:  # fifth bits, in the same order as the codes
                bits = jnp.unpackbits(
                    self.high.reshape(*lead, cols // 8, 1), axis=-1, bitorder="little"
                )
                stored = stored | (bits.reshape(*lead, cols) << 4)
        if self.interleave:  # steps t of 64 codes, lane l, byte j: code l·S + 4t + j
            s = self.interleave
            steps = stored.reshape(*lead, cols // (16 * s), s // 4, 16, 4)
            stored = steps.swapaxes(-3, -2).reshape(*lead, cols)
        return (stored.astype(jnp.int8) - self.zero).astype(jnp.int8)

    def unpacked(self) -> QuantArray:
        """The same weight with one int8 code per byte."""
        return dataclasses.replace(
            self, values=self.codes(), nibbles=0, high=None, interleave=0, zero=0
        )

    def scale_values(self) -> jax.Array:
        """Each sub-block's scale, f32 ``[..., rows, cols // block]``."""
        return self._times_unit(self.scales, 0)

    def min_values(self) -> jax.Array | None:
        """Each sub-block's min, f32 ``[..., rows, cols // block]``, or ``None``."""
        return None if self.mins is None else self._times_unit(self.mins, 1)

    def _times_unit(self, codes: jax.Array, k: int) -> jax.Array:
        if self.units is None:
            return codes
        *lead, subs = codes.shape
        supers = self.units.shape[-2]
        per = codes.reshape(*lead, supers, subs // supers).astype(jnp.float32)
        unit = self.units[..., k : k + 1].astype(jnp.float32)  # f16 → f32 is exact
        return (unit * per).reshape(*lead, subs)

    def one_level(self) -> QuantArray:
        """The same weight with f32 ``scales`` and ``mins`` (``units`` folded in)."""
        if self.units is None:
            return self
        return dataclasses.replace(
            self, scales=self.scale_values(), mins=self.min_values(), units=None
        )

    def dequantize(self, dtype=jnp.float32) -> jax.Array:
        """The weight ``[..., rows, cols]``: ``scales · values - mins`` in f32, cast once."""
        *lead, cols = self.shape
        scales, mins = self.scale_values(), self.min_values()
        groups = scales.shape[-1]
        q = self.codes().reshape(*lead, groups, cols // groups).astype(jnp.float32)
        w = scales[..., None] * q
        if mins is not None:
            w = w - mins[..., None]
        return w.reshape(*lead, cols).astype(dtype)


def can_interleave(q: QuantArray) -> bool:
    """Whether ``q`` can take the CPU kernel's int8-activation order: one matrix of a k-quant
    (activations rounded per 256) with sub-blocks of 16 or 32 and whole groups of 16 of them,
    codes one per byte or nibbles from 64-code groups (Q4_K, Q5_K)."""
    return (
        not q.interleave
        and q.ndim == 2
        and q.activation_block == 256
        and q.block in (16, 32)
        and q.shape[-1] % (16 * q.block) == 0
        and q.nibbles in (0, 64)
    )


@functools.partial(jax.jit, static_argnames="code_bits")
def interleaved(q: QuantArray, code_bits: int = 8) -> QuantArray:
    """``q`` in the CPU kernel's int8-activation order (``QuantArray.interleave``; the same
    weight: ``codes()`` gives the row order back), for a ``q`` that :func:`can_interleave`.

    ``code_bits=6``: ``q``'s int8 codes lie in -32..31 (Q6_K's), and are stored as 4-bit
    nibbles plus two high-bit planes with zero point 32: 0.75 bytes per code instead of 1."""
    *lead, cols = q.shape
    s = q.block
    groups = cols // (16 * s)
    six = code_bits == 6 and not q.nibbles
    zero = 32 if six else 0  # q is in row order, so its codes have no offset yet
    lanes = (q.codes() + zero).reshape(*lead, groups, 16, s // 4, 4)
    steps = lanes.swapaxes(-3, -2).reshape(*lead, groups, s // 4, 64)
    high = None
    if q.nibbles or six:
        pairs = steps.astype(jnp.uint8).reshape(*lead, groups, s // 8, 2, 64)
        values = ((pairs[..., 0, :] & 15) | (pairs[..., 1, :] & 15) << 4).reshape(*lead, cols // 2)
        planes = 2 if six else q.planes
        if planes:
            high = _interleaved_planes(steps.astype(jnp.uint8), planes).reshape(
                *lead, cols // 8 * planes
            )
    else:
        values = steps.reshape(*lead, cols)
    nibbles = 64 if six else q.nibbles
    return dataclasses.replace(
        q, values=values, high=high, interleave=s, nibbles=nibbles, zero=zero
    )


def _interleaved_planes(steps: jax.Array, planes: int) -> jax.Array:
    """The high bits of interleaved codes ``steps [..., groups, steps, 64]`` (uint8, 4
    plus ``planes`` bits), 64 bytes per group: bit ``t · planes + p`` of byte ``i`` is bit
    ``4 + p`` of code ``i`` of step ``t`` (steps x planes = 8: Q5_K's 8 steps of one plane,
    Q6_K's 4 of two). One vector load per group serves all its steps, and a step's bits
    come out by a mask and a shift (ggml's ``qh`` in Q5_K and Q6_K works the same way),
    where bits in code order needed a shuffle and a compare per vector of codes."""
    *_, steps_, width = steps.shape
    assert steps_ * planes == 8 and width == 64, (steps_, planes, width)
    bits = (steps[..., None, :] >> (4 + jnp.arange(planes, dtype=jnp.uint8)[:, None])) & 1
    weights = (jnp.uint8(1) << jnp.arange(8, dtype=jnp.uint8)).reshape(steps_, planes, 1)
    return (bits * weights).sum(axis=(-3, -2), dtype=jnp.uint8)


def dense(w: jax.Array | QuantArray, dtype) -> jax.Array:
    """``w`` as a dense array of ``dtype`` (decoded if it is a QuantArray)."""
    return w.dequantize(dtype) if isinstance(w, QuantArray) else w


def at_layer(w: jax.Array | QuantArray, layer: int | jax.Array) -> jax.Array | QuantArray:
    """Layer ``layer`` of a stacked weight ``w [layers, ...]`` (a dynamic index when traced)."""
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, layer, keepdims=False), w)


def layer_view(w: jax.Array | QuantArray) -> jax.ShapeDtypeStruct | QuantArray:
    """The shapes and dtypes of one layer of a stacked weight ``w [layers, ...]`` (no arrays:
    for checks that read only those, such as :func:`phijax.kernels.fits`)."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), w)
