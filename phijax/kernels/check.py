"""The check each kernel build passes before it is used: its products against numpy on
every code layout the kernel reads (at first use in a process; a pass is remembered in the
cache folder for the same build file, check code, jaxlib and CPU, so later processes skip
its 0.2-0.5 s)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from phijax import int8, quant
from phijax.kernels import attention
from phijax.paths import cache_dir, caches_enabled, cpu_name, entry_name, file_identity, source_hash
from phijax.quant import QuantArray, can_interleave, interleaved


def verdict(build: str, library: str, call: Callable[..., jax.Array], wrapper: str) -> str:
    """:func:`self_check`'s verdict on ``build`` (its extension module at ``library``,
    called through ``call``, defined in the module at ``wrapper``), or an earlier process's
    pass of the same build file, check, wrapper, jaxlib and CPU (``PHIJAX_NO_CACHE=1``:
    always checked). Only passes are remembered: a failing build is checked again."""
    marker = _pass_marker(build, library, wrapper)
    if marker is not None and marker.exists():
        return ""
    error = self_check(build, call)
    if not error and marker is not None:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError:  # an unwritable cache only costs the next process its check
            pass
    return error


def _pass_marker(build: str, library: str, wrapper: str) -> Path | None:
    if not caches_enabled():
        return None
    key = [build, os.path.realpath(library), *file_identity(os.stat(library))]
    key += [
        source_hash((__file__, wrapper, quant.__file__, int8.__file__, attention.__file__)),
        jax.__version__,
    ]
    key += [jax.lib.__version__, cpu_name()]
    return cache_dir() / "kernel_checks" / entry_name(key)


def pack(codes: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray | None]:
    """4- or 5-bit ``codes [rows, cols]`` as QuantArray stores them: low 4 bits two per byte
    (in each group, byte j holds code j low and code j + group/2 high), and the fifth bits
    as a plane (bit i of byte b for code 8b + i), or ``None`` if every code is below 16."""
    rows, cols = codes.shape
    g = (codes & 15).reshape(rows, cols // group, 2, group // 2)
    low = (g[:, :, 0] | g[:, :, 1] << 4).reshape(rows, cols // 2).astype(np.uint8)
    fifth = (codes >> 4).astype(np.uint8)
    return low, np.packbits(fifth, axis=-1, bitorder="little") if fifth.any() else None


def self_check(build: str, call: Callable[..., jax.Array]) -> str:
    """``build`` (multiplying through ``call(build, max_rows, activations, x, w)``) against
    numpy on every code layout: int8 codes in blocks of 16 and 32, 4- and 5-bit codes in
    groups of 32 and 64, each with and without mins, two-level scales (with f32 activations
    4-, 5- and 6-bit codes interleaved too), and bf16. With f32
    activations and, for packed layouts, int8 ones (:mod:`phijax.int8`'s rounding in blocks
    of 256 and 32; in blocks of 256 also with the codes interleaved, 6-bit codes as nibbles
    and two planes, and with two-level scales); 9 rows of x (tiles of 4 or 8 and a
    remainder) and 7 weight rows (pairs and a remainder). '' when every product is within
    f32 rounding of the exact one (of the rounded activations, for int8), else which layout
    is wrong."""
    rng = np.random.default_rng(0)
    out, cols = 7, 512  # one group of 16 sub-blocks of 32 for the interleaved order
    x = rng.standard_normal((9, cols)).astype(np.float32)
    # each case: the weight, its activations and code bits if interleaved, numpy's weight, sizes
    cases: dict[str, tuple[np.ndarray | QuantArray, tuple, np.ndarray, np.ndarray]] = {}
    layouts = [
        (0, 16, 8),
        (0, 16, 6),
        (0, 32, 8),
        (32, 32, 4),
        (64, 32, 4),
        (32, 32, 5),
        (64, 32, 5),
    ]
    for (nibbles, block, bits), with_mins in itertools.product(layouts, (True, False)):
        lo, hi = (0, 1 << bits) if nibbles else (-(1 << bits - 1), 1 << bits - 1)
        codes = rng.integers(lo, hi, (out, cols))
        scales = (rng.integers(1, 64, (out, cols // block)) / 64).astype(np.float32)
        mins = rng.standard_normal(scales.shape).astype(np.float32) if with_mins else None
        w, size = _weight(codes, scales, mins, block)
        values, high = pack(codes, nibbles) if nibbles else (codes.astype(np.int8), None)
        name = f"{bits}-bit groups of {nibbles}" if nibbles else f"int8 blocks of {block}"
        name += ", 6-bit codes" if bits == 6 else ""
        name = f"{name}, {'with' if with_mins else 'no'} mins"
        for act_block in int8.BLOCKS:
            q = QuantArray(values, scales, mins, nibbles, act_block, high)
            if act_block == 32:
                cases[name] = (q, ("f32", None), w, np.abs(w))
            cases[f"{name}, int8 activations in blocks of {act_block}"] = (
                q,
                ("int8", None),
                w,
                size,
            )
            if can_interleave(q):
                cases[f"{name}, interleaved, int8 activations"] = (q, ("int8", bits), w, size)
    # two-level scales, as Q4_K/Q5_K and Q6_K keep them (Q6_K's codes also as 6 bits)
    for nibbles, block, bits in ((64, 32, 4), (64, 32, 5), (0, 16, 8), (0, 16, 6)):
        k, per = (2, 8) if nibbles else (1, 16)  # units per super-block; sub-blocks per super-block
        units = (rng.integers(1, 8, (out, cols // 256, k)) / 8).astype(np.float16)
        sc = (
            rng.integers(0, 64, (out, cols // block))
            if nibbles
            else rng.integers(-128, 128, (out, cols // block))
        )
        mn = rng.integers(0, 64, sc.shape) if nibbles else None
        scales = np.repeat(units[..., 0], per, 1) * sc.astype(np.float32)
        mins = None if mn is None else np.repeat(units[..., 1], per, 1) * mn.astype(np.float32)
        codes = (
            rng.integers(0, 1 << bits, (out, cols))
            if nibbles
            else rng.integers(-(1 << bits - 1), 1 << bits - 1, (out, cols))
        )
        values, high = pack(codes, 64) if nibbles else (codes.astype(np.int8), None)
        q = QuantArray(
            values,
            sc.astype(np.uint8 if nibbles else np.int8),
            None if mn is None else mn.astype(np.uint8),
            nibbles,
            256,
            high=high,
            units=units,
        )
        name = f"{bits}-bit groups of 64, with mins" if nibbles else f"{bits}-bit codes, no mins"
        cases[f"{name}, two-level scales, interleaved, int8 activations"] = (
            q,
            ("int8", bits),
            *_weight(codes, scales, mins, block),
        )
        if bits != 6:  # the f32 path reads them in row order (6-bit codes are interleaved only)
            cases[f"{name}, two-level scales"] = (
                q,
                ("f32", None),
                *_weight(codes, scales, mins, block),
            )
        if nibbles or bits == 6:  # and packed codes interleaved (f32_interleaved.h)
            cases[f"{name}, two-level scales, interleaved"] = (
                q,
                ("f32", bits),
                *_weight(codes, scales, mins, block),
            )
    w16 = rng.standard_normal((out, cols)).astype(jnp.bfloat16)
    cases["bf16"] = (w16, ("f32", None), w16.astype(np.float32), np.abs(w16.astype(np.float32)))
    acts = [act for _, act, _, _ in cases.values()]

    def products(x, weights):  # one program: a process's first use compiles once, not 60 times
        ys = [
            call(build, None, act, x, w if bits is None else interleaved(w, code_bits=bits))
            for (act, bits), w in zip(acts, weights, strict=True)
        ]
        return ys, {b: int8.fake_quant(x, b) for b in int8.BLOCKS}

    got, int8_x = jax.jit(products)(x, [w for w, _, _, _ in cases.values()])
    rounded = {"f32": {b: x for b in int8.BLOCKS}, "int8": int8_x}  # what each product sees
    for (name, (q, (act, _), w, size)), y in zip(cases.items(), got, strict=True):
        x64 = np.asarray(rounded[act][getattr(q, "activation_block", 32)], np.float64)
        bound = cols * np.finfo(np.float32).eps * (np.abs(x64) @ size.astype(np.float64).T)
        if not np.all(np.abs(np.asarray(y) - x64 @ w.astype(np.float64).T) <= bound):
            return f"wrong products for {name}"
    return attention_check(build, rng)


def attention_check(build: str, rng: np.random.Generator) -> str:
    """``build``'s decode attention against numpy (:func:`attention.reference`): layer 1 of
    2, 2 kv heads of 2 query heads, head size 32, 9 of 12 slots; one row sees a prefix, one a
    window, one no slot. '' when within f32 rounding, else what is wrong."""
    layers, b, kv_heads, seq, d, n = 2, 3, 2, 12, 32, 9
    k, v = (rng.standard_normal((layers, b, kv_heads, seq, d)).astype(np.float32) for _ in "kv")
    q = rng.standard_normal((b, 2 * kv_heads, d)).astype(np.float32)
    mask = np.zeros((b, n), np.bool_)
    mask[0, :5] = mask[1, 2:8] = True
    got = jax.jit(attention.decode_attention, static_argnums=0)(build, q, k, v, 1, mask)
    # the scores' products (d terms) and the output's sums (n terms) round in f32: each
    # within (d + n) eps relative, times the largest value a probability weighs
    bound = (d + n) * np.finfo(np.float32).eps * np.abs(v).max()
    if not np.all(np.abs(np.asarray(got) - attention.reference(q, k, v, 1, mask)) <= bound):
        return "wrong decode attention"
    return ""


def _weight(codes: np.ndarray, scales: np.ndarray, mins: np.ndarray | None, block: int):
    """The f32 weight ``scales · codes - mins`` (exact products: dyadic scales; one rounding
    for the min) and each term's size for the rounding bound: the kernel sums the scaled codes
    and the mins apart (int8 codes are offset by 128 for int8 activations)."""
    per_code = np.repeat(scales, block, 1)
    w = per_code * codes.astype(np.float32)
    size = np.abs(per_code) * (np.abs(codes) + 128)
    if mins is not None:
        w = w - np.repeat(mins, block, 1)
        size = size + np.abs(np.repeat(mins, block, 1))
    return w, size
