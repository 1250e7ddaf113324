"""Phi-3's vocabulary: the real Llama-2 SentencePiece vocab plus Phi-3's added tokens.

Two routes must agree with the HF ``tokenizers`` library on Phi-3's own
tokenizer.json: loading that JSON (the original program's route), and our GGUF
route, where the same vocabulary is stored as GGUF metadata (tokens, scores,
types) and rebuilt by ``Tokenizer.from_gguf``.
"""

from __future__ import annotations

import json

import gguf
import pytest
import tokenizers

from phijax.tokenizer import Tokenizer

SEED_PROMPT = "<|user|>\nWrite a haiku about ice hockey<|end|>\n<|assistant|>"
# Phi-3-mini's added tokens: (id, text, rstrip); all special. Source: its tokenizer_config.json.
PHI3_ADDED = [
    (32000, "<|endoftext|>", False),
    (32001, "<|assistant|>", True),
    *[(32001 + i, f"<|placeholder{i}|>", True) for i in range(1, 5)],
    (32006, "<|system|>", True),
    (32007, "<|end|>", True),
    (32008, "<|placeholder5|>", True),
    (32009, "<|placeholder6|>", True),
    (32010, "<|user|>", True),
]
PHI3_VOCAB_ROWS = 32064
TEXTS = [
    SEED_PROMPT,
    "<|system|>You are terse.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\nHello.<|end|>\n<|endoftext|>",
    "Write a haiku about ice hockey",
    "  leading spaces, trailing  ",
    "Émilie's café costs 3.50€ — naïve 日本語のテキスト 🏒🥅 ok",
    "def f(x):\n\treturn x ** 2  # square\n",
    "\n\n\n",
    "<|end|><|end|>  <|user|>   x",
    "</s> ends, <s> begins, <unk> unknown",
    "𐀀 Linear B and \U0010fffd private use",
    "a" * 300,
    "",
]


@pytest.fixture(scope="module")
def phi3_tokenizer_json(tmp_path_factory, llama2_tokenizer_json):
    spec = json.loads(llama2_tokenizer_json.read_text(encoding="utf-8"))
    for tok in spec["added_tokens"]:
        if tok["content"] == "</s>":
            tok.update(rstrip=True, special=False)
    spec["added_tokens"] += [
        {
            "id": i,
            "content": text,
            "single_word": False,
            "lstrip": False,
            "rstrip": rstrip,
            "normalized": False,
            "special": True,
        }
        for i, text, rstrip in PHI3_ADDED
    ]
    path = tmp_path_factory.mktemp("phi3") / "tokenizer.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def phi3_vocab_gguf(tmp_path_factory, phi3_tokenizer_json):
    """A phi3 GGUF whose metadata holds Phi-3's vocabulary the way llama.cpp's converter stores it."""
    spec = json.loads(phi3_tokenizer_json.read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    tokens = [None] * PHI3_VOCAB_ROWS
    for text, i in vocab.items():
        tokens[i] = text
    rank = {}
    for r, merge in enumerate(spec["model"]["merges"]):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, r)
    scores = [-float(rank.get(t, 1e9)) if t else 0.0 for t in tokens]
    types = [1] * PHI3_VOCAB_ROWS
    types[0] = 2
    types[1] = types[2] = 3
    for b in range(256):
        types[3 + b] = 6
    for i, text, _ in PHI3_ADDED:
        tokens[i], types[i] = text, 3
    for i in range(32011, PHI3_VOCAB_ROWS):
        tokens[i], types[i] = f"<|dummy_id_{i - 32011}|>", 5
    path = tmp_path_factory.mktemp("phi3") / "phi3-vocab.gguf"
    w = gguf.GGUFWriter(str(path), "phi3")
    w.add_name("Phi3")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(32000)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return path


def test_seed_prompt_from_tokenizer_json(phi3_tokenizer_json):
    ours = Tokenizer.from_file(phi3_tokenizer_json, add_bos=False)
    reference = tokenizers.Tokenizer.from_file(str(phi3_tokenizer_json))
    ids = ours.encode(SEED_PROMPT)
    assert ids == reference.encode(SEED_PROMPT, add_special_tokens=False).ids
    assert ids[0] == 32010 and ids[-2:] == [32007, 32001]  # <|user|> ... <|end|> <|assistant|>
    assert reference.id_to_token(ids[1]) == "▁Write"  # rstrip on <|user|> ate the "\n"
    assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=False)
    assert 32007 in ours.stop_ids and 32000 in ours.stop_ids


def test_gguf_route_matches_hf_on_phi3_vocab(phi3_vocab_gguf, phi3_tokenizer_json):
    ours = Tokenizer.from_gguf(phi3_vocab_gguf)
    reference = tokenizers.Tokenizer.from_file(str(phi3_tokenizer_json))
    assert ours.bos_id == 1 and not ours.add_bos and {32000, 32007} <= set(ours.stop_ids)
    for text in TEXTS:
        expected = reference.encode(text, add_special_tokens=False).ids
        assert ours.encode(text) == expected, text
        assert ours.decode(expected) == reference.decode(expected, skip_special_tokens=False), text


def test_phi3_default_chat_template(phi3_vocab_gguf):
    tok = Tokenizer.from_gguf(phi3_vocab_gguf)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Write a haiku about ice hockey"}]
    )
    assert prompt == "<|user|>\nWrite a haiku about ice hockey<|end|>\n<|assistant|>\n"
    assert tok.encode(prompt)[:2] == [32010, tok.token_to_id("▁Write")]
