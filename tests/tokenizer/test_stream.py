"""StreamDecoder: only complete text comes out, and all of it adds up to the full decode."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phijax.tokenizer import Tokenizer


@pytest.fixture(scope="module", params=["smollm2", "phi3_vocab"])
def tokenizer(request, smollm2_gguf):
    """A byte-level BPE vocabulary (SmolLM2) and Phi-3's SentencePiece one with byte fallback."""
    if request.param == "smollm2":
        return Tokenizer.from_gguf(smollm2_gguf)
    return request.getfixturevalue("phi3_tokenizer")


def _stream(tok: Tokenizer, ids: list[int], skip_special: bool) -> list[str]:
    stream = tok.stream(skip_special=skip_special)
    pieces = [stream.push(i) for i in ids]
    return [*pieces, stream.flush()]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data(), skip_special=st.booleans())
def test_concatenation_equals_full_decode(tokenizer, data, skip_special):
    n = tokenizer.vocab_size
    ids = data.draw(st.lists(st.integers(0, n - 1), max_size=40))
    pieces = _stream(tokenizer, ids, skip_special)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special=skip_special)
    assert all("\ufffd" not in p for p in pieces[:-1]) or "\ufffd" in tokenizer.decode(ids)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=60))
def test_encoded_text_streams_back_exactly(tokenizer, text):
    ids = tokenizer.encode(text, add_bos=False, parse_special=False)
    pieces = _stream(tokenizer, ids, skip_special=False)
    assert "".join(pieces) == tokenizer.decode(ids)
    if "\ufffd" not in tokenizer.decode(ids):  # the vocabulary can represent the text
        assert all("\ufffd" not in p for p in pieces)


def test_multibyte_characters_are_never_split(tokenizer):
    ids = tokenizer.encode("🏒 naïve 日本", add_bos=False)
    stream = tokenizer.stream()
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == tokenizer.decode(ids)
    assert any(p == "" for p in pieces)  # held back while a character was incomplete


def test_skipped_special_token_does_not_end_a_byte_run(phi3_tokenizer):
    """<0x00> <unk> <0x80> with skip_special decodes as one invalid byte group; the
    stream must not emit the first byte before it knows (hypothesis found this)."""
    ids = [3, 0, 131]
    pieces = _stream(phi3_tokenizer, ids, skip_special=True)
    assert pieces[:2] == ["", ""]
    assert "".join(pieces) == phi3_tokenizer.decode(ids, skip_special=True)
