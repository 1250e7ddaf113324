"""GGUF tensors → the Phi-3 module's stacked parameters, one tensor at a time, on the device.

Each tensor's raw bytes go to the device and are dequantized there by the JAX
kernels. The module arrives with abstract parameters (shapes and dtypes only):
a per-layer array is put in as it is decoded; a ``[layers, ...]`` stack is
allocated at its first layer and filled with donated updates. So the model
never exists twice in memory.

Which tensors make which parameter is the weight table's (:mod:`phijax.weight_schema`;
layouts: docs/formats.md): ``phi3`` files carry fused ``attn_qkv`` (rows q, k, v) and
``ffn_up`` (rows gate, up). ``llama`` files carry separate tensors and their converter
permuted q and k rows for interleaved rope; we undo that permutation (Phi-3 rotates
halves) and fuse.
"""

from __future__ import annotations

import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from phijax.config import Phi3Config
from phijax.errors import ConfigError, GGUFFormatError
from phijax.gguf import relayout
from phijax.gguf.dequant import dequantize
from phijax.gguf.reader import GGUFFile
from phijax.kernels import ACTIVATIONS
from phijax.model.phi3 import Phi3
from phijax.quant import F32_INTERLEAVED, QuantArray, can_interleave, interleaved
from phijax.sharding import place, weight_axes, zeros
from phijax.weight_schema import BY_NAME, GLOBAL_WEIGHTS, LAYER_WEIGHTS, Source, shape_matches


@partial(jax.jit, donate_argnums=0)
def _set_layer(stack, index: jax.Array, value):
    """``stack[index] = value`` in place, for an array or a QuantArray stack."""
    return jax.tree.map(lambda s, v: s.at[index].set(v.astype(s.dtype)), stack, value)


def unpermute_rope_rows(w, n_heads: int):
    """Undo llama.cpp's q/k row permutation (interleaved → half-split rope) on ``w [rows, ...]``:
    decoded weights (a JAX array) or whole encoded rows (numpy bytes, ``gguf.rewrite``)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def _sources(f: GGUFFile, i: int) -> dict[str, tuple[Source, ...]]:
    """For layer ``i``: each parameter's GGUF tensors (rows concatenated in order), as the
    weight table (:mod:`phijax.weight_schema`) finds them in ``f``."""
    return {w.name: w.sources(f.tensors, i) for w in LAYER_WEIGHTS}


def _rope_heads(c: Phi3Config, source: Source) -> int | None:
    """The heads whose rows a ``llama`` file's rope permutation shuffled, or ``None``."""
    if c.architecture != "llama" or source.rope_heads is None:
        return None
    return source.rope_heads(c)


def _load(
    f: GGUFFile,
    name: str,
    shape: tuple[int, ...],
    dtype,
    packed: bool,
    two_level: bool = False,
    interleave: bool = False,
) -> jax.Array | QuantArray:
    """Tensor ``name`` on the device, checked against ``shape``: dequantized to ``dtype``, or
    kept as a :class:`QuantArray` when ``packed`` (a lossless re-layout of its blocks; with
    ``two_level``, a k-quant's scales as the file stores them; with ``interleave``, in the
    int8 path's order where it can be)."""
    info = f.tensor(name)
    if not shape_matches(info.shape, shape):
        raise GGUFFormatError(
            f"{f.path}: tensor {name!r} has shape {list(info.shape)}, expected {list(shape)} for this "
            "config. The file is inconsistent with its own metadata."
        )
    raw = jax.device_put(_read(f, info))
    if packed:
        return relayout.relayout(
            raw, info.ggml_type, shape, name=name, two_level=two_level, interleave=interleave
        )
    return dequantize(raw, info.ggml_type, info.shape, dtype, name=name, where=f.path).reshape(
        shape
    )


def _read(f: GGUFFile, info) -> np.ndarray:
    """A tensor's bytes, read (not mapped): pages of a mapped file would stay in the process's
    resident set until unmapped, as much as the whole model file by the end of a load."""
    try:
        return read_aligned(f.path, info.offset, info.nbytes)
    except EOFError:
        raise GGUFFormatError(
            f"{f.path}: tensor {info.name!r} is cut short; download the file again."
        ) from None


def byte_bar(desc: str, total: int, progress: bool) -> tqdm:
    """A bar counting bytes (off when ``progress`` is false; gone when done)."""
    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
        disable=None if progress else True, leave=False,
    )  # fmt: skip


READ_STEP = 64 << 20


