"""Prepared vocabularies (phijax.tokenizer.vocab_cache) on real model files: the tokenizer
built from an entry is the one built from the file, a load with an entry leaves the
per-token arrays unparsed, and stale, damaged, racy or unwanted entries are never used."""

from __future__ import annotations

import os
import shutil
import time

import pytest

import phijax
from phijax.gguf import GGUFFile, reader
from phijax.tokenizer import Tokenizer, gguf_vocab, vocab_cache

TEXTS = (
    "Write a haiku about ice hockey.",
    "  two spaces\n\nand\ttabs 1234567 ünïcödé 日本語 🏒",
    "<|im_start|>user\nhi<|im_end|><end_of_turn></s><|end|>",
)
HOUR_NS = 3600 * 10**9


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty phijax cache, caches on."""
    monkeypatch.setenv("PHIJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PHIJAX_NO_CACHE", raising=False)
    return tmp_path / "cache"


def _entries(cache) -> list:
    return sorted((cache / "vocab").glob("*.bin")) if (cache / "vocab").is_dir() else []


def _no_derivation(monkeypatch) -> None:
    """Fail the test if a vocabulary's strings are parsed or its pieces derived again."""
    strings = reader._Cursor.strings

    def small_strings(cursor, count, what):
        assert count < 1000, f"parsed {what}: the prepared vocabulary holds it"
        return strings(cursor, count, what)

    def derive(vocab):
        raise AssertionError("derived the pieces the prepared vocabulary holds")

    monkeypatch.setattr(reader._Cursor, "strings", small_strings)
    monkeypatch.setattr(gguf_vocab, "pieces", derive)


def _assert_same(got: Tokenizer, expected: Tokenizer) -> None:
    assert got.hf.to_str() == expected.hf.to_str()  # vocabulary, merges, added tokens, pipeline
    for text in TEXTS:
        assert got.encode(text) == expected.encode(text)
        assert got.encode(text, parse_special=False) == expected.encode(text, parse_special=False)
    assert (got.bos_id, got.eos_id, got.add_bos, got.stop_ids, got.chat_template) == (
        expected.bos_id,
        expected.eos_id,
        expected.add_bos,
        expected.stop_ids,
        expected.chat_template,
    )


@pytest.mark.parametrize(
    "model",
    ["smollm2_gguf", pytest.param("gemma3_gguf", marks=pytest.mark.slow)],
    ids=["gpt2-bpe", "sentencepiece"],
)
def test_entry_gives_the_same_tokenizer(model, request, monkeypatch):
    path = request.getfixturevalue(model)  # fetched into the user's cache, before the empty one
    cache = request.getfixturevalue("cache")
    built = Tokenizer.from_gguf(path)
    (entry,) = _entries(cache)
    prepared = vocab_cache.lookup(path)
    assert prepared is not None and entry.stat().st_size > 0
    with monkeypatch.context() as m:
        _no_derivation(m)
        f = GGUFFile(path, deferred=prepared.spans)
        assert set(f.metadata.deferred) == set(prepared.spans.spans)
        assert "tokenizer.ggml.tokens" in f.metadata.deferred
        from_entry = Tokenizer.from_gguf(f, prepared=prepared)
        assert Tokenizer.from_gguf(path).hf.to_str() == from_entry.hf.to_str()  # its own lookup
    _assert_same(from_entry, built)
    assert f.metadata["tokenizer.ggml.tokens"] == GGUFFile(path).metadata["tokenizer.ggml.tokens"]


def test_load_uses_the_entry(smollm2_gguf, cache, monkeypatch):
    first = phijax.load(smollm2_gguf, progress=False)
    assert len(_entries(cache)) == 1
    with monkeypatch.context() as m:
        _no_derivation(m)
        second = phijax.load(smollm2_gguf, progress=False)
    _assert_same(second.tokenizer, first.tokenizer)


def _settled_copy(src, dst):
    shutil.copyfile(src, dst)
    old = time.time_ns() - HOUR_NS
    os.utime(dst, ns=(old, old))
    return dst


