"""GGUF tensors → the Phi-3 module's stacked parameters, one tensor at a time, on the device.

Each tensor's raw bytes go to the device and are dequantized there by the JAX
kernels. The module arrives with abstract parameters (shapes and dtypes only):
a per-layer array is put in as it is decoded; a ``[layers, ...]`` stack is
allocated at its first layer and filled with donated updates. So the model
never exists twice in memory.

Layouts (reference.md §2): ``phi3`` files carry fused ``attn_qkv`` (rows q, k,
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
from phijax.gguf.dequant import dequantize
from phijax.gguf.reader import GGUFFile
from phijax.model.phi3 import Phi3, layer_shapes


@partial(jax.jit, donate_argnums=0)
def _set_layer(stack: jax.Array, index: jax.Array, value: jax.Array) -> jax.Array:
    return stack.at[index].set(value.astype(stack.dtype))


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
            (f"{blk}.attn_q.weight", partial(unpermute_rope_rows, n_heads=c.num_heads) if permute else None),
            (f"{blk}.attn_k.weight", partial(unpermute_rope_rows, n_heads=c.num_kv_heads) if permute else None),
            (f"{blk}.attn_v.weight", None),
        ]
    )
    fused_ffn = f"{blk}.ffn_gate.weight" not in f.tensors
    gate_up = [(f"{blk}.ffn_up.weight", None)] if fused_ffn else [(f"{blk}.ffn_gate.weight", None), (f"{blk}.ffn_up.weight", None)]
    return {
        "attn_norm": [(f"{blk}.attn_norm.weight", None)],
        "qkv": qkv,
        "o_proj": [(f"{blk}.attn_output.weight", None)],
        "ffn_norm": [(f"{blk}.ffn_norm.weight", None)],
        "gate_up": gate_up,
        "down": [(f"{blk}.ffn_down.weight", None)],
    }


def _load(f: GGUFFile, name: str, shape: tuple[int, ...] | None, dtype) -> jax.Array:
    """Tensor ``name`` dequantized on the device; checked against ``shape`` unless None."""
    info = f.tensor(name)
    shape = shape or info.shape
    if info.shape != shape and not (len(shape) == 1 and info.shape == (1, *shape)):
        raise GGUFFormatError(
            f"{f.path}: tensor {name!r} has shape {list(info.shape)}, expected {list(shape)} for this "
            "config. The file is inconsistent with its own metadata."
        )
    raw = jax.device_put(np.asarray(f.raw(name)))
    return dequantize(raw, info.ggml_type, info.shape, dtype, name=name).reshape(shape)


def load_weights(f: GGUFFile, module: Phi3, *, progress: bool = True) -> dict[str, np.ndarray]:
    """Fill ``module``'s parameters from ``f``; returns LongRoPE factor arrays if the file has them."""
    c = module.config
    shapes = layer_shapes(c)
    total = 2 + (0 if c.tie_word_embeddings else 1) + c.num_layers * len(shapes)
    bar = tqdm(total=total, desc="loading weights", unit="tensor", disable=None if progress else True, leave=False)

    def put(param, value):
        param.set_value(value.astype(param.get_value().dtype))
        bar.update()

    put(module.embed, _load(f, "token_embd.weight", (c.vocab_size, c.hidden_size), module.dtype))
    put(module.final_norm, _load(f, "output_norm.weight", (c.hidden_size,), jnp.float32))
    if module.lm_head is not None:
        put(module.lm_head, _load(f, "output.weight", (c.vocab_size, c.hidden_size), module.dtype))
    for i in range(c.num_layers):
        for param_name, parts in _sources(f, c, i).items():
            target = module.param(param_name, i)
            pieces = []
            for name, transform in parts:
                w = _load(f, name, shapes[param_name] if len(parts) == 1 else None, target.get_value().dtype)
                pieces.append(transform(w) if transform else w)
            value = pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=0)
            if value.shape != shapes[param_name]:
                raise GGUFFormatError(
                    f"{f.path}: layer {i} {param_name} assembles to {list(value.shape)}, expected "
                    f"{list(shapes[param_name])}."
                )
            if module.layout == "stacked":
                stack = target.get_value()
                if isinstance(stack, jax.ShapeDtypeStruct):  # first layer: allocate the stack
                    stack = jnp.zeros(stack.shape, stack.dtype)
                target.set_value(_set_layer(stack, jnp.int32(i), value))
            else:
                target.set_value(value.astype(target.get_value().dtype))
            bar.update()
    bar.close()
    return {
        kind: f.dequantize(f"rope_factors_{kind}.weight").reshape(-1)
        for kind in ("long", "short")
        if f"rope_factors_{kind}.weight" in f.tensors
    }
