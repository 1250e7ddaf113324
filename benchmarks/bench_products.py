"""The decode step's products on XLA:CPU and phijax's CPU kernel, in the forms that were
chosen between, in a loop.

Decode runs its steps in a ``while_loop`` with the weights loop-invariant, and XLA:CPU
compiles a product differently there than alone: it canonicalizes ``x @ w.T`` to a
transposed weight, and for bf16 hoists that transpose out of the loop, copying every
weight once per call. This script times, per product (median over 16-step loops):

- matmul ``[rows, 1, in] x [out, in]``: f32 ``x @ w.T`` (the f32 form); bf16 written
  weight-first (XLA's product, the bf16 path above :data:`phijax.kernels.BF16_MAX_ROWS`
  rows); bf16 through :func:`phijax.model.layers.linear` (the kernel up to that many rows);
  a Q4_K-packed weight decoded by XLA then multiplied in f32 (the pure path,
  :func:`phijax.kernels.reference`) and through ``linear`` (the kernel up to
  :data:`phijax.kernels.MAX_ROWS` rows); with the number of whole-weight copies XLA
  compiled into each;
- attention of one new token over ``keys`` cached positions, with the cache in
  ``[batch, keys, kv_heads, head_dim]`` (the old order) and in
  ``[batch, kv_heads, keys, head_dim]`` (:class:`phijax.cache.KVCache`'s order), there
  both with the query's unit axis in the products (the form before one-query attention)
  and as :func:`phijax.model.attention.attention` computes it.

    python benchmarks/bench_products.py --markdown
    python benchmarks/bench_products.py --kernel-only --rows 1 4 8 16 32   # the kernel alone
    python benchmarks/bench_products.py --kernel-only --activations int8   # its int8 path
    python benchmarks/bench_products.py --kernel-only --activations int8 --types Q5_K Q6_K
"""

from __future__ import annotations

import argparse
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import cpu_name, print_table
from gguf import GGMLQuantizationType as QT

from phijax import backend, kernels
from phijax.gguf.relayout import relayout
from phijax.gguf.synthetic import random_blocks
from phijax.model.attention import attention
from phijax.model.layers import linear
from phijax.quant import QuantArray

STEPS = 16


