"""llama.cpp's own tokenizer test vectors for real SentencePiece vocabularies.

llama.cpp ships, beside each vocabulary-only GGUF, inputs (``.inp``) and the ids
its tokenizer gives them (``.out``: no BOS, special-token text read as text).
``Tokenizer.from_gguf`` must reproduce every line, for Phi-3's vocabulary and
for Llama-2's, which Phi-3's extends.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from phijax import pypi_models
from phijax.tokenizer import Tokenizer

SEPARATOR = "\n__ggml_vocab_test__\n"


def read_vectors(inp: Path, out: Path) -> list[tuple[str, list[int]]]:
    """(text, ids) pairs, read as llama.cpp's test-tokenizer-0 reads them: each input ends at a
    separator (nothing follows the last one); one line of space-separated ids per input."""
    texts = inp.read_bytes().decode("utf-8").split(SEPARATOR)  # bytes: keep \r as it is
    assert texts[-1] == "", "text after the last separator"
    lines = out.read_bytes().decode("ascii").split("\n")
    assert lines[-1] == "" and len(lines) == len(texts)
    return [
        (t, [int(i) for i in line.split()]) for t, line in zip(texts[:-1], lines[:-1], strict=True)
    ]


@pytest.fixture(scope="module", params=["phi3-vocab", "llama-spm-vocab"])
def vocab(request):
    path = pypi_models.fetch(request.param)
    inp, out = (pypi_models.fetch(f"{request.param}.{ext}") for ext in ("inp", "out"))
    return Tokenizer.from_gguf(path), read_vectors(inp, out)


def test_encode_matches_llamacpp(vocab):
    tok, cases = vocab
    assert len(cases) >= 40 and any(ids == [] for _, ids in cases)
    assert any(not text.isascii() for text, _ in cases)
    got = tok.encode_batch([text for text, _ in cases], add_bos=False, parse_special=False)
    mismatches = [(text, ids, g) for (text, ids), g in zip(cases, got, strict=True) if g != ids]
    assert not mismatches, f"{len(mismatches)} of {len(cases)} differ; first: {mismatches[0]!r}"


def test_decode_gives_the_input_back(vocab):
    tok, cases = vocab
    for text, ids in cases:
        assert tok.decode(ids) == text


def test_bos_follows_the_file(vocab):
    tok, cases = vocab
    assert tok.add_bos and tok.bos_id == 1
    for text, ids in cases[:10]:
        assert tok.encode(text, parse_special=False) == [1, *ids]
