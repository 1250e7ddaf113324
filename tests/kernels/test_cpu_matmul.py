"""phijax.kernels: the CPU kernel for packed and bf16 weights, against the weights it must
reproduce.

The kernel decodes each block in registers and multiplies in f32, so two things are
checked separately: the weights it uses are the file's, bit for bit (a product with the
identity rows returns them exactly: one non-zero term per sum), and its sums differ from an
exact (float64) product by rounding alone, at most ``cols · eps · Σ|w·x|`` for any order of
summation (the standard bound on f32 dot products), so no tolerance here depends on the CPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT

from phijax import kernels
from phijax.gguf import relayout
from phijax.model.layers import linear
from phijax.model.quant import QuantArray, dense

from blocks import random_blocks

F32_EPS = float(np.finfo(np.float32).eps)
QUANTIZED = sorted(relayout.QUANTIZED_TYPES, key=lambda t: t.name)

pytestmark = pytest.mark.skipif(
    not kernels.available(), reason=f"the CPU kernel is {kernels.status()}"
)


def packed(qtype: QT, rows: int = 24, blocks_per_row: int = 2, seed: int = 0) -> QuantArray:
    """A QuantArray re-laid out from random blocks of ``qtype``, every bit field hit."""
    elems = GGML_QUANT_SIZES[qtype][0]
    raw = random_blocks(qtype, rows * blocks_per_row, seed=seed + int(qtype))
    return relayout.relayout(raw, qtype, (rows, elems * blocks_per_row))


def assert_rounding_close(got, x, w: jax.Array | QuantArray) -> None:
    """``got`` = ``x @ w.T`` up to f32 rounding: within cols · eps · Σ|w·x| of the exact sum."""
    x64, w64 = np.asarray(x, np.float64), np.asarray(dense(w, jnp.float32), np.float64)
    bound = x64.shape[-1] * F32_EPS * (np.abs(x64) @ np.abs(w64).T)
    np.testing.assert_array_less(np.abs(np.asarray(got) - x64 @ w64.T), bound + 1e-30)


@pytest.mark.skipif(
    shutil.which("c++") is None or sys.platform != "linux",
    reason="the kernel is built where a C++ compiler is",
)
def test_kernel_is_built_and_runs_here():
    """Where phijax was installed with a compiler (CI), the kernel must be active: a failed
    build would otherwise only show as slow packed weights."""
    assert kernels.available(), kernels.status()


@pytest.mark.parametrize("qtype", QUANTIZED, ids=lambda t: t.name)
def test_kernel_uses_the_files_weights_bit_for_bit(qtype: QT):
    """Every packed type (int8 codes with blocks of 16 or 32, with or without mins; 4-bit
    codes two per byte): identity rows give back the dequantized weight exactly."""
    w = packed(qtype)
    eye = jnp.eye(w.shape[1], dtype=jnp.float32)
    np.testing.assert_array_equal(np.asarray(kernels.matmul(eye, w)).T, w.dequantize())


def test_kernel_decodes_fused_and_mins_free_layouts_exactly():
    """A fused weight of mixed types (blocks of 16 with mins), and 4-bit codes without mins
    (no file type has them, but a QuantArray may)."""
    fused = relayout.concatenate([packed(QT.Q6_K, 8), packed(QT.Q4_K, 8), packed(QT.Q8_0, 8, 16)])
    no_mins = dataclasses.replace(packed(QT.Q4_K), mins=None)
    for w in (fused, no_mins):
        eye = jnp.eye(w.shape[1], dtype=jnp.float32)
        np.testing.assert_array_equal(np.asarray(kernels.matmul(eye, w)).T, w.dequantize())


def test_bf16_weights_are_used_exactly():
    """A bf16 weight widens to f32 exactly: identity rows give it back."""
    w = jnp.asarray(np.random.default_rng(5).standard_normal((40, 96)), jnp.bfloat16)
    eye = jnp.eye(96, dtype=jnp.float32)
    np.testing.assert_array_equal(np.asarray(kernels.matmul(eye, w)).T, w.astype(jnp.float32))
    x = np.random.default_rng(6).standard_normal((5, 96)).astype(np.float32)
    assert_rounding_close(kernels.matmul(x, w), x, w)


@pytest.mark.parametrize("qtype", [QT.Q4_K, QT.Q6_K, QT.Q5_K, QT.Q4_1, QT.Q8_0], ids=str)
@pytest.mark.parametrize("rows", [1, 5, 8, 9, 64])
def test_products_are_exact_up_to_f32_rounding(qtype: QT, rows: int):
    w = packed(qtype, rows=37, blocks_per_row=3)  # 37 outputs: chunks end mid-way
    x = np.random.default_rng(rows).standard_normal((rows, w.shape[1])).astype(np.float32)
    assert_rounding_close(jax.jit(kernels.matmul)(x, w), x, w)


def test_rows_do_not_depend_on_the_batch():
    """Each output row is summed the same way in a batch of 1, 3 or 17 rows (tiles of 8 and
    a remainder), so a sample's logits do not depend on what else is in the batch."""
    w = packed(QT.Q4_K, rows=40, blocks_per_row=2)
    x = np.random.default_rng(1).standard_normal((17, w.shape[1])).astype(np.float32)
    full = np.asarray(kernels.matmul(x, w))
    for lo, hi in [(0, 1), (5, 8), (16, 17), (3, 14)]:
        np.testing.assert_array_equal(np.asarray(kernels.matmul(x[lo:hi], w)), full[lo:hi])


