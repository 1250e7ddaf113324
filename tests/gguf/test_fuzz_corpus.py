"""Past failures of ``benchmarks/fuzz_gguf.py``, rebuilt from recipes: each must be a PhijaxError.

Each recipe is a tiny, otherwise valid model file (written with ``gguf.GGUFWriter``)
with one hostile change, and the error class, stage and message it must end in.
They once escaped as raw exceptions (TypeError, ValueError, ZeroDivisionError,
tokenizers' bare Exception), or passed silently with a model that was wrong
(token ids past the embedding rows, layer counts the file does not hold).
Nothing binary is committed: the files are generated here.
"""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGUFValueType as V

import phijax
from phijax.errors import ConfigError, GGUFFormatError, TokenizerError, UnsupportedError
from phijax.gguf import GGUFFile
from phijax.gguf.synthetic import SyntheticVocab

HIDDEN, FFN, HEADS, KV_HEADS, LAYERS, VOCAB = 16, 32, 2, 1, 2, 264
HEAD_DIM = HIDDEN // HEADS
DELETE = None


def _metadata(arch: str) -> dict[str, tuple]:
    vocab = SyntheticVocab.make(VOCAB)
    return {
        f"{arch}.context_length": (64, V.UINT32),
        f"{arch}.embedding_length": (HIDDEN, V.UINT32),
        f"{arch}.feed_forward_length": (FFN, V.UINT32),
        f"{arch}.block_count": (LAYERS, V.UINT32),
        f"{arch}.attention.head_count": (HEADS, V.UINT32),
        f"{arch}.attention.head_count_kv": (KV_HEADS, V.UINT32),
        f"{arch}.attention.layer_norm_rms_epsilon": (1e-5, V.FLOAT32),
        f"{arch}.rope.freq_base": (10000.0, V.FLOAT32),
        "tokenizer.ggml.model": ("llama", V.STRING),
        "tokenizer.ggml.tokens": (list(vocab.tokens), V.ARRAY, V.STRING),
        "tokenizer.ggml.scores": (list(vocab.scores), V.ARRAY, V.FLOAT32),
        "tokenizer.ggml.token_type": (list(vocab.types), V.ARRAY, V.INT32),
        "tokenizer.ggml.bos_token_id": (1, V.UINT32),
        "tokenizer.ggml.eos_token_id": (2, V.UINT32),
    }


def _tensors(arch: str) -> dict[str, tuple[int, ...]]:
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    shapes = {"token_embd.weight": (VOCAB, HIDDEN), "output_norm.weight": (HIDDEN,)}
    for i in range(LAYERS):
        b = f"blk.{i}"
        shapes |= {f"{b}.attn_norm.weight": (HIDDEN,), f"{b}.ffn_norm.weight": (HIDDEN,)}
        shapes |= {f"{b}.attn_output.weight": (HIDDEN, q), f"{b}.ffn_down.weight": (HIDDEN, FFN)}
        if arch == "phi3":
            shapes |= {f"{b}.attn_qkv.weight": (q + 2 * kv, HIDDEN)}
            shapes |= {f"{b}.ffn_up.weight": (2 * FFN, HIDDEN)}
        else:
            shapes |= {f"{b}.attn_q.weight": (q, HIDDEN), f"{b}.attn_k.weight": (kv, HIDDEN)}
            shapes |= {f"{b}.attn_v.weight": (kv, HIDDEN), f"{b}.ffn_gate.weight": (FFN, HIDDEN)}
            shapes |= {f"{b}.ffn_up.weight": (FFN, HIDDEN)}
    return shapes


