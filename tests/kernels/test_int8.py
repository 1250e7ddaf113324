"""int8 activations: llama.cpp's rounding of x (:mod:`phijax.int8`) and the kernel's integer
products (``int8_dot.h``), for every build this CPU runs and every quantized ggml type.

The rounding is checked against an independent numpy transcription of ggml's
``quantize_row_q8_K`` and ``quantize_row_q8_0`` (exact equality: the same f32 operations). The
kernel's products are checked against the exact (float64) product of the rounded activations
with the file's weights: the integer sums are exact, so what remains is f32 rounding when
each 4-code lane is scaled and the lanes are summed, at most ``cols · eps`` times the sum of
the magnitudes, where int8 codes count with their +128 offset (the kernel multiplies unsigned
codes and subtracts ``128 · scale · sum(q)`` after).
"""

from __future__ import annotations

import dataclasses

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT

from phijax import backend, int8, kernels
from phijax.errors import ConfigError, UnsupportedError
from phijax.gguf import relayout
from phijax.model.layers import linear
from phijax.quant import can_interleave, interleaved

from blocks import random_blocks

F32_EPS = float(np.finfo(np.float32).eps)
ROWS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 255, 256, 257)  # every tile height of 4 and of 8 rows
OUT = 19  # weight rows: chunks end mid-way


