"""phijax.kernels: every build of the CPU kernel, against the weights it must reproduce.

The kernel decodes each block in registers and multiplies in f32, so two things are
checked separately, for every build this CPU runs (``build`` fixture, conftest.py) and every
code layout: the weights it uses are the file's as ``gguf.quants.dequantize`` decodes them,
bit for bit (a product with the identity rows returns them exactly: one non-zero term per
sum), and its sums differ from an exact (float64) product by rounding alone. The kernel sums
``scale · Σ code·x`` per block and subtracts ``Σ min · Σx`` (llama.cpp's factoring), so the
error model is the standard bound on f32 sums of those terms, for any order:
``cols · eps · Σ(|scale·code| + |min|)·|x|`` (bf16: ``Σ|w·x|``). No tolerance here depends on
the CPU. Rows of x run across the tile edges (tiles of 4 rows): 1-9 and 255-257.
"""

from __future__ import annotations

import dataclasses
import functools

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT

from phijax import backend, kernels
from phijax.errors import ConfigError, UnsupportedError
from phijax.gguf import relayout
from phijax.model.layers import linear as model_linear
from phijax.quant import QuantArray, interleaved

from blocks import random_blocks

F32_EPS = float(np.finfo(np.float32).eps)
ROWS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 255, 256, 257)
OUT = 37  # weight rows: pairs of rows per tile and a remainder; chunks end mid-way