def read_aligned(path, offset: int, nbytes: int, bar: tqdm | None = None) -> np.ndarray:
    """``nbytes`` of ``path`` from ``offset`` (EOFError if the file ends first), in a buffer
    that XLA:CPU takes as it is (:func:`aligned`) instead of copying it into fresh memory.

    Reads of more than 64 MiB go in 64 MiB pieces on up to 4 threads: the time goes into
    the kernel (faulting in fresh pages, copying from the page cache), one core per
    reader. A 3.2 GB file from the page cache took 0.68 s on 2 threads against 1.8 s on
    one (medians of 8 fresh processes each, ``docs/benchmarks.md``). ``bar`` counts bytes."""
    buf = aligned(nbytes)
    view = memoryview(buf)
    pieces = [(start, min(READ_STEP, nbytes - start)) for start in range(0, nbytes, READ_STEP)]
    fd = os.open(path, os.O_RDONLY)

    def read(piece: tuple[int, int]) -> int:
        start, size = piece
        end = start + size
        while start < end:  # a read may return less than asked: go on from there
            got = os.preadv(fd, [view[start:end]], offset + start)
            if got == 0:
                raise EOFError(f"{path}: fewer than {offset + nbytes} bytes")
            start += got
        return size

    try:
        workers = min(4, os.cpu_count() or 1, len(pieces))
        with ThreadPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
            for size in (pool.map if pool else map)(read, pieces):
                if bar is not None:
                    bar.update(size)
    finally:
        os.close(fd)
    return buf


def aligned(nbytes: int, alignment: int = 64) -> np.ndarray:
    """An uninitialised uint8 buffer of ``nbytes`` whose address is a multiple of
    ``alignment`` (at most a page). From 1 MiB it is a private anonymous mapping of its
    own, without transparent huge pages: reading 3.2 GB into one took 0.8 s against
    1.9-3.9 s for a numpy array, which the kernel backs with huge pages it must first
    zero (``docs/benchmarks.md``). Unmapped when the last array using it goes."""
    if nbytes >= 1 << 20 and alignment <= mmap.PAGESIZE:
        region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        return np.frombuffer(region, np.uint8)
    raw = np.empty(nbytes + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start : start + nbytes]


def _packed_params(f: GGUFFile, layers: range) -> set[str]:
    """The layer parameters to keep packed over ``layers``: those whose every source tensor
    has a quantized type (a stack needs one representation for all its layers)."""
    out = set()
    for w in LAYER_WEIGHTS:
        types = {f.tensor(s.tensor).ggml_type for i in layers for s in _sources(f, i)[w.name]}
        if types <= relayout.QUANTIZED_TYPES:
            out.add(w.name)
    return out


def _stack_types(f: GGUFFile, c: Phi3Config, name: str) -> list[tuple[int, ...]]:
    """Each layer's source tensor types for layer parameter ``name`` (in part order)."""
    return [
        tuple(f.tensor(s.tensor).ggml_type for s in _sources(f, i)[name])
        for i in range(c.num_layers)
    ]


def _stack_formats(
    f: GGUFFile, c: Phi3Config, packed: set[str]
) -> dict[str, tuple[int, bool, relayout.Packing]]:
    """For a ``stacked`` quantized load: each packed parameter whose layers differ in their
    tensors' types gets one (sub-block, has mins, packing) that all its layers are brought to,
    so every layer's QuantArray has the same shape (layers of the same types already do)."""
    formats = {}
    for name in packed:
        per_layer = set(_stack_types(f, c, name))
        if len(per_layer) > 1:
            formats[name] = relayout.common_layout(t for types in per_layer for t in types)
    return formats