def ggml_round(x: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's row quantizers in numpy, one block at a time (codes, per-block scale)."""
    x = np.asarray(x, np.float32).reshape(-1, block)
    q = np.zeros(x.shape, np.int8)
    d = np.zeros(len(x), np.float32)
    for i, xb in enumerate(x):
        amax = np.float32(np.max(np.abs(xb)))
        if amax == 0:
            continue
        if block == 256:  # quantize_row_q8_K: the first value of largest magnitude maps to -127
            iscale = np.float32(-127.0) / xb[int(np.argmax(np.abs(xb)))]
            q[i] = np.minimum(127, np.rint(iscale * xb))
            d[i] = np.float32(1.0) / iscale
        else:  # quantize_row_q8_0: d kept as f16
            q[i] = np.rint(xb * (np.float32(127.0) / amax))
            d[i] = np.float16(amax / np.float32(127.0))
    return q.reshape(-1), d


@pytest.mark.parametrize("block", int8.BLOCKS)
def test_rounding_is_ggmls(block: int):
    rng = np.random.default_rng(block)
    x = rng.standard_normal((3, 4 * 256)).astype(np.float32) * rng.uniform(1e-3, 1e3, (3, 1))
    x[0, :block] = 0.0  # an all-zero block: codes and scale 0
    x[1, 7] = -x[1, :block].__abs__().max() * 2  # a negative maximum
    x[2, :16] = np.arange(16) - 7.5  # halves: ties to even
    q, d = int8.quantize(jnp.asarray(x), block)
    for row in range(3):
        want_q, want_d = ggml_round(x[row], block)
        np.testing.assert_array_equal(np.asarray(q[row]), want_q)
        np.testing.assert_array_equal(np.asarray(d[row]), want_d)
    back = np.asarray(int8.fake_quant(jnp.asarray(x), block))
    want = np.asarray(q, np.float32) * np.repeat(np.asarray(d), block, -1)
    np.testing.assert_array_equal(back, want)


def test_rounding_passes_derivatives_straight_through():
    x = jnp.asarray(np.random.default_rng(0).standard_normal(64), jnp.float32)
    g = jax.grad(lambda x: jnp.sum(int8.fake_quant(x, 32) * jnp.arange(64.0)))(x)
    np.testing.assert_array_equal(g, np.arange(64.0))


def file_weight(qtype: QT, cols: int, two_level: bool = False):
    raw = random_blocks(qtype, OUT * cols // GGML_QUANT_SIZES[qtype][0], seed=int(qtype))
    want = gguf.quants.dequantize(raw.reshape(OUT, -1), qtype)
    return relayout.relayout(raw, qtype, (OUT, cols), two_level=two_level), want


def product_bound(x: np.ndarray, w) -> np.ndarray:
    """``cols · eps · sum |terms|`` of the kernel's sum, the +128 offset of int8 codes included."""
    scales = np.repeat(np.asarray(w.scale_values(), np.float64), w.block, -1)
    size = np.abs(scales) * (np.abs(np.asarray(w.codes(), np.float64)) + 128)
    if w.mins is not None:
        size += np.abs(np.repeat(np.asarray(w.min_values(), np.float64), w.block, -1))
    return x.shape[1] * F32_EPS * (np.abs(x) @ size.T)


QUANTIZED = sorted(relayout.QUANTIZED_TYPES, key=lambda t: t.name)


@pytest.mark.parametrize("qtype", QUANTIZED)
def test_every_type_against_gguf(build: str, qtype: QT):
    """Rows across the tile edges (4 rows; 8 for interleaved weights under VNNI): the exact
    product of the rounded activations with the file's weights, up to f32 rounding; each row
    as alone."""
    elems = GGML_QUANT_SIZES[qtype][0]
    w, want = file_weight(qtype, 256 if elems == 256 else 192)  # 192: 3 groups of 64
    assert w.activation_block == (256 if elems == 256 else 32)
    assert_int8_products(build, w, want)


@pytest.mark.parametrize("cols", [64, 384, 576, 832])
@pytest.mark.parametrize("qtype", [QT.Q4_1, QT.Q5_1], ids=lambda t: t.name)
def test_mins_over_every_tail_of_sub_blocks(build: str, qtype: QT, cols: int):
    """The mins' sum runs in 16 lanes, two registers in the vector builds: 2, 12, 18 and 26
    sub-blocks of 32 end mid-way through the first register, the second, and past 16."""
    w, want = file_weight(qtype, cols)
    assert w.mins is not None
    assert_int8_products(build, w, want)


@pytest.mark.parametrize("qtype", [t for t in QUANTIZED if GGML_QUANT_SIZES[t][0] == 256])
def test_interleaved_k_quants_against_gguf(build: str, qtype: QT):
    """The same for a k-quant stored in the int8 path's interleaved order (one integer sum
    per sub-block, scaled once per 16 sub-blocks): 512 columns, two groups of 16 sub-blocks
    of 16 or one of 32."""
    w, want = file_weight(qtype, 512)
    assert can_interleave(w)
    w = interleaved(w)
    assert w.interleave == w.block and not kernels.fits(w, "f32") and kernels.fits(w, "int8")
    assert_int8_products(build, w, want)


@pytest.mark.parametrize("qtype", [QT.Q4_K, QT.Q5_K, QT.Q6_K], ids=lambda t: t.name)
def test_two_level_scales_give_the_same_products(build: str, qtype: QT):
    """The int8 mode's k-quants keep their scales as the file does (integer codes and one d,
    dmin per super-block: ``QuantArray.units``). The kernel forms ``d · scale`` in f32 as
    ``scale_values()`` does, so every product equals the f32-scale weight's bit for bit."""
    one = interleaved(file_weight(qtype, 512)[0])
    two, want = file_weight(qtype, 512, two_level=True)
    assert two.units is not None and not kernels.fits(two, "int8")  # row order: refused
    two = interleaved(two)
    # the f32 path reads packed codes interleaved too (f32_interleaved.h), not 8-bit ones (Q6_K's
    # as 6 bits: interleaved(code_bits=6))
    assert kernels.fits(two, "int8") and kernels.fits(two) == (two.nibbles == 64)
    assert two.nbytes < one.nbytes
    x = np.random.default_rng(8).standard_normal((max(ROWS), 512)).astype(np.float32)

    def products(w):
        return [kernels.matmul(x[:r], w, build=build, activations="int8") for r in ROWS]

    for a, b in zip(jax.jit(products)(two), jax.jit(products)(one), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert_int8_products(build, two, want)


@pytest.mark.parametrize("two_level", [False, True], ids=["f32 scales", "two-level scales"])
def test_q6_k_codes_as_six_bits(build: str, two_level: bool):
    """Q6_K's codes (-32..31) interleaved as nibbles and two high-bit planes, zero point 32
    (``interleaved(w, code_bits=6)``): 0.75 bytes a code instead of 1, the same weight bit
    for bit, products within the int8 path's bound on every build (with two-level scales the
    f32 path reads them too: test_cpu_matmul's ``Q6_K-interleaved`` layout)."""
    w, want = file_weight(QT.Q6_K, 512, two_level=two_level)
    eight, six = interleaved(w), interleaved(w, code_bits=6)
    assert (six.planes, six.zero, six.nibbles) == (2, 32, 64)
    assert six.values.nbytes + six.high.nbytes == eight.values.nbytes * 3 // 4
    np.testing.assert_array_equal(np.asarray(six.codes()), np.asarray(w.codes()))
    np.testing.assert_array_equal(np.asarray(six.dequantize()), want)
    assert kernels.fits(six, "int8") and kernels.fits(six, "f32") == two_level
    assert not kernels.fits(dataclasses.replace(six, zero=0), "int8")
    back = six.unpacked()  # row order, one int8 code per byte: the loaded weight again
    assert back.zero == 0 and back.high is None
    np.testing.assert_array_equal(np.asarray(back.values), np.asarray(w.codes()))
    assert_int8_products(build, six, want)


def assert_int8_products(build: str, w, want: np.ndarray) -> None:
    """``w``'s int8-activation products on ``build`` for every row count of :data:`ROWS`."""
    x = np.random.default_rng(7).standard_normal((max(ROWS), w.shape[1])).astype(np.float32)
    rounded = np.asarray(int8.fake_quant(jnp.asarray(x), w.activation_block), np.float64)

    def products(x, w):
        return [kernels.matmul(x[:r], w, build=build, activations="int8") for r in ROWS]

    got = jax.jit(products)(x, w)
    exact = rounded @ want.astype(np.float64).T
    bound = product_bound(rounded, w)
    for rows, y in zip(ROWS, got, strict=True):
        err = np.abs(np.asarray(y) - exact[:rows])
        assert np.all(err <= bound[:rows]), f"{rows} rows: worst {np.max(err / bound[:rows]):.2f}x"
        np.testing.assert_array_equal(np.asarray(y), np.asarray(got[-1])[:rows])  # batch-invariant


def test_linear_rounds_on_the_kernel_and_off_it(default_kernel):
    """``linear`` under an int8 policy: the kernel (up to its row limit) and the pure path
    (above it, or without a kernel) compute the same rounded product, up to f32 rounding."""
    w, _ = file_weight(QT.Q4_K, 512)
    x = np.random.default_rng(3).standard_normal((1, 300, 512)).astype(np.float32)
    on = backend.choose(platform_name="cpu", quantized=True, activations="int8")
    off = backend.Backend("cpu", "float32", True, "layers", None, activations="int8")
    small = np.asarray(linear(jnp.asarray(x[:, :7]), w, on))
    large = np.asarray(linear(jnp.asarray(x), w, on))  # 300 rows: past the kernel's limit
    pure = np.asarray(linear(jnp.asarray(x), w, off))
    bound = product_bound(np.asarray(int8.fake_quant(jnp.asarray(x[0]), 256)), w)
    assert np.all(np.abs(small[0] - pure[0, :7]) <= bound[:7])
    assert np.all(np.abs(large - pure) <= bound)
    f32 = np.asarray(linear(jnp.asarray(x[:, :7]), w, backend.choose(platform_name="cpu")))
    assert not np.allclose(small, f32, rtol=1e-4, atol=0)  # the rounding is really applied


def test_int8_activations_need_packed_weights(default_kernel):
    with pytest.raises(ConfigError, match="needs packed weights"):
        backend.choose(platform_name="cpu", quantized=False, activations="int8")
    with pytest.raises(ConfigError, match="activations = 'int4'"):
        backend.choose(platform_name="cpu", activations="int4")
    bf16 = jnp.ones((8, 64), jnp.bfloat16)
    with pytest.raises(UnsupportedError, match="int8 activations take a packed weight"):
        kernels.matmul(jnp.ones((1, 64)), bf16, activations="int8")
    line = backend.choose(platform_name="cpu", activations="int8").describe()
    assert "int8 activations" in line
    build = kernels.chosen()
    if build is not None:  # the load summary names the integer product this CPU runs
        assert kernels.INT8_PRODUCTS.get(build, "portable loops") in line