def _median_ms(fn, *args, reps: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def _looped(op):
    """``op(x, operand)`` applied to each operand, ``STEPS`` times in a fori_loop."""

    def run(x, operands):
        def body(_, x):
            for operand in operands:
                x = x + op(x, operand).astype(x.dtype)
            return x

        return jax.lax.fori_loop(0, STEPS, body, x)

    return jax.jit(run)


def _x_first(x, w):
    y = jnp.einsum("bsi,oi->bso", x, w, preferred_element_type=jnp.float32)
    return y.mean(axis=-1, keepdims=True)


def _weight_first(x, w):
    b, s, n = x.shape
    y = jax.lax.dot_general(
        w, x.reshape(b * s, n), (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
    )
    return y.T.reshape(b, s, -1).mean(axis=-1, keepdims=True)


CPU = backend.choose(platform_name="cpu")


def _linear(x, w):
    return linear(x, w, CPU).mean(axis=-1, keepdims=True)


def _decoded(x, w):
    b, s, n = x.shape
    return kernels.reference(x.reshape(b * s, n), w).reshape(b, s, -1).mean(-1, keepdims=True)


def _weight(shape, seed: int, activations: str = "f32", qtype: QT = QT.Q4_K) -> QuantArray:
    """A random ``qtype`` weight as each activation type's mode holds it (int8: interleaved,
    with the file's two-level scales, Q6_K's codes in 6 bits)."""
    raw = random_blocks(np.random.default_rng(seed), qtype, shape[0] * shape[1] // 256)
    return relayout(
        raw, qtype, shape, two_level=activations == "int8", interleave=activations == "int8"
    )


FORMS = ("f32, x @ w.T", "bf16, XLA", "bf16, linear()", "Q4_K, XLA decode", "Q4_K, linear()")


def product_rows(shape, rows_list, reps: int) -> list[list[str]]:
    out_dim, in_dim = shape
    w32 = [jax.random.normal(jax.random.key(i), shape) for i in range(4)]
    w16 = [w.astype(jnp.bfloat16) for w in w32]
    q4 = [_weight(shape, i) for i in range(4)]
    forms = [(_x_first, w32), (_weight_first, w16), (_linear, w16), (_decoded, q4), (_linear, q4)]
    rows = []
    for n in rows_list:
        row = [f"{n} x {in_dim} @ {out_dim} x {in_dim}"]
        for op, ws in forms:
            fn = _looped(op)
            x = jnp.ones(
                (n, 1, in_dim), jnp.float32 if isinstance(ws[0], QuantArray) else ws[0].dtype
            )
            hlo = fn.lower(x, ws).compile().as_text().splitlines()
            sizes = (f"[{out_dim},{in_dim}]", f"[{in_dim},{out_dim}]")
            copies = sum(" copy(" in line and any(s in line for s in sizes) for line in hlo)
            ms = _median_ms(fn, x, ws, reps=reps) / (STEPS * len(ws))
            row.append(f"{ms:.2f} ms ({copies} copies)")
        rows.append(row)
    return rows


def kernel_rows(
    shapes, rows_list, reps: int, activations: str = "f32", qtypes=(QT.Q4_K,)
) -> list[list[str]]:
    """The CPU kernel alone: ``kernels.matmul`` of ``[rows, in]`` by one weight per type and
    shape, jitted, called 20 times per timing (no loop around it, one weight: it may stay in
    the CPU's caches, unlike the looped forms' four)."""
    product = jax.jit(
        lambda x, w: kernels.matmul(x, w, build=kernels.chosen(), activations=activations)
    )

    def twenty(x, w):
        return [product(x, w) for _ in range(20)]

    out = []
    for qtype, shape in itertools.product(qtypes, shapes):
        w = jax.tree.map(jnp.asarray, _weight(shape, 0, activations, qtype))
        row = [f"{qtype.name} {shape[0]} x {shape[1]}, {activations} activations"]
        for n in rows_list:
            x = jnp.ones((n, shape[1]), jnp.float32)
            row.append(f"{_median_ms(twenty, x, w, reps=reps) / 20:.2f} ms")
        out.append(row)
    return out


def _attend_heads_first(q, kv):
    b, s, _, _ = q.shape
    mask = jnp.ones((b, s, kv.shape[2]), bool)
    return attention(q, kv, kv, mask)[0]


def _attend_keys_first(q, kv):
    return _attend_heads_first(q, kv.transpose(0, 2, 1, 3))


def _attend_query_axis_kept(q, kv):
    """Heads-first attention with the query's unit axis in both products (no mask, as
    every key is attended here): XLA:CPU copies K and V transposed at batch 1."""
    f32 = jnp.float32
    scores = jnp.einsum("bktd,bskd->bkst", kv, q, preferred_element_type=f32)
    probs = jax.nn.softmax(scores * q.shape[-1] ** -0.5, axis=-1)
    return jnp.einsum("bkst,bktd->bskd", probs, kv, preferred_element_type=f32)


def attention_rows(cases, heads: int, head_dim: int, reps: int) -> list[list[str]]:
    rows = []
    for batch, keys in cases:
        q = jnp.ones((batch, 1, heads, head_dim))
        row = [f"batch {batch}, {keys} keys, {heads} heads x {head_dim}"]
        heads_first = (batch, heads, keys, head_dim)
        for op, order in ((_attend_keys_first, (batch, keys, heads, head_dim)),
                          (_attend_query_axis_kept, heads_first),
                          (_attend_heads_first, heads_first)):  # fmt: skip
            caches = [jnp.full(order, 0.01) for _ in range(4)]
            ms = _median_ms(_looped(op), q, caches, reps=reps) / (STEPS * len(caches))
            row.append(f"{ms:.2f} ms")
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=2, default=[8192, 3072], help="out, in")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 32, 128])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument(
        "--kernel-only",
        action="store_true",
        help="only the CPU kernel's own Q4_K product at each --rows, [8192, 3072] and [16384, 3072]",
    )
    parser.add_argument(
        "--activations",
        choices=["f32", "int8"],
        default="f32",
        help="with --kernel-only: the kernel's activation type (int8: the int8 mode's weights)",
    )
    parser.add_argument(
        "--types",
        nargs="+",
        choices=["Q4_K", "Q5_K", "Q6_K"],
        default=["Q4_K"],
        help="with --kernel-only: the weights' types",
    )
    args = parser.parse_args()
    if args.kernel_only:
        print(f"# {cpu_name()}; jax {jax.__version__}; CPU kernel: {kernels.status()}")
        shapes = [(8192, 3072), (16384, 3072)]
        qtypes = [QT[name] for name in args.types]
        table = kernel_rows(shapes, args.rows, max(args.reps, 7), args.activations, qtypes)
        print_table(["weight", *(f"{n} rows" for n in args.rows)], table, args.markdown)
        return
    print(f"# {cpu_name()}; jax {jax.__version__}; per product, {STEPS}-step loops")
    print(f"# CPU kernel: {kernels.status()}")
    header = ["product", *FORMS]
    print_table(header, product_rows(tuple(args.shape), args.rows, args.reps), args.markdown)
    print()
    cases = [(1, 128), (1, 2048), (8, 128), (32, 128), (8, 1024)]
    header = [
        "f32 attention, one new token",
        "cache [b, keys, heads, d]",
        "[b, heads, keys, d], query axis kept",
        "[b, heads, keys, d], attention()",
    ]
    print_table(header, attention_rows(cases, 32, 96, args.reps), args.markdown)


if __name__ == "__main__":
    main()
