"""Prepared vocabularies: what building a GGUF file's tokenizer derives, kept for the next load.

Building ``tokenizers``' BPE from a GGUF file means parsing ~10^5 length-prefixed strings
and deriving the merges: splitting them (SmolLM2's 49k: 12 ms) or, for SentencePiece
vocabularies, ranking every split of every token (Phi-3's 32k: 95 ms). That was most of
SmolLM2's load (``docs/benchmarks.md``). An entry keeps the derived
:class:`~phijax.tokenizer.gguf_vocab.BPEPieces`, and where the file's per-token arrays lie,
so that the next parse of the file's header skips them
(:class:`~phijax.gguf.metadata.ValueSpans`; anything that reads them still parses them, with
every check).

One entry per GGUF path, ``$PHIJAX_CACHE/vocab/<name>.bin``: a JSON line (the file's
identity (size, modification time, inode), a hash of the code that derives the pieces, the
spans, the counts and the added tokens), the tokens joined by NUL (one ``str.split`` reads
them back), then each merge as its two tokens' ids (``uint32``, little-endian: the merges
are tuples of the tokens' own strings). An entry whose identity or code differs is rebuilt
silently, a damaged one with a warning; it never fails a load. Kept only for files of at
least :data:`MIN_BYTES` (model files, not the vocabulary-only files tests write by the
hundred); only when the file's modification time was :data:`SETTLED_NS` old when it was
opened (a file rewritten within its clock tick keeps its identity: git's "racily clean"
case); and only for pieces derived from the file's own metadata (a caller may have edited a
:class:`~phijax.gguf.GGUFFile`'s: checked against one more parse of the header, once per
version of a file). Entries are written whole (a temporary file, renamed); the :data:`KEEP`
most recently used stay. ``PHIJAX_NO_CACHE=1`` turns this off with phijax's other caches.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phijax.errors import PhijaxError
from phijax.gguf import reader
from phijax.gguf.metadata import ValueSpans
from phijax.gguf.reader import GGUFFile
from phijax.paths import (
    cache_dir,
    caches_enabled,
    entry_name,
    file_identity,
    source_hash,
    write_atomically,
)
from phijax.tokenizer import gguf_vocab
from phijax.tokenizer.gguf_vocab import BPEPieces

ARRAY_KEYS = (
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.merges",
)
"""The per-token arrays an entry stands for: a load with an entry leaves them unparsed."""
DERIVED_FROM = (*ARRAY_KEYS, "tokenizer.ggml.model", "general.name")
"""The metadata the pieces are derived from (``general.name``: Phi-3's rstrip tokens)."""
MIN_BYTES = 32 << 20
"""Files below this are not kept: the tests' vocabulary-only and synthetic files."""
SETTLED_NS = 2_000_000_000
"""How old a file's modification time must be when it is opened for its entry to be kept:
more than a clock tick of any file system, so a later rewrite changes the identity."""
KEEP = 16
"""Entries kept (1-2 MB each); the least recently used go first."""
SEP = "\x00"
FORMAT = 1


@dataclass(frozen=True)
class Entry:
    """A prepared vocabulary: where the file's per-token arrays lie, and the pieces built
    from them."""

    spans: ValueSpans
    pieces: BPEPieces


@functools.cache
def _code_hash() -> str:
    return source_hash([gguf_vocab.__file__, reader.__file__, __file__])


def _path(gguf_path: str | os.PathLike) -> Path:
    return cache_dir() / "vocab" / f"{entry_name({'file': str(Path(gguf_path).resolve())})}.bin"


def lookup(gguf_path: str | os.PathLike) -> Entry | None:
    """The entry of ``gguf_path`` as the file is now, or ``None`` (caches off, a small or
    missing file, no entry, or one from another version of the file or of phijax)."""
    if not caches_enabled():
        return None
    try:
        st = os.stat(gguf_path)
    except OSError:
        return None
    if st.st_size < MIN_BYTES:
        return None
    path = _path(gguf_path)
    try:
        data = path.read_bytes()
    except OSError:
        return None
    identity = file_identity(st)
    try:
        line, _, body = data.partition(b"\n")
        head = json.loads(line)
        if head.get("format") != FORMAT or head.get("code") != _code_hash():
            return None
        if tuple(head["identity"]) != identity:
            return None
        n, m, text_bytes = (int(c) for c in head["counts"])
        tokens = body[:text_bytes].decode("utf-8").split(SEP)
        ids = np.frombuffer(body, "<u4", offset=text_bytes)
        if len(tokens) != n or len(ids) != 2 * m or (m and ids.max() >= n):
            raise ValueError(f"{len(tokens)} tokens and {len(ids)} merge ids for {n} and {m}")
        spans = {str(k): (int(a), int(b)) for k, (a, b) in head["spans"].items()}
        added = [(str(t), bool(s), bool(r)) for t, s, r in head["added"]]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        warnings.warn(f"{path}: damaged prepared vocabulary ({e}); rebuilding it.", stacklevel=2)
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used
    return Entry(ValueSpans(identity, spans), BPEPieces(tokens, _pairs(tokens, ids), added))


def _pairs(tokens: list[str], ids: np.ndarray) -> list[tuple[str, str]]:
    """The merges, as tuples of the tokens' own strings, built with the cyclic garbage
    collector paused: 49k new tuples in a row set off collections (SmolLM2's, medians of 6
    processes with JAX loaded: 13.1 ms against 10.3 paused); tuples of strings hold no
    cycles."""
    token = tokens.__getitem__
    enabled = gc.isenabled()
    gc.disable()
    try:
        return list(
            zip(map(token, ids[0::2].tolist()), map(token, ids[1::2].tolist()), strict=True)
        )
    finally:
        if enabled:
            gc.enable()


def save(f: GGUFFile, pieces: BPEPieces) -> None:
    """Keep ``pieces``, derived from ``f``'s vocabulary and built into a tokenizer, as ``f``'s
    entry (where kept at all: see the module docstring). A disk that refuses only costs the
    next load the derivation."""
    if not caches_enabled() or f.size < MIN_BYTES:
        return
    if f.opened_ns - f.identity[1] < SETTLED_NS or not _as_on_disk(f):
        return
    text = SEP.join(pieces.tokens)
    if text.count(SEP) != len(pieces.tokens) - 1:
        return  # a token holds the separator: no entry (no real vocabulary does)
    vocab = gguf_vocab.token_ids(pieces.tokens)
    try:
        ids = np.array([vocab[t] for pair in pieces.merges for t in pair], "<u4")
    except KeyError:
        return  # a merge of a token the vocabulary lacks: tokenizers refuses it anyway
    encoded = text.encode("utf-8")
    head = {
        "format": FORMAT,
        "code": _code_hash(),
        "file": str(f.path),
        "identity": list(f.identity),
        "spans": f.value_spans(ARRAY_KEYS).spans,
        "counts": [len(pieces.tokens), len(pieces.merges), len(encoded)],
        "added": pieces.added,
    }
    path = _path(f.path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(head).encode() + b"\n" + encoded + ids.tobytes())
        _evict(path.parent)
    except OSError as e:
        warnings.warn(f"{path}: cannot keep the prepared vocabulary ({e}).", stacklevel=2)


def _as_on_disk(f: GGUFFile) -> bool:
    """Whether what the pieces derive from in ``f.metadata`` is still the file's own (a caller
    may have edited it): one more parse of the header, once per version of a file."""
    try:
        disk = GGUFFile(f.path)
    except PhijaxError:
        return False
    return disk.identity == f.identity and all(
        _same(f.metadata.get(key), disk.metadata.get(key)) for key in DERIVED_FROM
    )


def _same(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    return type(a) is type(b) and a == b


def _evict(folder: Path) -> None:
    entries = []
    for p in folder.glob("*.bin"):
        with contextlib.suppress(OSError):
            entries.append((p.stat().st_mtime_ns, p))
    for _, p in sorted(entries)[:-KEEP]:
        with contextlib.suppress(OSError):
            p.unlink()