def test_a_changed_file_is_rebuilt(smollm2_gguf, cache, tmp_path, monkeypatch):
    path = _settled_copy(smollm2_gguf, tmp_path / "model.gguf")
    built = Tokenizer.from_gguf(path)
    assert vocab_cache.lookup(path) is not None
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # a new version of the file
    assert vocab_cache.lookup(path) is None
    again = Tokenizer.from_gguf(path)  # derived again, and kept for this version
    _assert_same(again, built)
    assert vocab_cache.lookup(path).spans.identity == GGUFFile(path).identity
    assert len(_entries(cache)) == 1  # one entry per path


def test_a_just_written_file_is_not_kept(smollm2_gguf, cache, tmp_path):
    """A file modified within SETTLED_NS of being opened could be rewritten within the same
    clock tick, keeping its identity; its vocabulary is built, but not kept."""
    path = tmp_path / "fresh.gguf"
    shutil.copyfile(smollm2_gguf, path)
    Tokenizer.from_gguf(path)
    assert _entries(cache) == []


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],
        lambda data: b"not json\n" + data.partition(b"\n")[2],
        lambda data: data.replace(b'"counts": [', b'"counts": [1', 1),
        lambda data: data[:-4] + b"\xff\xff\xff\xff",  # a merge of token id 2^32 - 1
    ],
    ids=["truncated", "header", "counts", "merge-id"],
)
def test_a_damaged_entry_warns_and_is_rebuilt(damage, smollm2_gguf, cache):
    built = Tokenizer.from_gguf(smollm2_gguf)
    (entry,) = _entries(cache)
    entry.write_bytes(damage(entry.read_bytes()))
    with pytest.warns(UserWarning, match="damaged prepared vocabulary"):
        again = Tokenizer.from_gguf(smollm2_gguf)
    _assert_same(again, built)
    assert vocab_cache.lookup(smollm2_gguf) is not None  # rewritten whole


def test_an_edited_vocabulary_is_neither_kept_nor_replaced(smollm2_gguf, cache):
    """A GGUFFile's vocabulary edited in memory builds as edited, and is not kept as the
    file's; an entry of the file does not replace the edit either."""
    f = GGUFFile(smollm2_gguf)
    own = Tokenizer.from_gguf(smollm2_gguf)
    hockey = own.token_to_id("Ġhockey")  # byte-level " hockey"
    assert hockey is not None
    (entry,) = _entries(cache)
    entry.unlink()
    f.metadata["tokenizer.ggml.token_type"][hockey] = gguf_vocab.USER_DEFINED  # in place
    assert _added(Tokenizer.from_gguf(f)) == {*_added(own), "Ġhockey"}
    assert _entries(cache) == []
    Tokenizer.from_gguf(smollm2_gguf)  # the file's own vocabulary: kept
    assert vocab_cache.lookup(smollm2_gguf) is not None
    assert "Ġhockey" in _added(Tokenizer.from_gguf(f))
    assert "Ġhockey" not in _added(Tokenizer.from_gguf(smollm2_gguf))


def _added(tok: Tokenizer) -> set[str]:
    return {t.content for t in tok.hf.get_added_tokens_decoder().values()}


def test_what_is_not_kept(smollm2_gguf, phi3_vocab_gguf, cache, monkeypatch):
    Tokenizer.from_gguf(phi3_vocab_gguf)  # a vocabulary-only file, under MIN_BYTES
    assert _entries(cache) == []
    monkeypatch.setenv("PHIJAX_NO_CACHE", "1")
    Tokenizer.from_gguf(smollm2_gguf)
    assert _entries(cache) == []


def test_least_recently_used_entries_go(smollm2_gguf, cache, tmp_path, monkeypatch):
    monkeypatch.setattr(vocab_cache, "KEEP", 2)
    paths = [tmp_path / f"model{i}.gguf" for i in range(3)]  # an entry each
    for path in paths:
        try:
            os.link(smollm2_gguf, path)  # the same bytes, settled
        except OSError:  # another file system
            _settled_copy(smollm2_gguf, path)
    Tokenizer.from_gguf(paths[0])
    Tokenizer.from_gguf(paths[1])
    entry0 = vocab_cache._path(paths[0])
    old = time.time_ns() - HOUR_NS
    os.utime(vocab_cache._path(paths[1]), ns=(old, old))
    assert vocab_cache.lookup(paths[0]) is not None  # used: now the most recent
    Tokenizer.from_gguf(paths[2])
    assert sorted(_entries(cache)) == sorted([entry0, vocab_cache._path(paths[2])])