def write_model(path: Path, arch: str = "phi3", meta=None, tensors=None) -> Path:
    """A tiny f32 model of ``arch`` with metadata and tensor-shape overrides (None deletes);
    a tensor given as an array is written as is."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch)
    entries = _metadata(arch) | (meta or {})
    for key, entry in entries.items():
        if entry is not DELETE:
            w.add_key_value(key, *entry)
    for name, shape in (_tensors(arch) | (tensors or {})).items():
        if isinstance(shape, np.ndarray):
            w.add_tensor(name, shape)
        elif shape is not DELETE:
            w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _gpt2(tokens: list[str], merges, **more) -> dict:
    return {
        "tokenizer.ggml.model": ("gpt2", V.STRING),
        "tokenizer.ggml.tokens": (tokens, V.ARRAY, V.STRING),
        "tokenizer.ggml.scores": DELETE,
        "tokenizer.ggml.token_type": DELETE,
        "tokenizer.ggml.bos_token_id": (0, V.UINT32),
        "tokenizer.ggml.eos_token_id": (1, V.UINT32),
        "tokenizer.ggml.merges": merges,
        **more,
    }


_LONGROPE = {
    "rope_factors_long.weight": (HEAD_DIM // 2,),
    "rope_factors_short.weight": (HEAD_DIM // 2,),
}
_ORIG_CTX = "phi3.rope.scaling.original_context_length"

# id: (arch, metadata overrides, tensor overrides, stage, error, message)
RECIPES = {
    # raw ValueError: int(nan) on an integer key
    "block-count-nan": ("phi3", {"phi3.block_count": (math.nan, V.FLOAT32)}, {}, "config", ConfigError, "phi3.block_count = nan"),
    # a lying layer count: load ran for minutes building 200k layers of a 2-layer file
    "block-count-beyond-tensors": ("llama", {"llama.block_count": (200_000, V.UINT32)}, {}, "config", ConfigError, "layer tensors are blk.0 to blk.1"),
    # silent: token ids 200.. would index past the embedding rows
    "embedding-rows-fewer-than-tokens": ("phi3", {}, {"token_embd.weight": (200, HIDDEN)}, "config", ConfigError, "index past the embedding"),
    "embedding-length-not-the-embedding": ("phi3", {"phi3.embedding_length": (2 * HIDDEN, V.UINT32)}, {}, "config", ConfigError, "phi3.embedding_length = 32 but tensor 'token_embd.weight'"),
    # ZeroDivisionError: ln(1) in the default LongRoPE attention factor
    "longrope-original-context-1": ("phi3", {_ORIG_CTX: (1, V.UINT32)}, _LONGROPE, "config", ConfigError, f"needs {_ORIG_CTX}"),
    # ValueError from the rope module, after the weights were loaded
    "longrope-factors-wrong-length": ("phi3", {_ORIG_CTX: (32, V.UINT32)}, {**_LONGROPE, "rope_factors_long.weight": (3,)}, "config", ConfigError, "rope_factors_long.weight"),
    # accepted: a negative original context
    "original-context-negative": ("phi3", {_ORIG_CTX: (-4096, V.INT32)}, _LONGROPE, "config", ConfigError, "at least 2"),
    # ValueError: the truth value of an array (rope.scaling.type == "linear")
    "rope-scaling-type-array": ("phi3", {"phi3.rope.scaling.type": ([1, 2], V.ARRAY, V.UINT8)}, {}, "config", ConfigError, "phi3.rope.scaling.type = [1, 2] must be a string"),
    # silently ignored: yarn scaling ran unscaled
    "rope-scaling-yarn": ("llama", {"llama.rope.scaling.type": ("yarn", V.STRING)}, {}, "config", UnsupportedError, "llama.rope.scaling.type = 'yarn' is not supported"),
    # ResourceError claiming terabytes of KV cache, rather than naming the key
    "key-length-absurd": ("phi3", {"phi3.attention.key_length": (2**20, V.UINT32)}, {}, "config", ConfigError, "'blk.0.attn_qkv.weight' has shape [32, 16] but the metadata"),
    # TypeError: len() of a float
    "scores-scalar": ("phi3", {"tokenizer.ggml.scores": (1.0, V.FLOAT32)}, {}, "tokenizer", TokenizerError, "tokenizer.ggml.scores = 1.0 must be an array"),
    # ValueError: int("x")
    "token-type-strings": ("phi3", {"tokenizer.ggml.token_type": (["x"] * VOCAB, V.ARRAY, V.STRING)}, {}, "tokenizer", TokenizerError, "tokenizer.ggml.token_type"),
    # silent: NaN scores order the merges arbitrarily
    "scores-nan": ("phi3", {"tokenizer.ggml.scores": ([math.nan] * VOCAB, V.ARRAY, V.FLOAT32)}, {}, "tokenizer", TokenizerError, "NaN"),
    "tokens-not-strings": ("phi3", {"tokenizer.ggml.tokens": (list(range(VOCAB)), V.ARRAY, V.INT32)}, {}, "tokenizer", TokenizerError, "tokenizer.ggml.tokens"),
    # ValueError: the truth value of an array
    "add-bos-array": ("phi3", {"tokenizer.ggml.add_bos_token": ([1, 1], V.ARRAY, V.UINT8)}, {}, "tokenizer", TokenizerError, "tokenizer.ggml.add_bos_token = [1, 1] must be a boolean"),
    # TypeError: unhashable list as a pre-tokenizer name
    "gpt2-pre-array": ("llama", _gpt2(["a", "b", "ab"], (["a b"], V.ARRAY, V.STRING), **{"tokenizer.ggml.pre": (["gpt2"], V.ARRAY, V.STRING)}), {}, "tokenizer", TokenizerError, "tokenizer.ggml.pre = ['gpt2'] must be a string"),
    # tokenizers' bare Exception: a merge of tokens missing from the vocabulary
    "gpt2-merge-unknown-tokens": ("llama", _gpt2(["a", "b", "ab"], (["zz qq"], V.ARRAY, V.STRING)), {}, "tokenizer", TokenizerError, "out of vocabulary"),
    "gpt2-merge-without-space": ("llama", _gpt2(["a", "b", "ab"], (["ab"], V.ARRAY, V.STRING)), {}, "tokenizer", TokenizerError, "two tokens separated by a space"),
    # TypeError from jnp.concatenate: a layer-1 gate with swapped dims (layer 0 is checked by the config)
    "llama-gate-transposed": ("llama", {}, {"blk.1.ffn_gate.weight": (HIDDEN, FFN)}, "load", GGUFFormatError, "'blk.1.ffn_gate.weight' has shape [16, 32], expected [32, 16]"),
    # ZeroDivisionError in the q/k row un-permutation: a q with one row
    "llama-q-one-row": ("llama", {}, {"blk.1.attn_q.weight": (1, HIDDEN)}, "load", GGUFFormatError, "'blk.1.attn_q.weight' has shape [1, 16]"),
    # KeyError from the quantized loader's type survey: a layer-1 tensor missing
    "quantized-missing-tensor": ("llama", {}, {"blk.1.attn_v.weight": DELETE}, "load-quantized", GGUFFormatError, "no tensor named 'blk.1.attn_v.weight'"),
    # a known ggml type without a kernel: the message lacked the file
    "unsupported-type-names-file": ("phi3", {}, {"output_norm.weight": np.zeros(HIDDEN, np.int8)}, "load", UnsupportedError, "'output_norm.weight': ggml type I8 cannot be dequantized"),
}  # fmt: skip


def _run(stage: str, path: Path):
    if stage == "config":
        return phijax.Phi3Config.from_gguf(GGUFFile(path))
    if stage == "tokenizer":
        return phijax.Tokenizer.from_gguf(path)
    return phijax.load(path, progress=False, quantized=stage == "load-quantized")


def test_the_unmutated_recipes_load(tmp_path):
    for arch in ("phi3", "llama"):
        path = write_model(tmp_path / f"{arch}.gguf", arch)
        config = phijax.Phi3Config.from_gguf(GGUFFile(path))
        assert (config.num_layers, config.vocab_size, config.num_kv_heads) == (LAYERS, VOCAB, 1)
        assert phijax.Tokenizer.from_gguf(path).encode("hi", add_bos=False)


@pytest.mark.parametrize("recipe", RECIPES)
def test_past_fuzz_failure_is_a_phijax_error(tmp_path, recipe):
    arch, meta, tensors, stage, error, message = RECIPES[recipe]
    path = write_model(tmp_path / f"{recipe}.gguf", arch, meta, tensors)
    with pytest.raises(error) as info:
        _run(stage, path)
    assert message in str(info.value)
    assert str(path) in str(info.value)