def file_weight(
    qtype: QT,
    rows: int = OUT,
    seed: int = 0,
    cols: int | None = None,
    two_level: bool = False,
    interleave: bool = False,
) -> tuple[QuantArray, np.ndarray]:
    """Random blocks of ``qtype`` (every bit field hit) as the QuantArray ``quantized=True``
    loads (``two_level``: a k-quant's scales as the file's integer codes and units, as the
    default CPU load keeps them; ``interleave``: in the kernel's interleaved order, as the
    AVX-512 builds' default load keeps Q4_K), and as ``gguf.quants.dequantize`` decodes them
    ``[rows, cols]`` (default: 3 blocks per row for types of 32 elements, one for k-quants of
    256)."""
    elems, _ = GGML_QUANT_SIZES[qtype]
    cols = cols or (3 * elems if elems == 32 else elems)
    raw = random_blocks(qtype, rows * cols // elems, seed=seed + int(qtype))
    want = gguf.quants.dequantize(raw.reshape(rows, -1), qtype)
    q = relayout.relayout(raw, qtype, (rows, cols), two_level=two_level, interleave=interleave)
    return q, want


def numpy_terms(w: QuantArray) -> tuple[np.ndarray, np.ndarray | None]:
    """``scales · codes`` and the mins, ``[rows, cols]`` in f32 by numpy, unpacking 4-bit
    codes itself (byte j of a group of g holds code j low, code j + g/2 high; a fifth bit from
    bit i of byte b of ``high`` for code 8b + i): independent of QuantArray's decoding, but
    for an interleaved order, which ``QuantArray.unpacked`` undoes (the comparison with the
    file's weights checks it). Codes stored with a zero point (Q6_K's 6-bit codes, plus 32)
    are summed as the kernel sums them: the stored codes, and the zero point times the scale
    as a min."""
    zero = w.zero
    w = w.unpacked() if w.interleave else w
    values = np.asarray(w.values)
    if w.nibbles:
        groups = values.reshape(values.shape[0], -1, w.nibbles // 2)
        values = np.concatenate([groups & 15, groups >> 4], axis=-1).reshape(values.shape[0], -1)
        if w.high is not None:
            fifth = (np.asarray(w.high)[:, :, None] >> np.arange(8, dtype=np.uint8)) & 1
            values = values | fifth.reshape(values.shape).astype(np.uint8) << 4
    block = values.shape[1] // w.scales.shape[1]
    scales, mins = np.asarray(w.scales), None if w.mins is None else np.asarray(w.mins)
    if w.units is not None:  # two levels: each block's integer code times its super-block's unit
        units = np.repeat(np.asarray(w.units), 256 // block, 1)
        scales = units[..., 0] * scales.astype(np.float32)
        mins = None if mins is None else units[..., 1] * mins.astype(np.float32)
    if zero:
        values, mins = values.astype(np.int32) + zero, np.float32(zero) * scales
    scaled = np.repeat(scales, block, 1) * values.astype(np.float32)
    return scaled, None if mins is None else np.repeat(mins, block, 1)


def numpy_weight(w: QuantArray) -> np.ndarray:
    """``scales · codes - mins`` in f32 by numpy (:func:`numpy_terms`)."""
    scaled, mins = numpy_terms(w)
    return scaled if mins is None else scaled - mins


def without_mins(qtype: QT) -> tuple[QuantArray, np.ndarray]:
    """4-bit codes without mins (no file type has them, but a QuantArray may)."""
    w = dataclasses.replace(file_weight(qtype)[0], mins=None)
    return w, numpy_weight(w)


def fused() -> tuple[QuantArray, np.ndarray]:
    """q|k|v-style rows of three types: brought to blocks of 16 with mins, int8 codes."""
    parts = [file_weight(QT.Q6_K, 8), file_weight(QT.Q4_K, 8), file_weight(QT.Q8_0, 8, cols=256)]
    return relayout.concatenate([w for w, _ in parts]), np.concatenate([d for _, d in parts])


def bf16() -> tuple[jax.Array, np.ndarray]:
    w = jnp.asarray(np.random.default_rng(5).standard_normal((OUT, 96)), jnp.bfloat16)
    return w, np.asarray(w.astype(jnp.float32))


def interleaved_weight(qtype: QT) -> tuple[QuantArray, np.ndarray]:
    """Two groups of 16 sub-blocks per row in the interleaved order, two-level scales."""
    return file_weight(qtype, cols=1024, two_level=True, interleave=True)


QUANTIZED = sorted(relayout.QUANTIZED_TYPES, key=lambda t: t.name)
TWO_LEVEL = (QT.Q4_K, QT.Q5_K, QT.Q6_K)
"""The types whose two-level scales the kernel's f32 path reads (``QuantArray.units``)."""
LAYOUTS = (
    {t.name: lambda t=t: file_weight(t) for t in QUANTIZED}
    | {
        "Q4_K-without-mins": lambda: without_mins(QT.Q4_K),
        "Q4_1-without-mins": lambda: without_mins(QT.Q4_1),
        "fused-Q6_K-Q4_K-Q8_0": fused,
        "bf16": bf16,
    }
    | {f"{t.name}-two-level": lambda t=t: file_weight(t, two_level=True) for t in TWO_LEVEL}
    | {f"{t.name}-interleaved": lambda t=t: interleaved_weight(t) for t in TWO_LEVEL}
)
"""Every code layout: int8 codes in blocks of 16 (Q2_K with mins, Q3_K, Q6_K) and 32 (Q8_0,
Q5_K with mins, ...), 4-bit codes in groups of 32 (Q4_1) and 64 (Q4_K), with and without
mins, mixed parts, bf16, the k-quants' two-level scales that the default load keeps, and
Q4_K's, Q5_K's and Q6_K's interleaved order (``f32_interleaved.h``: two groups of 16 sub-blocks
per row; four for Q6_K, whose codes are 6 bits with a zero point)."""


def assert_rounding_close(got, x, w: np.ndarray | QuantArray) -> None:
    """``got`` = ``x @ w.T`` up to f32 rounding: within cols · eps · Σ|term·x| of the exact
    sum, whose terms are the weights, or for a QuantArray its scaled codes and mins apart."""
    if isinstance(w, QuantArray):
        scaled, mins = numpy_terms(w)
        w, size = numpy_weight(w), np.abs(scaled) + (0 if mins is None else np.abs(mins))
    else:
        size = np.abs(w)
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    bound = x64.shape[-1] * F32_EPS * (np.abs(x64) @ np.asarray(size, np.float64).T)
    np.testing.assert_array_less(np.abs(np.asarray(got) - x64 @ w64.T), bound + 1e-30)


def test_kernel_is_built_and_runs_here(expected_builds):
    """Where phijax was installed with a compiler (CI: a compiler on the PATH now), every
    build this CPU runs must load and pass its check, and ``linear`` must use the fastest:
    a failed build would otherwise only show as slow packed weights."""
    missing = [kernels.status(b) for b in expected_builds if b not in kernels.builds()]
    assert not missing, "\n".join(missing)
    if kernels.requested() == "auto":
        assert kernels.available() and kernels.chosen() == expected_builds[0], kernels.status()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_against_gguf(build: str, layout: str):
    """The identity rows give back the file's weights bit for bit, and every row count
    across the tile edges is the exact product up to f32 rounding."""
    w, want = LAYOUTS[layout]()
    if isinstance(w, QuantArray) and "without" not in layout:
        np.testing.assert_array_equal(numpy_weight(w), want)  # the helper is the reference too
    cols = want.shape[1]
    x = np.random.default_rng(cols).standard_normal((max(ROWS), cols)).astype(np.float32)

    def products(x, eye, w):
        return [kernels.matmul(a, w, build=build) for a in [eye, *(x[:r] for r in ROWS)]]

    identity, *got = jax.jit(products)(x, np.eye(cols, dtype=np.float32), w)
    np.testing.assert_array_equal(np.asarray(identity).T, want)
    for rows, y in zip(ROWS, got, strict=True):
        assert y.shape == (rows, want.shape[0])
        assert_rounding_close(y, x[:rows], w if isinstance(w, QuantArray) else want)


@pytest.mark.parametrize("qtype", [QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_1])
def test_passes_and_their_tails(build: str, qtype: QT):
    """Rows of 1 to 13 blocks of 32: the kernel sums whole passes of 4 blocks, then the
    steps left one at a time, and the mins' terms 8 or 16 blocks at a time, then one at a
    time. Every split gives the file's weights back, products within rounding, and the
    same row at 1 and 5 rows of x."""
    for blocks in (1, 3, 4, 5, 13):
        w, want = file_weight(qtype, rows=9, seed=blocks, cols=32 * blocks)
        x = np.random.default_rng(blocks).standard_normal((5, want.shape[1])).astype(np.float32)
        eye = np.eye(want.shape[1], dtype=np.float32)
        identity, one, five = (kernels.matmul(a, w, build=build) for a in (eye, x[:1], x))
        np.testing.assert_array_equal(np.asarray(identity).T, want)
        assert_rounding_close(five, x, w)
        np.testing.assert_array_equal(np.asarray(one), np.asarray(five)[:1])


@pytest.mark.parametrize("qtype", TWO_LEVEL, ids=lambda t: t.name)
def test_two_level_scales_give_the_same_products(build: str, qtype: QT):
    """The file's two levels (an integer code per block, ``d`` and ``dmin`` per 256) give
    every product of the f32 scales bit for bit: ``d · code`` is exact in f32, the same value
    ``QuantArray.scale_values`` holds. Rows of 1 to 5 super-blocks: the mins' terms by lanes
    of 8 or 16 blocks and their tails, at 1 and 5 rows of x."""
    for supers in (1, 2, 3, 5):
        two, want = file_weight(qtype, rows=9, seed=supers, cols=256 * supers, two_level=True)
        assert two.units is not None and kernels.fits(two) and not kernels.fits(two, "int8")
        assert not kernels.fits(dataclasses.replace(two, units=two.units.astype(jnp.float32)))
        one = two.one_level()
        x = np.random.default_rng(supers).standard_normal((5, want.shape[1])).astype(np.float32)
        for rows in (1, 5):
            np.testing.assert_array_equal(
                kernels.matmul(x[:rows], two, build=build),
                kernels.matmul(x[:rows], one, build=build),
            )
        np.testing.assert_array_equal(numpy_weight(two), want)
    # the kernel holds a row's units as f32, up to 256 super-blocks: a full row, then one too wide
    wide, _ = file_weight(qtype, rows=2, seed=0, cols=256 * 256, two_level=True)
    x = np.random.default_rng(0).standard_normal((1, 256 * 256)).astype(np.float32)
    np.testing.assert_array_equal(
        kernels.matmul(x, wide, build=build), kernels.matmul(x, wide.one_level(), build=build)
    )
    assert not kernels.fits(file_weight(qtype, rows=1, seed=0, cols=256 * 257, two_level=True)[0])


BATCH_LAYOUTS = ("Q4_K", "Q6_K", "bf16", "Q4_K-two-level", "Q6_K-two-level", "Q4_K-interleaved")


@pytest.mark.parametrize("layout", [*BATCH_LAYOUTS, "Q5_K-interleaved", "Q6_K-interleaved"])
def test_rows_do_not_depend_on_the_batch(build: str, layout: str):
    """Each output row is summed the same way in a batch of 1, 3 or 17 rows (tiles of 4
    and a remainder, whose shapes differ by code layout: 4-bit codes, int8 codes, bf16), so a
    sample's logits do not depend on what else is in the batch."""
    w, _ = LAYOUTS[layout]()
    x = np.random.default_rng(1).standard_normal((17, w.shape[1])).astype(np.float32)
    full = np.asarray(kernels.matmul(x, w, build=build))
    for lo, hi in [(0, 1), (5, 8), (16, 17), (3, 14)]:
        np.testing.assert_array_equal(
            np.asarray(kernels.matmul(x[lo:hi], w, build=build)), full[lo:hi]
        )


def test_derivatives_are_the_pure_products(default_kernel):
    """grad and jvp (activations and scales/mins) equal the pure-JAX product's: the kernel
    defines its derivatives through :func:`kernels.reference`."""
    w, _ = file_weight(QT.Q4_K, rows=16)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((3, w.shape[1])), jnp.float32)
    # The random blocks make outputs up to ~1e7: scaled to O(1) before tanh, so tanh's slope
    # does not magnify the two products' rounding. The forward values then differ by at
    # most cols·eps relative (the f32 dot-product bound), and so do the cotangents; doubled
    # for the backward products' own rounding.
    scale = 1.0 / float(np.abs(kernels.reference(x, w)).max())
    tol = 2 * w.shape[1] * F32_EPS

    def loss(f):
        return lambda x, w: jnp.sum(jnp.tanh(f(x, w) * scale) * jnp.arange(16.0))

    got = jax.grad(loss(kernels.matmul), argnums=(0, 1), allow_int=True)(x, w)
    want = jax.grad(loss(kernels.reference), argnums=(0, 1), allow_int=True)(x, w)
    for a, b in zip(jax.tree.leaves(got[0]), jax.tree.leaves(want[0]), strict=True):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * float(np.abs(b).max()))
    for name in ("scales", "mins"):
        a, b = getattr(got[1], name), getattr(want[1], name)
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * float(np.abs(b).max()))
    dx = jnp.ones_like(x)
    tangent = jax.jvp(lambda x: kernels.matmul(x, w), (x,), (dx,))[1]
    np.testing.assert_allclose(tangent, kernels.reference(dx, w), rtol=1e-5, atol=1e-4)


