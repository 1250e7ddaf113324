"""Phi-3's real vocabulary: Microsoft's Phi-3-mini-4k GGUF header, as llama.cpp ships it.

Plain text is checked against llama.cpp's own vectors (``test_llamacpp_vectors``);
here: the vocabulary's shape, the added turn tokens and the whitespace they
swallow, the file's chat template, and the ``tokenizer.json`` route.
"""

from __future__ import annotations

import pytest

from phijax import pypi_models
from phijax.gguf import GGUFFile
from phijax.tokenizer import Tokenizer

SEED_PROMPT = "<|user|>\nWrite a haiku about ice hockey<|end|>\n<|assistant|>"
# Phi-3's added tokens (id, text): all control tokens; the vocabulary pads to 32064 rows.
PHI3_ADDED = [
    (32000, "<|endoftext|>"),
    (32001, "<|assistant|>"),
    *[(32001 + i, f"<|placeholder{i}|>") for i in range(1, 5)],
    (32006, "<|system|>"),
    (32007, "<|end|>"),
    (32008, "<|placeholder5|>"),
    (32009, "<|placeholder6|>"),
    (32010, "<|user|>"),
]
# Text with special tokens, and what it must be: token ids, and plain-text fragments encoded
# on their own. Like Phi-3's tokenizer.json (and llama.cpp for phi3), every added token but
# <|endoftext|> swallows the whitespace after it, as does </s>; <s> and <unk> do not.
SPECIAL_CASES = [
    (SEED_PROMPT, [32010, "Write a haiku about ice hockey", 32007, 32001]),
    (
        "<|system|>You are terse.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\nHello.<|end|>\n<|endoftext|>",
        [32006, "You are terse.", 32007, 32010, "Hi!", 32007, 32001, "Hello.", 32007, 32000],
    ),
    ("<|end|><|end|>  <|user|>   x", [32007, 32007, 32010, "x"]),
    ("<|endoftext|>  after", [32000, "  after"]),
    ("</s> ends, <s> begins, <unk> unknown", [2, "ends, ", 1, " begins, ", 0, " unknown"]),
    ("a <|placeholder3|>\n\tb", ["a ", 32004, "b"]),
]
TEXTS = [
    *(text for text, _ in SPECIAL_CASES),
    "  leading spaces, trailing  ",
    "Émilie's café costs 3.50€ — naïve 日本語のテキスト 🏒🥅 ok",
    "def f(x):\n\treturn x ** 2  # square\n",
    "\n\n\n",
    "𐀀 Linear B and \U0010fffd private use",
    "a" * 300,
    "",
]


def _plain(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text, add_bos=False, parse_special=False)


def test_vocabulary_is_llama2_plus_phi3_tokens(phi3_tokenizer, phi3_vocab_gguf):
    tok = phi3_tokenizer
    assert tok.vocab_size == 32064
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 32000, True)
    assert {32000, 32007} <= set(tok.stop_ids)
    for i, text in PHI3_ADDED:
        assert tok.id_to_token(i) == text and tok.token_to_id(text) == i
    llama = GGUFFile(pypi_models.fetch("llama-spm-vocab")).metadata["tokenizer.ggml.tokens"]
    phi3 = GGUFFile(phi3_vocab_gguf).metadata["tokenizer.ggml.tokens"]
    assert phi3[:32000] == llama  # Phi-3 kept Llama-2's SentencePiece pieces and ids


@pytest.mark.parametrize(("text", "parts"), SPECIAL_CASES)
def test_special_tokens_and_the_whitespace_they_swallow(phi3_tokenizer, text, parts):
    tok = phi3_tokenizer
    expected = [
        p for part in parts for p in ([part] if isinstance(part, int) else _plain(tok, part))
    ]
    assert tok.encode(text, add_bos=False) == expected
    assert tok.encode(text) == [1, *expected]
    plain = _plain(tok, text)  # parse_special=False: the markers are ordinary text
    assert not {p for p in parts if isinstance(p, int)} & set(plain)


def test_seed_prompt(phi3_tokenizer):
    ids = phi3_tokenizer.encode(SEED_PROMPT, add_bos=False)
    pieces = ["▁Write", "▁a", "▁ha", "iku", "▁about", "▁ice", "▁hockey"]
    assert ids == [32010, *(phi3_tokenizer.token_to_id(p) for p in pieces), 32007, 32001]
    assert ids[1:3] == [14350, 263]  # Llama-2's ids for "▁Write" and "▁a"


def test_the_files_chat_template(phi3_tokenizer, phi3_vocab_gguf):
    tok = phi3_tokenizer
    template = GGUFFile(phi3_vocab_gguf).metadata["tokenizer.chat_template"]
    assert tok.chat_template == template
    assert template.startswith("{{ bos_token }}{% for message in messages %}")
    messages = [
        {"role": "user", "content": "Write a haiku about ice hockey"},
        {"role": "assistant", "content": "Blades carve the white ice"},
        {"role": "user", "content": "Another"},
    ]
    assert tok.apply_chat_template(messages[:1]) == f"<s>{SEED_PROMPT}\n"
    assert tok.apply_chat_template(messages) == (
        f"<s>{SEED_PROMPT}\nBlades carve the white ice<|end|>\n<|user|>\nAnother<|end|>\n<|assistant|>\n"
    )
    ids = tok.encode_chat(messages[:1])  # the template writes <s>, the file adds one: keep one
    assert ids == [1, *tok.encode(SEED_PROMPT, add_bos=False)]


def test_tokenizer_json_route_agrees(phi3_tokenizer, phi3_tokenizer_json):
    ours = Tokenizer.from_file(phi3_tokenizer_json)
    assert (ours.bos_id, ours.add_bos, ours.vocab_size) == (1, True, 32064)
    assert {32000, 32007} <= set(ours.stop_ids)  # end-of-turn tokens found by their text
    for text in TEXTS:
        for parse_special in (True, False):
            expected = phi3_tokenizer.encode(text, parse_special=parse_special)
            assert ours.encode(text, parse_special=parse_special) == expected, text
        ids = phi3_tokenizer.encode(text)
        assert ours.decode(ids) == phi3_tokenizer.decode(ids), text
        assert ours.decode(ids, skip_special=True) == phi3_tokenizer.decode(ids, skip_special=True)
