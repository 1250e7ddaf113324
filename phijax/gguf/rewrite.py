"""Rewrite a ``llama``-architecture GGUF into the ``phi3`` layout, without requantizing.

llama files carry separate q/k/v and gate/up tensors, with q and k rows
permuted for interleaved rope; phi3 files carry fused ``attn_qkv`` (rows q,
k, v, half-split rope) and ``ffn_up`` (rows gate, up). Quantization blocks run
along rows, so un-permuting and fusing move whole encoded rows: the result
holds the very same numbers. Where the parts of a fused tensor have different
ggml types, the fused tensor is written as F32 (exact, larger).

Used to check that phijax's two load paths agree on real weights, and to hand
llama-family models to tools that expect phi3 files.
"""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from phijax.errors import UnsupportedError
from phijax.gguf.reader import GGUFFile
from phijax.gguf.weights import unpermute_rope_rows


def _encoded_rows(f: GGUFFile, name: str) -> np.ndarray:
    """Tensor ``name`` as ``[rows, row_bytes]`` encoded bytes (or ``[rows, cols]`` floats)."""
    info = f.tensor(name)
    block, type_size = GGML_QUANT_SIZES[info.ggml_type]
    row_bytes = info.shape[-1] // block * type_size
    return f.raw(name).reshape(-1, row_bytes)


def _fuse(
    f: GGUFFile, parts: list[tuple[str, int | None]]
) -> tuple[np.ndarray, GGMLQuantizationType]:
    """Concatenate the rows of ``parts`` (name, heads to un-permute or None) into one tensor."""
    types = {f.tensor(name).ggml_type for name, _ in parts}
    same = len(types) == 1
    pieces = []
    for name, heads in parts:
        rows = _encoded_rows(f, name) if same else f.dequantize(name)
        pieces.append(unpermute_rope_rows(rows, heads) if heads else rows)
    return np.concatenate(pieces), types.pop() if same else GGMLQuantizationType.F32


def llama_to_phi3(src: str | os.PathLike | GGUFFile, dst: str | os.PathLike) -> Path:
    """Write ``src`` (a llama GGUF) to ``dst`` as a phi3 GGUF with the same weights and vocabulary."""
    f = src if isinstance(src, GGUFFile) else GGUFFile(src)
    if f.architecture != "llama":
        raise UnsupportedError(
            f"{f.path}: architecture {f.architecture!r}; llama_to_phi3 rewrites llama files only."
        )
    meta = f.metadata
    n_layers = int(meta["llama.block_count"])
    heads = int(meta["llama.attention.head_count"])
    kv_heads = int(meta.get("llama.attention.head_count_kv", heads))
    w = gguf.GGUFWriter(os.fspath(dst), "phi3")
    for key, value in meta.items():
        if key in ("general.architecture", "general.alignment"):
            continue
        vtype = f.metadata_types[key]
        new_key = "phi3." + key.removeprefix("llama.") if key.startswith("llama.") else key
        if vtype == GGUFValueType.ARRAY:
            w.add_array(new_key, [v.item() if isinstance(v, np.generic) else v for v in value])
        else:
            w.add_key_value(new_key, value, vtype)

    def add(name: str, data: np.ndarray, qtype: GGMLQuantizationType) -> None:
        w.add_tensor(name, data, raw_dtype=qtype if data.dtype == np.uint8 else None)

    def copy(name: str) -> None:
        add(name, _encoded_rows(f, name), f.tensor(name).ggml_type)

    for name in f.tensors:
        if not name.startswith("blk."):
            copy(name)
    for i in range(n_layers):
        b = f"blk.{i}"
        copy(f"{b}.attn_norm.weight")
        qkv = [
            (f"{b}.attn_q.weight", heads),
            (f"{b}.attn_k.weight", kv_heads),
            (f"{b}.attn_v.weight", None),
        ]
        add(f"{b}.attn_qkv.weight", *_fuse(f, qkv))
        copy(f"{b}.attn_output.weight")
        copy(f"{b}.ffn_norm.weight")
        add(
            f"{b}.ffn_up.weight",
            *_fuse(f, [(f"{b}.ffn_gate.weight", None), (f"{b}.ffn_up.weight", None)]),
        )
        copy(f"{b}.ffn_down.weight")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(dst)