def load_weights(
    f: GGUFFile,
    module: Phi3,
    *,
    progress: bool = True,
    quantized: bool = False,
    mesh=None,
    interleave: str | None = None,
    two_level: bool = False,
    f32_types: frozenset = F32_INTERLEAVED,
) -> dict[str, np.ndarray]:
    """Fill ``module``'s parameters from ``f``; returns LongRoPE factor arrays if the file has them.

    ``quantized``: quantized matrices stay packed (:class:`QuantArray`, 0.75-1.25 bytes per weight);
    norms and float tensors load as arrays either way. ``mesh``: each tensor goes to its shards
    as soon as it is decoded (:mod:`phijax.sharding`), so no device holds the whole model.
    ``interleave``: the activations the CPU kernel will multiply (``"int8"`` or ``"f32"``);
    packed matrices that can take it are stored in its interleaved order
    (:func:`phijax.quant.interleaved`), with a k-quant's scales in its two levels
    (``QuantArray.units``) and Q6_K's codes as 6 bits, one tensor at a time: with int8
    activations every k-quant (a stack's layers of differing types share one-level scales and
    8-bit codes), with f32 ones the types in ``f32_types`` (the backend's
    :attr:`~phijax.backend.Backend.f32_interleaved`; Q6_K's codes as 6 bits).
    ``two_level`` otherwise: k-quants keep their two levels in row order (the kernel's f32
    path reads them so: 0.59 instead of 0.75 bytes per Q4_K weight).
    """
    if interleave is not None and interleave not in ACTIVATIONS:  # True once meant "int8"
        raise ConfigError(
            f"load_weights(interleave={interleave!r}): give the activations the CPU kernel "
            f"multiplies, one of {ACTIVATIONS}, or None for row order."
        )
    c = module.config
    stacked = module.layout == "stacked"
    two_level = two_level or interleave is not None  # int8: undone for any matrix not interleaved
    total = sum(t.nbytes for t in f.tensors.values())
    bar = byte_bar("loading weights", total, progress)

    def load(name, shape, dtype=module.dtype, may_pack=True, whole=True):
        # whole: the tensor is the whole matrix, so it can take the kernel's order at once
        packed = quantized and may_pack and f.tensors[name].ggml_type in relayout.QUANTIZED_TYPES
        order = whole and relayout.interleaves([f.tensors[name].ggml_type], interleave, f32_types)
        value = _load(f, name, shape, dtype, packed, two_level, order)
        bar.update(f.tensors[name].nbytes)
        return value

    def cast(value, dtype):
        return value if isinstance(value, QuantArray) else value.astype(dtype)

    def put(value, name, stacked=False):  # onto the mesh with its logical axes' sharding
        return place(value, weight_axes(name, stacked), mesh, c)

    def arranged(value, qtypes):  # a whole matrix in the kernel's order (qtypes: its sources')
        if not isinstance(value, QuantArray) or value.interleave or interleave is None:
            return value
        # f32 activations read the order of two-level packed codes only (Q4_K, Q5_K; Q6_K's 6 bits)
        bits = relayout.code_bits(qtypes)
        takes = interleave == "int8" or (
            value.units is not None and (value.nibbles == 64 or bits == 6)
        )
        if not (
            relayout.interleaves(qtypes, interleave, f32_types) and can_interleave(value) and takes
        ):
            return value.one_level() if interleave == "int8" else value
        return interleaved(value, code_bits=bits)

    for spec in GLOBAL_WEIGHTS:
        target = getattr(module, spec.name)
        if spec.kinds or target is None:  # chosen by the caller (returned below), or absent
            continue
        (source,) = spec.sources(f.tensors)
        value = load(source.tensor, spec.shape(c), spec.dtype(module.dtype), not spec.f32)
        target.set_value(put(arranged(value, [f.tensor(source.tensor).ggml_type]), spec.name))
    packed = _packed_params(f, range(c.num_layers)) if quantized and stacked else set()
    formats = _stack_formats(f, c, packed)
    # a stack's code bits come from every layer's types: one shape for all its layers
    stack_types = {name: [t for ts in _stack_types(f, c, name) for t in ts] for name in packed}
    for i in range(c.num_layers):
        if quantized and not stacked:
            packed = _packed_params(f, range(i, i + 1))
        for param_name, parts in _sources(f, i).items():
            target = module.param(param_name, i)
            spec = BY_NAME[param_name]
            shape, dtype = spec.shape(c), spec.dtype(module.dtype)
            heads = tuple(_rope_heads(c, source) for source in parts)
            layout = formats.get(param_name)
            fuse = len(parts) > 1 or layout is not None or any(heads)
            # each part of a fused weight is checked too: the rope un-permutation needs its rows
            pieces = [
                load(source.tensor, source.shape(spec, c), dtype, param_name in packed, not fuse)
                for source in parts
            ]
            value = _fuse(tuple(pieces), heads, layout) if fuse else pieces[0]
            if value.shape != shape:
                raise GGUFFormatError(
                    f"{f.path}: layer {i} {param_name} assembles to {list(value.shape)}, expected "
                    f"{list(shape)}."
                )
            if stacked:
                value = arranged(cast(value, dtype), stack_types.get(param_name, ()))
                stack = target.get_value()
                if isinstance(stack, jax.ShapeDtypeStruct) or i == 0:  # first layer: allocate
                    like = jax.tree.map(
                        lambda x: jax.ShapeDtypeStruct((c.num_layers, *x.shape), x.dtype), value
                    )
                    stack = zeros(like, weight_axes(param_name, True), mesh, c)
                layer = put(value, param_name)
                stack = _set_layer(stack, jnp.int32(i), layer)
                target.set_value(put(stack, param_name, True))  # no-op unless XLA chose another
            else:
                qtypes = [f.tensor(source.tensor).ggml_type for source in parts]
                target.set_value(put(arranged(cast(value, dtype), qtypes), param_name))
    bar.close()
    factors = BY_NAME["rope_factors"]
    return {
        kind: f.dequantize(name).reshape(-1)
        for kind, name in zip(factors.kinds, factors.tensors(), strict=True)
        if name in f.tensors
    }


@partial(jax.jit, static_argnums=(1, 2))
def _fuse(
    pieces: tuple, heads: tuple[int | None, ...], layout: tuple | None
) -> jax.Array | QuantArray:
    """One parameter from its parts, as one program (a new file's shapes compile once per
    parameter, not once per reshape): each part's rope rows un-permuted (``heads``), brought to
    a stack's ``layout`` (:func:`~phijax.gguf.relayout.to_layout`), and the rows concatenated,
    packed (any mix of quantized types) or dense."""
    pieces = [
        p if n is None else jax.tree.map(partial(unpermute_rope_rows, n_heads=n), p)
        for p, n in zip(pieces, heads, strict=True)
    ]
    if layout is not None:
        pieces = [relayout.to_layout(p, *layout) for p in pieces]
    if len(pieces) == 1:
        return pieces[0]
    if isinstance(pieces[0], QuantArray):
        return relayout.concatenate(pieces)
    return jnp.concatenate(pieces, axis=0)
