"""Metadata values left in the file (phijax.gguf.metadata) by GGUFFile's ``deferred`` spans:
parsed when read, equal to an eager parse, and never applied to another version of the file."""

from __future__ import annotations

import numpy as np

from phijax.gguf import GGUFFile
from phijax.gguf.metadata import ValueSpans

VOCAB_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")


def test_deferred_values_parse_when_read(tiny_phi3_gguf, monkeypatch):
    """Spans recorded by one parse let the next skip those values; reading one parses it
    then, equal to an eager parse, and ``in``/``len``/``array_length`` parse nothing."""
    eager = GGUFFile(tiny_phi3_gguf)
    spans = eager.value_spans([*VOCAB_KEYS, "no.such.key"])
    assert set(spans.spans) == set(VOCAB_KEYS)
    lazy = GGUFFile(tiny_phi3_gguf, deferred=spans)
    assert lazy.metadata.deferred == list(VOCAB_KEYS)
    assert list(lazy.metadata) == list(eager.metadata) and len(lazy.metadata) == len(eager.metadata)
    assert all(key in lazy.metadata for key in VOCAB_KEYS)
    n_tokens = len(eager.metadata["tokenizer.ggml.tokens"])
    assert lazy.array_length("tokenizer.ggml.tokens") == n_tokens
    assert lazy.metadata.deferred == list(VOCAB_KEYS)
    assert lazy.array_length("general.architecture") is None
    assert lazy.tensors == eager.tensors
    _assert_same_metadata(lazy, eager)  # parses every deferred value
    assert lazy.metadata.deferred == []


def test_spans_of_another_file_version_are_ignored(tiny_phi3_gguf, tmp_path):
    """Spans apply only to the identity (size, mtime, inode) they were recorded for, and only
    where they start at the key's value; a wrong end costs a second parse, not an error."""
    eager = GGUFFile(tiny_phi3_gguf)
    spans = eager.value_spans(VOCAB_KEYS)
    size, mtime, inode = spans.identity
    other = GGUFFile(tiny_phi3_gguf, deferred=ValueSpans((size, mtime + 1, inode), spans.spans))
    assert other.metadata.deferred == []
    shifted = {k: (a + 1, b) for k, (a, b) in spans.spans.items()}
    assert (
        GGUFFile(tiny_phi3_gguf, deferred=ValueSpans(spans.identity, shifted)).metadata.deferred
        == []
    )
    short = {k: (a, b - 1) for k, (a, b) in spans.spans.items()}
    reparsed = GGUFFile(tiny_phi3_gguf, deferred=ValueSpans(spans.identity, short))
    assert reparsed.metadata.deferred == []
    _assert_same_metadata(reparsed, eager)


def _assert_same_metadata(got: GGUFFile, expected: GGUFFile) -> None:
    assert list(got.metadata) == list(expected.metadata)
    for key, value in expected.metadata.items():
        np.testing.assert_array_equal(got.metadata[key], value, err_msg=key)
