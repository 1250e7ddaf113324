"""GGUF tensors → the Phi-3 module's stacked parameters, one tensor at a time, on the device.

Each tensor's raw bytes go to the device and are dequantized there by the JAX
kernels. The module arrives with abstract parameters (shapes and dtypes only):
a per-layer array is put in as it is decoded; a ``[layers, ...]`` stack is
allocated at its first layer and filled with donated updates. So the model
never exists twice in memory.

Layouts (docs/formats.md): ``phi3`` files carry fused ``attn_qkv`` (rows q, k,
v) and ``ffn_up`` (rows gate, up). ``llama`` files carry separate tensors and
their converter permuted q and k rows for interleaved rope; we undo that
permutation (Phi-3 rotates halves) and fuse.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from phijax.config import Phi3Config
from phijax.errors import GGUFFormatError
from phijax.gguf import relayout
from phijax.gguf.dequant import dequantize
from phijax.gguf.reader import GGUFFile
from phijax.model.phi3 import LAYER_PARAMS, Phi3, layer_shapes
from phijax.quant import QuantArray
from phijax.sharding import place, weight_axes, zeros


@partial(jax.jit, donate_argnums=0)
def _set_layer(stack, index: jax.Array, value):
    """``stack[index] = value`` in place, for an array or a QuantArray stack."""
    return jax.tree.map(lambda s, v: s.at[index].set(v.astype(s.dtype)), stack, value)


def unpermute_rope_rows(w, n_heads: int):
    """Undo llama.cpp's q/k row permutation (interleaved → half-split rope) on ``w [rows, ...]``:
    decoded weights (a JAX array) or whole encoded rows (numpy bytes, ``gguf.rewrite``)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def _sources(f: GGUFFile, c: Phi3Config, i: int) -> dict[str, list[tuple[str, Callable | None]]]:
    """For layer ``i``: each parameter's GGUF tensors (concatenated in order) and their transform."""
    blk = f"blk.{i}"
    permute = c.architecture == "llama"
    fused_qkv = f"{blk}.attn_qkv.weight" in f.tensors
    qkv = (
        [(f"{blk}.attn_qkv.weight", None)]
        if fused_qkv
        else [
            (
                f"{blk}.attn_q.weight",
                partial(unpermute_rope_rows, n_heads=c.num_heads) if permute else None,
            ),
            (
                f"{blk}.attn_k.weight",
                partial(unpermute_rope_rows, n_heads=c.num_kv_heads) if permute else None,
            ),
            (f"{blk}.attn_v.weight", None),
        ]
    )
    fused_ffn = f"{blk}.ffn_gate.weight" not in f.tensors
    gate_up = (
        [(f"{blk}.ffn_up.weight", None)]
        if fused_ffn
        else [(f"{blk}.ffn_gate.weight", None), (f"{blk}.ffn_up.weight", None)]
    )
    return {
        "attn_norm": [(f"{blk}.attn_norm.weight", None)],
        "qkv": qkv,
        "o_proj": [(f"{blk}.attn_output.weight", None)],
        "ffn_norm": [(f"{blk}.ffn_norm.weight", None)],
        "gate_up": gate_up,
        "down": [(f"{blk}.ffn_down.weight", None)],
    }


def _load(
    f: GGUFFile, name: str, shape: tuple[int, ...], dtype, packed: bool
) -> jax.Array | QuantArray:
    """Tensor ``name`` on the device, checked against ``shape``: dequantized to ``dtype``, or
    kept as a :class:`QuantArray` when ``packed`` (a lossless re-layout of its blocks)."""
    info = f.tensor(name)
    if info.shape != shape and not (len(shape) == 1 and info.shape == (1, *shape)):
        raise GGUFFormatError(
            f"{f.path}: tensor {name!r} has shape {list(info.shape)}, expected {list(shape)} for this "
            "config. The file is inconsistent with its own metadata."
        )
    raw = jax.device_put(_read(f, info))
    if packed:
        return relayout.relayout(raw, info.ggml_type, shape, name=name)
    return dequantize(raw, info.ggml_type, info.shape, dtype, name=name, where=f.path).reshape(
        shape
    )


def _read(f: GGUFFile, info) -> np.ndarray:
    """A tensor's bytes, read (not mapped): pages of a mapped file would stay in the process's
    resident set until unmapped, as much as the whole model file by the end of a load."""
    buf = np.empty(info.nbytes, np.uint8)
    with open(f.path, "rb") as fh:
        fh.seek(info.offset)
        if fh.readinto(memoryview(buf)) != info.nbytes:
            raise GGUFFormatError(
                f"{f.path}: tensor {info.name!r} is cut short; download the file again."
            )
    return buf


def _packed_params(f: GGUFFile, c: Phi3Config, layers: range) -> set[str]:
    """The layer parameters to keep packed over ``layers``: those whose every source tensor
    has a quantized type (a stack needs one representation for all its layers)."""
    out = set()
    for name in LAYER_PARAMS:
        types = {f.tensor(t).ggml_type for i in layers for t, _ in _sources(f, c, i)[name]}
        if types <= relayout.QUANTIZED_TYPES:
            out.add(name)
    return out


