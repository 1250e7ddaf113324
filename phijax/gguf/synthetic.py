"""Write synthetic ``phi3`` GGUF files with random weights, of any shape and ggml type.

For tests (tiny models whose every byte we control), reference fixtures (the
same weights fed to HF transformers) and benchmarks (full-size shapes). Files
are written with ``gguf.GGUFWriter``; quantized tensors come from
``gguf.quants.quantize`` where it supports the type, otherwise from random
well-formed blocks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from phijax.config import Phi3Config
from phijax.errors import ConfigError

_QUANTIZABLE = {
    GGMLQuantizationType.F32,
    GGMLQuantizationType.F16,
    GGMLQuantizationType.BF16,
    GGMLQuantizationType.Q4_0,
    GGMLQuantizationType.Q4_1,
    GGMLQuantizationType.Q5_0,
    GGMLQuantizationType.Q5_1,
    GGMLQuantizationType.Q8_0,
}

# Matrix kinds write_phi3's ``qtypes`` can set: tensor names without ``blk.N.`` and ``.weight``.
MATRIX_KINDS = ("token_embd", "attn_qkv", "attn_output", "ffn_up", "ffn_down", "output")


@dataclass(frozen=True)
class SyntheticVocab:
    """A small SentencePiece-style vocabulary: specials, the 256 byte tokens, then letters."""

    tokens: tuple[str, ...]
    scores: tuple[float, ...]
    types: tuple[int, ...]

    @classmethod
    def make(cls, size: int) -> SyntheticVocab:
        specials = [("<unk>", 2), ("<s>", 3), ("</s>", 3)]
        byte_tokens = [(f"<0x{b:02X}>", 6) for b in range(256)]
        words = [(f"▁w{i}", 1) for i in range(max(0, size - len(specials) - 256))]
        entries = (specials + byte_tokens + words)[:size]
        return cls(
            tokens=tuple(t for t, _ in entries),
            scores=tuple(-float(i) for i in range(len(entries))),
            types=tuple(k for _, k in entries),
        )


def random_blocks(
    rng: np.random.Generator, qtype: GGMLQuantizationType, n_blocks: int
) -> np.ndarray:
    """Random well-formed blocks ``uint8 [n_blocks, type_size]``: random payload, finite small f16 scales.

    Every ggml block type keeps its f16 scales (d, dmin) at the start, except
    Q2_K/Q3_K/Q6_K which keep them at the end; both places are overwritten.
    """
    _, type_size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    scales = (rng.standard_normal((n_blocks, 2)) * 0.01).astype(np.float16).view(np.uint8)
    if qtype in (GGMLQuantizationType.Q2_K,):
        blocks[:, -4:] = scales
    elif qtype in (GGMLQuantizationType.Q3_K, GGMLQuantizationType.Q6_K):
        blocks[:, -2:] = scales[:, :2]
    else:
        blocks[:, :4] = scales[:, : min(4, type_size)]
    return blocks


def encode_tensor(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    qtype: GGMLQuantizationType,
    scale: float = 0.05,
) -> np.ndarray:
    """A random tensor of numpy ``shape`` encoded as ``qtype``: float array or ``uint8 [..., row_bytes]``."""
    if qtype in _QUANTIZABLE:
        data = (rng.standard_normal(shape) * scale).astype(np.float32)
        if qtype == GGMLQuantizationType.F32:
            return data
        if qtype == GGMLQuantizationType.F16:
            return data.astype(np.float16)
        return gguf.quants.quantize(data, qtype)
    block, type_size = GGML_QUANT_SIZES[qtype]
    if shape[-1] % block:
        raise ConfigError(
            f"row length {shape[-1]} is not a multiple of the {qtype.name} block size {block}."
        )
    n_blocks = int(np.prod(shape)) // block
    return random_blocks(rng, qtype, n_blocks).reshape(*shape[:-1], shape[-1] // block * type_size)


def write_phi3(
    path: str | os.PathLike,
    config: Phi3Config,
    *,
    qtype: GGMLQuantizationType = GGMLQuantizationType.F32,
    qtypes: Mapping[str, GGMLQuantizationType] | None = None,
    seed: int = 0,
    chat_template: str | None = None,
    name: str = "phijax synthetic phi3",
) -> None:
    """Write a ``phi3`` GGUF with ``config``'s shapes and random weights.

    Matrices use ``qtype`` (norms stay F32, as converters do), except those
    whose kind is a key of ``qtypes``: the tensor name without ``blk.N.`` and
    ``.weight`` (``token_embd``, ``attn_qkv``, ``attn_output``, ``ffn_up``,
    ``ffn_down``, ``output``), e.g. ``{"ffn_down": Q6_K, "output": Q6_K}`` for
    a Q4_K_M-like layout. LongRoPE configs get random short/long factor
    tensors. The vocabulary is :class:`SyntheticVocab` (``config.vocab_size``
    tokens). Encoded tensors are held until written, so memory peaks at about
    the file's size. ``name`` is ``general.name``; llama.cpp applies Phi-3
    vocabulary fixes to names containing "phi3" or "phi-3", which need tokens
    such as ``<|endoftext|>`` that this vocabulary lacks, so files meant for
    llama.cpp need a name without them.
    """
    qtypes = dict(qtypes or {})
    unknown = sorted(set(qtypes) - set(MATRIX_KINDS))
    if unknown:
        raise ConfigError(
            f"qtypes keys {unknown} are not matrix kinds; use some of {', '.join(MATRIX_KINDS)}."
        )
    rng = np.random.default_rng(seed)
    c = config
    w = gguf.GGUFWriter(os.fspath(path), "phi3")
    w.add_name(name)
    w.add_context_length(c.context_length)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_block_count(c.num_layers)
    w.add_head_count(c.num_heads)
    w.add_head_count_kv(c.num_kv_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.rotary_dim)
    w.add_rope_freq_base(c.rope_theta)
    if c.head_dim * c.num_heads != c.hidden_size:
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
    if c.sliding_window:
        w.add_sliding_window(c.sliding_window)
    if c.rope_scaling == "longrope":
        w.add_rope_scaling_orig_ctx_len(c.original_context_length)
        w.add_rope_scaling_attn_factors(c.rope_attn_factor)
    vocab = SyntheticVocab.make(c.vocab_size)
    w.add_tokenizer_model("llama")
    w.add_token_list(list(vocab.tokens))
    w.add_token_scores(list(vocab.scores))
    w.add_token_types(list(vocab.types))
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    def add(
        name: str, shape: tuple[int, ...], tensor_type: GGMLQuantizationType, scale: float = 0.05
    ):
        kind = name.split(".")[2] if name.startswith("blk.") else name.split(".")[0]
        tensor_type = qtypes.get(kind, tensor_type)
        data = encode_tensor(rng, shape, tensor_type, scale)
        raw_dtype = tensor_type if data.dtype == np.uint8 else None
        w.add_tensor(name, data, raw_dtype=raw_dtype)

    def norm(name: str, size: int) -> None:
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(size)).astype(np.float32))

    q_rows, kv_rows = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    add("token_embd.weight", (c.vocab_size, c.hidden_size), qtype, 1.0)
    if c.rope_scaling == "longrope":
        for kind in ("long", "short"):
            factors = rng.uniform(1.0, 8.0, c.rotary_dim // 2).astype(np.float32)
            w.add_tensor(f"rope_factors_{kind}.weight", factors)
    for i in range(c.num_layers):
        norm(f"blk.{i}.attn_norm.weight", c.hidden_size)
        add(f"blk.{i}.attn_qkv.weight", (q_rows + 2 * kv_rows, c.hidden_size), qtype)
        add(f"blk.{i}.attn_output.weight", (c.hidden_size, q_rows), qtype)
        norm(f"blk.{i}.ffn_norm.weight", c.hidden_size)
        add(f"blk.{i}.ffn_up.weight", (2 * c.intermediate_size, c.hidden_size), qtype)
        add(f"blk.{i}.ffn_down.weight", (c.hidden_size, c.intermediate_size), qtype)
    norm("output_norm.weight", c.hidden_size)
    if not c.tie_word_embeddings:
        add("output.weight", (c.vocab_size, c.hidden_size), qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