def test_derivatives_are_the_pure_products():
    """grad and jvp (activations and scales/mins) equal the pure-JAX product's: the kernel
    defines its derivatives through :func:`kernels.reference`."""
    w = packed(QT.Q4_K, rows=16)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((3, w.shape[1])), jnp.float32)

    def loss(f):
        return lambda x, w: jnp.sum(jnp.tanh(f(x, w)) * jnp.arange(16.0))

    got = jax.grad(loss(kernels.matmul), argnums=(0, 1), allow_int=True)(x, w)
    want = jax.grad(loss(kernels.reference), argnums=(0, 1), allow_int=True)(x, w)
    for a, b in zip(jax.tree.leaves(got[0]), jax.tree.leaves(want[0]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for name in ("scales", "mins"):
        a, b = getattr(got[1], name), getattr(want[1], name)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))
    dx = jnp.ones_like(x)
    tangent = jax.jvp(lambda x: kernels.matmul(x, w), (x,), (dx,))[1]
    np.testing.assert_allclose(tangent, kernels.reference(dx, w), rtol=1e-5, atol=1e-4)


def test_vmap_over_activations_and_over_weights():
    w = packed(QT.Q4_K, rows=16)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((4, 2, w.shape[1])), jnp.float32)
    batched = jax.vmap(kernels.matmul, in_axes=(0, None))(x, w)
    for i in range(4):  # a batch of activations folds into rows: the same sums
        np.testing.assert_array_equal(batched[i], kernels.matmul(x[i], w))
    stack = jax.tree.map(lambda *a: jnp.stack(a), *[packed(QT.Q4_K, 16, seed=s) for s in range(3)])
    per_weight = jax.vmap(kernels.matmul, in_axes=(None, 0))(x[0], stack)
    for i in range(3):
        np.testing.assert_array_equal(per_weight[i], kernels.matmul(x[0], stack[i]))


def test_linear_picks_the_kernel_for_small_row_counts_only():
    """linear() on CPU: the kernel up to MAX_ROWS rows of a packed matrix (BF16_MAX_ROWS of a
    bf16 one); more rows and f32 weights take XLA's products."""
    w = packed(QT.Q4_K, rows=16)

    def compiled_text(rows: int, weight) -> str:
        x = jnp.zeros((1, rows, w.shape[1]), jnp.float32)
        return jax.jit(linear).lower(x, weight).as_text()

    assert kernels.TARGET in compiled_text(1, w)
    assert kernels.TARGET in compiled_text(kernels.MAX_ROWS, w)
    assert kernels.TARGET not in compiled_text(kernels.MAX_ROWS + 1, w)
    bf16 = w.dequantize(jnp.bfloat16)
    assert kernels.TARGET in compiled_text(kernels.BF16_MAX_ROWS, bf16)
    assert kernels.TARGET not in compiled_text(kernels.BF16_MAX_ROWS + 1, bf16)
    assert kernels.TARGET not in compiled_text(1, w.dequantize())  # f32: XLA's product
    x = jnp.ones((1, 3, w.shape[1]), jnp.float32)
    np.testing.assert_allclose(linear(x, w), kernels.reference(x[0], w)[None], rtol=1e-5, atol=1e-3)


ISA_RUN = """
import json, numpy as np, jax.numpy as jnp
from phijax import kernels
from phijax.model.quant import QuantArray, dense
rng = np.random.default_rng(0)
codes, scales, mins = rng.integers(0, 256, (40, 128)), rng.random((40, 8)), rng.random((40, 8))
w = QuantArray(jnp.asarray(codes, jnp.uint8), jnp.asarray(scales, jnp.float32),
               jnp.asarray(mins, jnp.float32), 64)
x = rng.standard_normal((9, 256)).astype(np.float32)
ratio = None
if kernels.available():  # the error over the f32 rounding bound (assert_rounding_close's)
    x64, w64 = x.astype(np.float64), np.asarray(w.dequantize(), np.float64)
    err = np.abs(np.asarray(kernels.matmul(x, w)) - x64 @ w64.T)
    ratio = float((err / (256 * np.finfo(np.float32).eps * (np.abs(x64) @ np.abs(w64).T))).max())
print(json.dumps([kernels.status(), ratio]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["0", "generic", "avx2", "avx512"])
def test_every_build_this_cpu_runs_agrees(isa: str):
    """PHIJAX_CPU_KERNEL picks a build (or turns the kernel off); every build this CPU runs
    computes the products up to f32 rounding."""
    env = {**os.environ, "PHIJAX_CPU_KERNEL": isa}
    out = subprocess.run(
        [sys.executable, "-c", ISA_RUN], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    status, ratio = json.loads(out.stdout.strip().splitlines()[-1])
    if isa == "0":
        assert status.startswith("off") and ratio is None
    elif "this CPU runs" in status:
        pytest.skip(status)
    else:
        assert status.startswith(isa) and ratio is not None and ratio < 1, (status, ratio)