def _stack_formats(f: GGUFFile, c: Phi3Config, packed: set[str]) -> dict[str, tuple[int, bool]]:
    """For a ``stacked`` quantized load: each packed parameter's (sub-block, has mins) over all
    layers, so every layer's QuantArray has the same shape."""
    formats = {}
    for name in packed:
        types = {
            f.tensor(t).ggml_type for i in range(c.num_layers) for t, _ in _sources(f, c, i)[name]
        }
        formats[name] = relayout.common_layout(types)
    return formats


def load_weights(
    f: GGUFFile, module: Phi3, *, progress: bool = True, quantized: bool = False, mesh=None
) -> dict[str, np.ndarray]:
    """Fill ``module``'s parameters from ``f``; returns LongRoPE factor arrays if the file has them.

    ``quantized``: quantized matrices stay packed (:class:`QuantArray`, 0.75-1.25 bytes per weight);
    norms and float tensors load as arrays either way. ``mesh``: each tensor goes to its shards
    as soon as it is decoded (:mod:`phijax.sharding`), so no device holds the whole model.
    """
    c = module.config
    shapes = layer_shapes(c)
    total = sum(t.nbytes for t in f.tensors.values())
    bar = tqdm(
        total=total, desc="loading weights", unit="B", unit_scale=True, unit_divisor=1024,
        disable=None if progress else True, leave=False,
    )  # fmt: skip

    def load(name, shape, dtype=module.dtype, may_pack=True):
        packed = quantized and may_pack and f.tensors[name].ggml_type in relayout.QUANTIZED_TYPES
        value = _load(f, name, shape, dtype, packed)
        bar.update(f.tensors[name].nbytes)
        return value

    def cast(value, dtype):
        return value if isinstance(value, QuantArray) else value.astype(dtype)

    def put(value, name, stacked=False):  # onto the mesh with its logical axes' sharding
        return place(value, weight_axes(name, stacked), mesh, c)

    vocab = (c.vocab_size, c.hidden_size)
    module.embed.set_value(put(load("token_embd.weight", vocab), "embed"))
    norm = load("output_norm.weight", (c.hidden_size,), jnp.float32, False)
    module.final_norm.set_value(put(norm, "final_norm"))
    if module.lm_head is not None:
        module.lm_head.set_value(put(load("output.weight", vocab), "lm_head"))
    q_rows, kv_rows = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    part_rows = {"qkv": (q_rows, kv_rows, kv_rows), "gate_up": (c.intermediate_size,) * 2}
    stacked = module.layout == "stacked"
    packed = _packed_params(f, c, range(c.num_layers)) if quantized and stacked else set()
    formats = _stack_formats(f, c, packed)
    for i in range(c.num_layers):
        if quantized and not stacked:
            packed = _packed_params(f, c, range(i, i + 1))
        for param_name, parts in _sources(f, c, i).items():
            target = module.param(param_name, i)
            dtype = jnp.float32 if param_name.endswith("norm") else module.dtype
            pieces = []
            for k, (name, transform) in enumerate(parts):
                # each part of a fused weight is checked too: the rope un-permutation needs its rows
                shape = (
                    shapes[param_name]
                    if len(parts) == 1
                    else (part_rows[param_name][k], *shapes[param_name][1:])
                )
                w = load(name, shape, dtype, param_name in packed)
                pieces.append(jax.tree.map(transform, w) if transform else w)
            if param_name in formats:
                pieces = [relayout.to_layout(p, *formats[param_name]) for p in pieces]
            value = _concatenate(pieces)
            if value.shape != shapes[param_name]:
                raise GGUFFormatError(
                    f"{f.path}: layer {i} {param_name} assembles to {list(value.shape)}, expected "
                    f"{list(shapes[param_name])}."
                )
            if stacked:
                stack = target.get_value()
                if isinstance(stack, jax.ShapeDtypeStruct) or i == 0:  # first layer: allocate
                    like = jax.tree.map(
                        lambda x: jax.ShapeDtypeStruct((c.num_layers, *x.shape), x.dtype),
                        cast(value, dtype),
                    )
                    stack = zeros(like, weight_axes(param_name, True), mesh, c)
                layer = put(cast(value, dtype), param_name)
                stack = _set_layer(stack, jnp.int32(i), layer)
                target.set_value(put(stack, param_name, True))  # no-op unless XLA chose another
            else:
                target.set_value(put(cast(value, dtype), param_name))
    bar.close()
    return {
        kind: f.dequantize(f"rope_factors_{kind}.weight").reshape(-1)
        for kind in ("long", "short")
        if f"rope_factors_{kind}.weight" in f.tensors
    }


def _concatenate(pieces: list) -> jax.Array | QuantArray:
    """Rows of a fused weight's parts, packed (any mix of quantized types) or dense."""
    if len(pieces) == 1:
        return pieces[0]
    if isinstance(pieces[0], QuantArray):
        return relayout.concatenate(pieces)
    return jnp.concatenate(pieces, axis=0)