def test_vmap_over_activations_and_over_weights(default_kernel):
    w, _ = file_weight(QT.Q4_K, rows=16)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((4, 2, w.shape[1])), jnp.float32)
    batched = jax.vmap(kernels.matmul, in_axes=(0, None))(x, w)
    for i in range(4):  # a batch of activations folds into rows: the same sums
        np.testing.assert_array_equal(batched[i], kernels.matmul(x[i], w))
    parts = [file_weight(QT.Q4_K, 16, seed=s)[0] for s in range(3)]
    stack = jax.tree.map(lambda *a: jnp.stack(a), *parts)
    per_weight = jax.vmap(kernels.matmul, in_axes=(None, 0))(x[0], stack)
    for i in range(3):
        np.testing.assert_array_equal(per_weight[i], kernels.matmul(x[0], stack[i]))


def int8_order(qtype: QT, seed: int) -> QuantArray:
    """A ``[16, 512]`` k-quant as the int8 mode loads it: interleaved, with the file's
    two-level scales (Q6_K's codes as 6 bits)."""
    raw = random_blocks(qtype, 16 * 512 // 256, seed=seed + int(qtype))
    return relayout.relayout(raw, qtype, (16, 512), two_level=True, interleave=True)


def test_f32_activations_take_only_k_quant_nibbles_interleaved(default_kernel):
    """The f32 path reads the interleaved order of Q4_K's, Q5_K's and Q6_K's packed codes with
    two-level scales (``f32_interleaved.h``), not the int8 path's other interleaved layouts (a
    mixed stack's 8-bit codes with one-level scales): ``fits`` says so, and ``matmul`` refuses
    them by name."""
    for qtype in TWO_LEVEL:
        w = int8_order(qtype, 0)
        assert w.nibbles == 64 and kernels.fits(w) and kernels.fits(w, "int8")
    eight_bit = interleaved(file_weight(QT.Q4_K, rows=16, cols=512)[0].unpacked())
    x = np.ones((1, 512), np.float32)
    for w in (int8_order(QT.Q6_K, 0).one_level(), int8_order(QT.Q4_K, 0).one_level(), eight_bit):
        assert not kernels.fits(w)
        with pytest.raises(UnsupportedError, match="Q6_K's two-level scales"):
            kernels.matmul(x, w)


STACK_KINDS = {
    "Q4_K": lambda seed: file_weight(QT.Q4_K, 16, seed=seed)[0],
    "Q5_K two-level": lambda seed: file_weight(QT.Q5_K, 16, seed=seed, two_level=True)[0],
    "Q8_0": lambda seed: file_weight(QT.Q8_0, 16, seed=seed, cols=256)[0],
    "Q4_K interleaved": functools.partial(int8_order, QT.Q4_K),
    "Q6_K interleaved": functools.partial(int8_order, QT.Q6_K),
    "bf16": lambda seed: jnp.asarray(
        np.random.default_rng(seed).standard_normal((16, 64)), jnp.bfloat16
    ),
}


@pytest.mark.parametrize(
    ("kind", "activations"),
    [
        *[
            (kind, "f32")
            for kind in (
                "Q4_K",
                "Q5_K two-level",
                "Q8_0",
                "bf16",
                "Q4_K interleaved",
                "Q6_K interleaved",
            )
        ],
        *[(kind, "int8") for kind in ("Q4_K", "Q8_0", "Q4_K interleaved", "Q6_K interleaved")],
    ],
)
def test_a_stack_is_read_at_its_layer(build: str, kind: str, activations: str):
    """``layer=i`` of a stacked weight ``[layers, out, in]`` is layer i's product bit for bit:
    a static or traced index, under ``vmap`` (folded rows), and its derivative."""
    parts = [STACK_KINDS[kind](seed) for seed in range(3)]
    stack = jax.tree.map(lambda *a: jnp.stack(a), *parts)
    cols = parts[0].shape[1]
    x = jnp.asarray(np.random.default_rng(5).standard_normal((3, 5, cols)), jnp.float32)

    def product(x, w, layer=None):
        return kernels.matmul(x, w, build=build, activations=activations, layer=layer)

    traced = jax.jit(product)
    for i, part in enumerate(parts):
        want = np.asarray(product(x[0], part))
        np.testing.assert_array_equal(product(x[0], stack, i), want)
        np.testing.assert_array_equal(traced(x[0], stack, jnp.int32(i)), want)
        folded = jax.vmap(lambda x, i=i: product(x, stack, i))(x)
        np.testing.assert_array_equal(folded[0], want)
    if activations == "f32":
        dx = jnp.ones_like(x[0])
        tangent = jax.jvp(lambda x: product(x, stack, 1), (x[0],), (dx,))[1]
        np.testing.assert_allclose(  # two f32 sums of ``cols`` terms: cols·eps apart
            tangent, kernels.reference(dx, parts[1]), rtol=cols * F32_EPS, atol=1e-4
        )
    with pytest.raises(UnsupportedError, match="stacked weight"):
        product(x[0], parts[0], 1)


def test_linear_reads_a_stack_in_place(default_kernel):
    """The model's ``linear`` with ``layer``: one kernel call on the whole stack, and no slice
    of it (XLA:CPU copies a slice: every layer's weights once per decode step)."""
    parts = [file_weight(QT.Q4_K, 16, seed=seed)[0] for seed in range(3)]
    stack = jax.tree.map(lambda *a: jnp.stack(a), *parts)
    x = jnp.ones((1, 1, parts[0].shape[1]), jnp.float32)
    cpu = backend.choose(platform_name="cpu")
    text = jax.jit(lambda x, i: model_linear(x, stack, cpu, i)).lower(x, jnp.int32(2)).as_text()
    assert text.count(f"@{kernels.TARGET}_") == 1
    assert "dynamic_slice" not in text
    got = jax.jit(lambda x, i: model_linear(x, stack, cpu, i))(x, jnp.int32(2))
    np.testing.assert_array_equal(got, model_linear(x, parts[2], cpu))


def linear(x, w):
    """The model's ``linear`` under the CPU policy (its kernel build: this CPU's, as the
    ``default_kernel`` fixture set it up)."""
    return model_linear(x, w, backend.choose(platform_name="cpu"))


def kernel_calls(fn, *args) -> int:
    """Foreign calls to any build in ``fn``'s lowering."""
    return jax.jit(fn).lower(*args).as_text().count(f"@{kernels.TARGET}_")


def test_linear_picks_the_kernel_for_small_row_counts_only(default_kernel):
    """linear() on CPU: the kernel up to MAX_ROWS rows of a packed matrix (BF16_MAX_ROWS of a
    bf16 one); more rows and f32 weights take XLA's products."""
    w, _ = file_weight(QT.Q4_K, rows=16)

    def calls(rows: int, weight) -> int:
        return kernel_calls(linear, jnp.zeros((1, rows, w.shape[1]), jnp.float32), weight)

    assert calls(1, w) == calls(kernels.MAX_ROWS, w) == 1
    assert calls(kernels.MAX_ROWS + 1, w) == 0
    bf16 = w.dequantize(jnp.bfloat16)
    assert calls(kernels.BF16_MAX_ROWS, bf16) == 1
    assert calls(kernels.BF16_MAX_ROWS + 1, bf16) == 0
    assert calls(1, w.dequantize()) == 0  # f32: XLA's product
    x = jnp.ones((1, 3, w.shape[1]), jnp.float32)
    np.testing.assert_allclose(linear(x, w), kernels.reference(x[0], w)[None], rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("kind", ["packed", "bf16"])
def test_vmap_counts_the_batched_rows(default_kernel, kind: str):
    """Under vmap the row limit counts every example's rows: 64 examples of 256 rows are
    16,384 rows of one product, past where the kernel is faster, so XLA's product runs;
    a batch within the limit stays on the kernel. Both give the same products."""
    q, _ = file_weight(QT.Q4_K, rows=16)
    w = q if kind == "packed" else q.dequantize(jnp.bfloat16)
    limit = kernels.row_limit(w)
    per_example = jnp.zeros((1, limit, q.shape[1]), jnp.float32)
    assert kernel_calls(linear, per_example, w) == 1
    many = jnp.zeros((64, 1, limit, q.shape[1]), jnp.float32)
    assert kernel_calls(jax.vmap(linear, in_axes=(0, None)), many, w) == 0
    nested = jnp.zeros((2, 2, 1, limit, q.shape[1]), jnp.float32)  # 4x the limit, by two vmaps
    assert (
        kernel_calls(jax.vmap(jax.vmap(linear, in_axes=(0, None)), in_axes=(0, None)), nested, w)
        == 0
    )
    few = jnp.zeros((2, 1, limit // 2, q.shape[1]), jnp.float32)
    assert kernel_calls(jax.vmap(linear, in_axes=(0, None)), few, w) == 1
    x = np.random.default_rng(4).standard_normal((3, 1, limit, q.shape[1])).astype(np.float32)
    got = jax.vmap(linear, in_axes=(0, None))(x, w)
    exact = q if kind == "packed" else np.asarray(w.astype(jnp.float32))
    assert_rounding_close(got.reshape(-1, 16), x.reshape(-1, q.shape[1]), exact)


def test_linear_takes_the_pure_path_where_the_kernel_does_not_fit(default_kernel):
    """The kernel needs widths that are multiples of 32: a bf16 weight 48 wide, or a valid
    QuantArray of three blocks of 16, go to XLA's product (before: INVALID_ARGUMENT)."""
    rng = np.random.default_rng(6)
    bf16 = jnp.asarray(rng.standard_normal((24, 48)), jnp.bfloat16)
    packed = QuantArray(
        jnp.asarray(rng.integers(-32, 32, (24, 48)), jnp.int8),
        jnp.asarray(rng.integers(1, 64, (24, 3)) / 64, jnp.float32),
        jnp.asarray(rng.random((24, 3)), jnp.float32),
    )
    x = rng.standard_normal((1, 2, 48)).astype(np.float32)
    for w, exact in [(bf16, np.asarray(bf16.astype(jnp.float32))), (packed, numpy_weight(packed))]:
        assert not kernels.fits(w) and not kernels.applies(x, w)
        assert kernel_calls(linear, x, w) == 0
        assert_rounding_close(linear(x, w)[0], x[0], exact)
    wide = QuantArray(packed.values[:, :32], packed.scales[:, :2], packed.mins[:, :2])
    assert kernels.fits(bf16[:, :32]) and kernels.fits(wide)  # the same kinds, 32 wide
    assert not kernels.fits(dataclasses.replace(wide, mins=wide.mins.reshape(-1)))


@pytest.mark.parametrize(
    ("value", "want"),
    [("", "auto"), ("1", "auto"), ("on", "auto"), ("TRUE", "auto"), (" true ", "auto")]
    + [("0", "off"), ("off", "off"), ("false", "off")]
    + [(b, b) for b in kernels.BUILDS]
    + [("AVX2", "avx2")],
)
def test_the_switch_reads_every_spelling(value: str, want: str):
    assert kernels.requested(value) == want


@pytest.mark.parametrize("value", ["yes", "2", "avx", "sse4", "auto"])
def test_the_switch_rejects_anything_else(value: str, monkeypatch):
    with pytest.raises(ConfigError, match=r"PHIJAX_CPU_KERNEL=.*1/on/true.*0/off/false.*avx512"):
        kernels.requested(value)
    monkeypatch.setenv(kernels.ENV, value)
    with pytest.raises(ConfigError, match="PHIJAX_CPU_KERNEL"):
        kernels.status()


def test_the_switch_turns_the_kernel_on_off_or_picks_a_build(expected_builds, monkeypatch):
    """``1``/``on``/``true`` use the fastest build (they used to turn it off), ``0``/``off``
    turn it off, a build name picks that build."""
    for value in ("1", "on", "true", ""):
        monkeypatch.setenv(kernels.ENV, value)
        assert kernels.chosen() == expected_builds[0], kernels.status()
    for value in ("0", "off", "false"):
        monkeypatch.setenv(kernels.ENV, value)
        assert kernels.chosen() is None and not kernels.available()
        assert kernels.status().startswith(f"off (PHIJAX_CPU_KERNEL={value!r})")
    for build in expected_builds:
        monkeypatch.setenv(kernels.ENV, build)
        assert kernels.chosen() == build and kernels.status() == build
