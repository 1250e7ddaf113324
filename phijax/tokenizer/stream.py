"""Streaming detokenization: token ids in, only complete new text out.

Decoding one token at a time breaks multi-byte characters (byte-fallback and
byte-level tokens can carry part of a UTF-8 character) and SentencePiece
spaces (whether a ``▁word`` token's space shows depends on what precedes it).
Like the original program, we decode the whole sequence and emit the new
suffix, holding it back while it ends in an incomplete character (U+FFFD) or
in a byte-fallback token: HF's ByteFallback decoder decodes a run of
``<0xXX>`` tokens as one group and replaces all of it when the group is not
valid UTF-8, so a run's text is final only once a non-byte token ends it. A
token the decode skips (a special token under ``skip_special``) does not end
a run: the bytes on both sides of it decode as one group.
With both rules a full decode is prefix-stable at the points we emit, so the
concatenated output equals ``decode(all ids)``. The cost is one decode per token, in Rust:
negligible next to a model step for the sequence lengths Phi-3 supports.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Sequence

REPLACEMENT = "\ufffd"


class StreamDecoder:
    """Incremental detokenizer over ``decode(ids) -> str``.

    ``push(id)`` returns the newly completed text (possibly ``""``);
    ``flush()`` returns whatever is held back at the end of the stream.
    """

    def __init__(
        self,
        decode: Callable[[Sequence[int]], str],
        byte_ids: Container[int] = (),
        skipped_ids: Container[int] = (),
    ):
        self._decode = decode
        self._byte_ids = byte_ids
        self._skipped_ids = skipped_ids  # ids ``decode`` drops: they neither open nor close a run
        self._ids: list[int] = []
        self._text = ""  # emitted so far
        self._in_byte_run = False

    @property
    def ids(self) -> list[int]:
        return list(self._ids)

    @property
    def text(self) -> str:
        return self._text

    def push(self, token_id: int) -> str:
        token_id = int(token_id)
        self._ids.append(token_id)
        if token_id not in self._skipped_ids:
            self._in_byte_run = token_id in self._byte_ids
        if self._in_byte_run:
            return ""
        current = self._decode(self._ids)
        if current.endswith(REPLACEMENT) or not current.startswith(self._text):
            return ""
        return self._emit(current)

    def extend(self, token_ids: Iterable[int]) -> str:
        return "".join(self.push(t) for t in token_ids)

    def flush(self) -> str:
        current = self._decode(self._ids)
        if not current.startswith(self._text):
            return ""
        return self._emit(current)

    def _emit(self, current: str) -> str:
        new = current[len(self._text) :]
        self._text = current
        return new
