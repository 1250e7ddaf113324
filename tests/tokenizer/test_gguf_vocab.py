"""Vocabulary metadata validation and the pieces of the GGUF → tokenizers conversion."""

from __future__ import annotations

import json

import numpy as np
import pytest

from phijax.errors import TokenizerError
from phijax.tokenizer import Tokenizer
from phijax.tokenizer.gguf_vocab import PRE_TOKENIZERS, GGUFVocab, build, spm_merges

GPT2_META = {
    "tokenizer.ggml.model": "gpt2",
    "tokenizer.ggml.pre": "default",
    "tokenizer.ggml.tokens": ["a", "b", "ab", "<|end|>"],
    "tokenizer.ggml.token_type": np.array([1, 1, 1, 3], np.int32),
    "tokenizer.ggml.merges": ["a b"],
    "tokenizer.ggml.eos_token_id": 3,
}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tokenizer.ggml.model": "rwkv"}, "'rwkv' is not supported"),
        ({"tokenizer.ggml.model": None}, "tokenizer.ggml.model = None"),
        ({"tokenizer.ggml.tokens": []}, "tokens is missing or empty"),
        ({"tokenizer.ggml.pre": "mystery-bpe"}, "pre = 'mystery-bpe' is not supported; known:"),
        ({"tokenizer.ggml.merges": None}, "needs tokenizer.ggml.merges"),
        (
            {"tokenizer.ggml.token_type": np.array([1], np.int32)},
            "token_type has 1 entries for 4 tokens",
        ),
        ({"tokenizer.ggml.scores": [0.0]}, "scores has 1 entries for 4 tokens"),
        ({"tokenizer.ggml.eos_token_id": 99}, "eos_token_id = 99 is not a token id"),
    ],
)
def test_bad_metadata_is_named(changes, message):
    meta = {**GPT2_META, **changes}
    with pytest.raises(TokenizerError, match=message.replace("(", r"\(")):
        build(GGUFVocab.from_metadata(meta, "model.gguf"))


def test_tiny_gpt2_vocab():
    tok = build(GGUFVocab.from_metadata(GPT2_META, "model.gguf"))
    assert tok.encode("ab<|end|>a").ids == [2, 3, 0]


def test_spm_merges_rank_by_merged_score():
    vocab = {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5}
    scores = [0, 0, 0, -2.0, -1.0, -3.0]
    # "bc" scores highest, then "ab", then "abc" (reachable two ways)
    assert spm_merges(vocab, scores) == [("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c")]


# "It's 2024!  ok\n" as each family's regex splits it (llama.cpp's llama-vocab.cpp patterns)
SPLITS = {
    "gpt2": ["It", "'s", " 2024", "!", " ", " ok", "\n"],  # a number whole, with its space
    "llama3": ["It", "'s", " ", "202", "4", "!", " ", " ok", "\n"],  # digits by three
    "digits": ["It", "'s", " ", "2", "0", "2", "4", "!", " ", " ok", "\n"],  # digit by digit
    "gpt-4o": ["It's", " ", "202", "4", "!", " ", " ok", "\n"],  # a contraction on its word
}
FAMILY = {"default": "gpt2", "gpt2": "gpt2", "gpt-2": "gpt2", "phi-2": "gpt2", "llama-bpe": "llama3",
          "llama3": "llama3", "dbrx": "llama3", "smollm": "digits", "qwen2": "digits", "gpt-4o": "gpt-4o"}  # fmt: skip


def test_known_pre_tokenizers_split_as_their_family():
    assert set(FAMILY) == set(PRE_TOKENIZERS)
    text = "It's 2024!  ok\n"
    # "ba" is a token no merge reaches: only llama 3's vocabularies take whole-word tokens
    # before merging (llama.cpp's ignore_merges)
    meta = {**GPT2_META, "tokenizer.ggml.tokens": [*GPT2_META["tokenizer.ggml.tokens"], "ba"],
            "tokenizer.ggml.token_type": np.array([1, 1, 1, 3, 1], np.int32)}  # fmt: skip
    for name in PRE_TOKENIZERS:
        tok = build(GGUFVocab.from_metadata({**meta, "tokenizer.ggml.pre": name}, "m"))
        pieces = [text[a:b] for _, (a, b) in tok.pre_tokenizer.pre_tokenize_str(text)]
        assert pieces == SPLITS[FAMILY[name]], name
        assert tok.encode("ba").ids == ([4] if name in ("llama-bpe", "llama3") else [1, 0]), name


def test_file_without_a_vocabulary(tmp_path):
    import gguf

    path = tmp_path / "novocab.gguf"
    w = gguf.GGUFWriter(str(path), "phi3")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    with pytest.raises(TokenizerError, match=r"novocab\.gguf: tokenizer\.ggml\.model = None"):
        Tokenizer.from_gguf(path)


def test_from_file_reads_tokenizer_config(phi3_tokenizer_json, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes(phi3_tokenizer_json.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": {"content": "<s>"},
                "eos_token": "</s>",
                "add_bos_token": False,
                "chat_template": "{{ messages[0]['content'] }}!",
            }
        )
    )
    tok = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, False)
    assert tok.apply_chat_template([{"role": "user", "content": "hey"}]) == "hey!"
    assert Tokenizer.from_file(phi3_tokenizer_json).add_bos  # from the post-processor
    spec = json.loads(phi3_tokenizer_json.read_text(encoding="utf-8"))
    (tmp_path / "tokenizer_config.json").unlink()
    (tmp_path / "tokenizer.json").write_text(json.dumps({**spec, "post_processor": None}))
    tok = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, False)  # found by name, not added


def test_from_file_rejects_garbage(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match=r"not a valid tokenizer\.json"):
        Tokenizer.from_file(bad)


def test_no_template_is_a_clear_error(smollm2_gguf, gemma3_gguf):
    assert Tokenizer.from_gguf(smollm2_gguf).apply_chat_template([{"role": "user", "content": "x"}])
    with pytest.raises(TokenizerError, match="has no chat template; pass template="):
        Tokenizer.from_gguf(gemma3_gguf).apply_chat_template([{"role": "user", "content": "x"}])


def test_special_ids_and_stop_ids(smollm2_gguf, gemma3_gguf):
    smol = Tokenizer.from_gguf(smollm2_gguf)
    assert (smol.bos_id, smol.eos_id, smol.add_bos) == (1, 2, False)
    assert smol.token_to_id("<|im_end|>") in smol.stop_ids
    gemma = Tokenizer.from_gguf(gemma3_gguf)
    assert (gemma.bos_id, gemma.eos_id, gemma.add_bos) == (2, 1, True)
    assert gemma.token_to_id("<end_of_turn>") in gemma.stop_ids
    assert gemma.vocab_size == 262144 and gemma.id_to_token(2) == "<bos>"
